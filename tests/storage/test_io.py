"""Whole-object I/O on every URL kind, and its failures as one clear, redacted line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedaas import storage
from fedaas.sim.emulators import Emulator
from fixtures.storage import Target

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_local_bytes_roundtrip_is_atomic(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/a/b/c.bin"
    storage.write_bytes(url, b"one")
    storage.write_bytes(url, b"two")
    assert storage.read_bytes(url) == b"two"
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["c.bin"]
    assert storage.exists(url)
    storage.remove(url)
    assert not storage.exists(url)
    with pytest.raises(storage.StorageError, match="no such file or key") as err:
        storage.read_bytes(url)
    assert err.value.kind == "not_found"


def test_bytes_roundtrip_every_kind(target: Target) -> None:
    url = storage.join(target.base, "run", "model.safetensors")
    storage.write_bytes(url, b"\x00weights", target.options)
    assert storage.read_bytes(url, target.options) == b"\x00weights"
    assert storage.exists(url, target.options)


def test_missing_bucket_and_key(cloud_target: Target) -> None:
    target = cloud_target
    assert target.emulator is not None
    missing_bucket = target.emulator.url("no-such-bucket", "data.npz")
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(missing_bucket, target.options)
    assert err.value.kind == "no_bucket"
    assert str(err.value) == (
        f"{missing_bucket}: bucket or container 'no-such-bucket' does not exist"
    )
    with pytest.raises(storage.StorageError, match=r"/nokey.npz: no such file or key$"):
        storage.read_bytes(storage.join(target.base, "nokey.npz"), target.options)


def _assert_denied(message: str, secret: str) -> None:
    assert "access denied" in message and "\n" not in message
    assert secret not in message


@pytest.mark.emulator
def test_wrong_s3_credentials_one_clear_line(s3_emulator: Emulator) -> None:
    bucket = s3_emulator.make_bucket("creds")
    for bad in ({"secret": SECRET}, {"key": "AKIAWRONGWRONG"}):
        with pytest.raises(storage.StorageError) as err:
            storage.write_bytes(
                storage.join(bucket, "x"), b"x", {**s3_emulator.storage_options, **bad}
            )
        assert err.value.kind == "denied"
        _assert_denied(str(err.value), SECRET)
        assert "AWS_ACCESS_KEY_ID" in str(err.value)


@pytest.mark.emulator
def test_credentials_from_environment(
    s3_emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_emulator.make_bucket("fromenv")
    for name, value in s3_emulator.env.items():
        monkeypatch.setenv(name, value)
    storage.write_bytes(storage.join(bucket, "k"), b"v")  # no explicit options at all
    assert storage.read_bytes(storage.join(bucket, "k")) == b"v"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(storage.join(bucket, "k"))
    _assert_denied(str(err.value), SECRET)


@pytest.mark.emulator
def test_wrong_azure_key_one_clear_line(az_emulator: Emulator) -> None:
    bucket = az_emulator.make_bucket("creds")
    storage.write_bytes(storage.join(bucket, "k"), b"v", az_emulator.storage_options)
    key = (
        "QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5=="
    )
    conn = az_emulator.storage_options["connection_string"]
    bad = {"connection_string": conn.replace(conn.split("AccountKey=")[1].split(";")[0], key)}
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(storage.join(bucket, "k"), bad)
    _assert_denied(str(err.value), key)
    assert "AZURE_STORAGE_CONNECTION_STRING" in str(err.value)


@pytest.mark.emulator
def test_bad_gcs_credentials_file_one_clear_line(gcs_emulator: Emulator, tmp_path: Path) -> None:
    private = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"
    creds = tmp_path / "sa.json"
    creds.write_text(json.dumps({"type": "service_account", "private_key": private}))
    bucket = gcs_emulator.make_bucket("creds")
    opts = {"endpoint_url": gcs_emulator.endpoint, "token": str(creds)}
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(storage.join(bucket, "k"), opts)
    assert "TOPSECRETKEYMATERIAL" not in str(err.value) and "\n" not in str(err.value)
    assert err.value.kind in ("denied", "options")
