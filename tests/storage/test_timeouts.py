"""A store that stops answering fails a call in bounded time, as a transient ``timeout``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from fedaas import storage
from fedaas.sim import emulators
from fedaas.sim.emulators import Emulator
from fedaas.storage import timeouts
from fedaas.storage.timeouts import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, with_timeouts


def test_each_cloud_gets_both_limits_and_local_paths_nothing() -> None:
    s3 = with_timeouts("s3", {})["config_kwargs"]
    assert (s3["connect_timeout"], s3["read_timeout"]) == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
    assert s3["retries"]["total_max_attempts"] == timeouts.S3_ATTEMPTS
    gs = with_timeouts("gs", {})["requests_timeout"]
    assert (gs.sock_connect, gs.sock_read, gs.total) == (CONNECT_TIMEOUT_S, READ_TIMEOUT_S, None)
    az = with_timeouts("az", {})
    assert (az["connection_timeout"], az["read_timeout"]) == (5, 10)
    assert with_timeouts("file", {"auto_mkdir": True}) == {"auto_mkdir": True}


def test_an_option_the_user_gives_wins_key_by_key() -> None:
    mine = storage.parse_storage_options(
        ["config_kwargs.read_timeout=60", "config_kwargs.region_name=eu", "key=k"]
    )
    merged = with_timeouts("s3", mine)["config_kwargs"]
    assert merged["read_timeout"] == 60 and merged["region_name"] == "eu"
    assert merged["connect_timeout"] == CONNECT_TIMEOUT_S and "retries" in merged
    assert mine == {"config_kwargs": {"read_timeout": 60, "region_name": "eu"}, "key": "k"}
    assert with_timeouts("az", {"read_timeout": 120})["read_timeout"] == 120


def test_the_limits_reach_every_backend(
    s3_emulator: Emulator, gcs_emulator: Emulator, az_emulator: Emulator
) -> None:
    s3, _ = storage.resolve("s3://any/key", s3_emulator.storage_options)
    assert s3.config_kwargs["read_timeout"] == READ_TIMEOUT_S  # type: ignore[attr-defined]
    gs, _ = storage.resolve("gs://any/key", gcs_emulator.storage_options)
    assert gs.requests_timeout.sock_read == READ_TIMEOUT_S  # type: ignore[attr-defined]
    az, _ = storage.resolve("az://any/key", az_emulator.storage_options)
    assert az._timeout_kwargs["read_timeout"] == READ_TIMEOUT_S  # type: ignore[attr-defined]


@pytest.fixture
def frozen_s3() -> Iterator[tuple[Emulator, str]]:
    """A test's own S3 emulator holding one object, frozen (it accepts, never answers)."""
    try:
        emulator = emulators.start_s3()
    except emulators.EmulatorError as exc:
        pytest.skip(f"no S3 emulator: {exc}")
    with emulator:
        url = storage.join(emulator.make_bucket("frozen"), "object.bin")
        storage.write_bytes(url, b"x" * 1024, emulator.storage_options)
        os.kill(emulator.pid, signal.SIGSTOP)
        try:
            yield emulator, url
        finally:
            os.kill(emulator.pid, signal.SIGCONT)


def test_a_frozen_store_fails_a_read_in_bounded_time_as_a_transient_timeout(
    frozen_s3: tuple[Emulator, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0.5 s of silence instead of 10, so the retries' sum stays short (407 s without limits)
    monkeypatch.setattr(timeouts, "READ_TIMEOUT_S", 0.5)
    emulator, url = frozen_s3
    began = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(url, emulator.storage_options)
    waited = time.monotonic() - began
    assert err.value.kind == "timeout" and err.value.transient, err.value
    assert "stopped answering" in str(err.value) and "object.bin" in str(err.value)
    # 5 s3fs tries x 2 botocore attempts x 0.5 s, plus their backoffs (under 10 s in all)
    assert 4 <= waited < 30, waited
