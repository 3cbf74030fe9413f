"""The emulator helpers: start on free ports, stop by PID, never leave a process behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from fedaas import storage
from fedaas.sim import emulators


def _gone(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_free_port_is_bindable() -> None:
    port = emulators.free_port()
    assert 1024 <= port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # really free: a server can listen on it
        sock.listen()
        assert sock.getsockname()[1] == port


@pytest.mark.emulator
def test_context_manager_stops_the_process_and_cleans_up() -> None:
    with emulators.running("gs") as emu:
        pid, workdir = emu.pid, emu.workdir
        assert psutil.pid_exists(pid) and workdir.exists()
        url = storage.join(emu.make_bucket("cm"), "k")
        storage.write_bytes(url, b"v", emu.storage_options)
        assert storage.read_bytes(url, emu.storage_options) == b"v"
    assert _gone(pid) and not workdir.exists()
    emu.stop()  # idempotent


@pytest.mark.emulator
def test_emulator_dies_with_a_killed_parent(tmp_path: Path) -> None:
    code = (
        "import os, sys; from fedaas.sim import emulators; "
        "e = emulators.start('gs'); print(e.pid, flush=True); os._exit(1)"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the orphaned work folder lands here
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    pid = int(out.stdout.split()[0])
    assert _gone(pid), f"emulator {pid} outlived its parent"


def test_missing_azurite_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDAAS_AZURITE", "/nonexistent/azurite-blob")
    with pytest.raises(emulators.EmulatorError, match="npm ci"):
        emulators.start_azure()


@pytest.mark.emulator
def test_a_restarted_s3_emulator_has_its_buckets_before_its_first_answer() -> None:
    """The outage tests bring S3 back on the same port; a retrying client must find its bucket."""
    with emulators.start_s3(buckets=("kept-bucket",)) as emu:
        url = storage.join(emu.url("kept-bucket"), "k")
        storage.write_bytes(url, b"v", emu.storage_options)  # no make_bucket call first
        assert storage.read_bytes(url, emu.storage_options) == b"v"
