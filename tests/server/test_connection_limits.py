"""The connection cap and the stalled-body deadline, attacked on a real coordinator process.

- past :data:`~fedaas.server.connections.MAX_CONNECTIONS` (4096) open
  connections, a new one is closed at once: a flood of idle connections
  cannot make the coordinator hold more sockets than the cap, and once the
  flood is gone the coordinator answers at once;
- a member that sends its upload's headers and part of its body, then
  stalls, is answered 408 after :data:`~fedaas.server.limits.BODY_IDLE_S`
  (30 s); its spool file is deleted and its upload slot freed, so its next
  upload is accepted.

Both run against one federation; the stalled upload starts first and the
connection flood runs while it waits, so the module takes about 35 s.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedaas.server.connections import MAX_CONNECTIONS
from fedaas.server.limits import BODY_IDLE_S
from fedaas.server.uploads import MEMORY_SPOOL_BYTES
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow


def address(fed: Federation) -> tuple[str, int]:
    host, port = fed.cluster.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def open_sockets(pid: int) -> int:
    """Sockets the coordinator process holds (its file descriptors that are sockets)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except FileNotFoundError:
            pass
    return count


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    """Whether the coordinator closes ``sock`` within ``within`` s (what it still sends is read)."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


@dataclass
class Stalled:
    sock: socket.socket
    started: float
    spool: Path


@pytest.fixture(scope="module")
def fed(start_federation: StartFederation) -> Iterator[Federation]:
    # a model whose update is larger than the in-memory spool, so an upload goes to disk
    spec = make_spec("limits", rounds=2, clients=2, timeout=300, features=2048, classes=1000)
    with start_federation(spec) as fed:
        assert fed.limit > MEMORY_SPOOL_BYTES + (2 << 20)
        yield fed


@pytest.fixture(scope="module")
def stalled(fed: Federation) -> Iterator[Stalled]:
    """alpha's upload: headers and 5 MiB of a larger body, then nothing."""
    spool = fed.cluster.state / "artifacts" / "spool"
    head = (
        f"PUT /v1/jobs/{fed.job_id}/rounds/1/update HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {fed.tokens['alpha']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {fed.limit - 1}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(address(fed), timeout=10)
    sock.sendall(head + b"\x00" * (MEMORY_SPOOL_BYTES + (1 << 20)))
    started = time.monotonic()
    try:
        yield Stalled(sock, started, spool)
    finally:
        sock.close()


def test_connections_past_the_cap_are_closed_at_once(fed: Federation, stalled: Stalled) -> None:
    pid = fed.cluster.server.pid  # type: ignore[union-attr]
    before = open_sockets(pid)
    flood: list[socket.socket] = []
    try:
        for _ in range(MAX_CONNECTIONS - before + 16):
            flood.append(socket.create_connection(address(fed), timeout=10))
        beyond = socket.create_connection(address(fed), timeout=10)
        flood.append(beyond)
        assert closed_by_peer(beyond, within=3)  # refused at once, not held or queued
        time.sleep(0.5)
        held = open_sockets(pid)
        assert held <= MAX_CONNECTIONS + 8, held  # listener, DB, plus at most the cap
        # a health check in the flood is closed too: the cap protects the process, the
        # header deadline frees the slots (test_denial_of_service) ...
    finally:
        for sock in flood:
            sock.close()
    # ... and once the flood is gone the coordinator answers at once
    started = time.monotonic()
    for _ in range(50):
        try:
            health = fed.request("GET", "/v1/health", None)
            break
        except OSError:
            time.sleep(0.1)
    assert health.status_code == 200 and time.monotonic() - started < 5


def test_a_stalled_upload_is_cut_off_and_its_spool_released(
    fed: Federation, stalled: Stalled
) -> None:
    for _ in range(100):  # the coordinator reads what was sent, to disk
        if list(stalled.spool.glob("*.upload")):
            break
        time.sleep(0.1)
    assert len(list(stalled.spool.glob("*.upload"))) == 1
    busy = fed.upload(fed.good_body(), member="alpha")
    assert busy.status_code == 409, busy.text  # the stalled upload holds alpha's slot
    stalled.sock.settimeout(BODY_IDLE_S + 10 - (time.monotonic() - stalled.started))
    answer = stalled.sock.recv(4096)
    waited = time.monotonic() - stalled.started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert BODY_IDLE_S - 1 <= waited <= BODY_IDLE_S + 10, waited
    assert closed_by_peer(stalled.sock, within=5)
    assert list(stalled.spool.glob("*.upload")) == []  # the partial body is deleted
    retry = fed.upload(fed.good_body(), member="alpha")  # and alpha's slot is free again
    assert retry.status_code == 200, retry.text
