"""URLs, storage options, credentials from the environment, redaction, one-line errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fedaas.data import storage
from fedaas.data.dataset import DataError
from fedaas.data.emulators import Emulator
from fedaas.data.source import open_dataset, write_dataset
from fedaas.spec import DataSection

from .conftest import Target

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_parse_storage_options_types_nesting_and_padding() -> None:
    opts = storage.parse_storage_options(
        ["anon=false", "retries=3", "timeout=2.5", "key=abc==", "client_kwargs.region_name=eu"]
    )
    assert opts == {
        "anon": False,
        "retries": 3,
        "timeout": 2.5,
        "key": "abc==",
        "client_kwargs": {"region_name": "eu"},
    }
    assert storage.parse_storage_options(None) == {}


def test_parse_storage_options_reports_every_bad_item_without_values() -> None:
    with pytest.raises(ValueError) as err:
        storage.parse_storage_options(["novalue", "=x", "bad-name=1", "a=1", "a=2", f"s{SECRET}"])
    text = str(err.value)
    assert "#1" in text and "#2" in text and "'bad-name'" in text and "given twice" in text
    assert SECRET not in text and "#6" in text


def test_protocols() -> None:
    assert storage.protocol_of("/tmp/x.npz") == "file"
    assert storage.protocol_of("file:///tmp/x.npz") == "file"
    assert storage.protocol_of("s3://b/k") == "s3"
    assert storage.protocol_of("gcs://b/k") == "gs"
    assert storage.protocol_of("abfs://c/k") == "az"


def test_options_from_environment_explicit_wins() -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
        "STORAGE_EMULATOR_HOST": "127.0.0.1:8",
        "AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=k;",
    }
    s3 = storage.storage_options_for("s3://b/k", {"endpoint_url": "http://e"}, env)
    assert s3 == {"key": "AKIAEXAMPLE", "secret": SECRET, "endpoint_url": "http://e"}
    gs = storage.storage_options_for("gs://b/k", None, env)
    assert gs == {"endpoint_url": "http://127.0.0.1:8", "token": "anon"}
    assert storage.storage_options_for("az://c/k", None, env) == {
        "connection_string": "AccountName=a;AccountKey=k;"
    }
    assert storage.storage_options_for("/tmp/x", {"key": "k"}, env) == {}


def test_redact_urls_options_and_text() -> None:
    assert storage.redact("https://user:pw@host/p?sig=abc&x=1") == "https://***@host/p?sig=***&x=1"
    opts = {
        "key": "AKIA",
        "secret": SECRET,
        "endpoint_url": "http://h",
        "token": "anon",
        "client_kwargs": {"aws_session_token": "tok"},
        "connection_string": "AccountName=dev;AccountKey=Zm9vYmFy==;BlobEndpoint=http://h;",
    }
    shown = storage.redact(opts)
    assert shown["secret"] == "***" and shown["key"] == "***" and shown["token"] == "anon"
    assert shown["client_kwargs"]["aws_session_token"] == "***"
    assert shown["connection_string"] == "AccountName=dev;AccountKey=***;BlobEndpoint=http://h;"
    assert storage.redact("GET /tokeninfo?access_token=ya29.abc failed") == (
        "GET /tokeninfo?access_token=*** failed"
    )


def test_log_records_are_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    storage.storage_options_for("s3://b/k", {"secret": SECRET})  # now a known secret
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.some.child").warning("signing with %s", SECRET)
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            logging.getLogger("gcsfs").exception("failed")
    assert "signing with ***" in caplog.text
    assert SECRET not in caplog.text


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
def test_wrong_s3_credentials_one_clear_line(
    s3_emulator: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bucket = s3_emulator.make_bucket("creds")
    schema = DataSection(features=2, classes=2)
    url = write_dataset(
        bucket, "d", [[0.0, 1.0]] * 4, [0, 1, 0, 1], "parquet", s3_emulator.storage_options
    )
    for bad in ({"secret": SECRET}, {"key": "AKIAWRONGWRONG"}):
        opts = {**s3_emulator.storage_options, **bad}
        with caplog.at_level(logging.DEBUG), pytest.raises(DataError) as err:
            open_dataset(url, schema, opts)
        assert len(err.value.problems) == 1
        _assert_denied(err.value.problems[0], SECRET)
        assert "AWS_ACCESS_KEY_ID" in err.value.problems[0]
        assert SECRET not in caplog.text
    with pytest.raises(storage.StorageError) as serr:
        storage.write_bytes(
            storage.join(bucket, "x"), b"x", {**s3_emulator.storage_options, "secret": SECRET}
        )
    assert serr.value.kind == "denied"


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
