"""URLs and storage options: protocols, joining, ``--storage-option`` flags, the environment."""

from __future__ import annotations

import pytest

from fedaas import storage

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
    assert storage.is_local("/tmp/x") and not storage.is_local("s3://b/k")


def test_join_and_bucket() -> None:
    assert storage.join("s3://b/", "/run/", "model") == "s3://b/run/model"
    assert storage.join("/tmp/x", "a") == "/tmp/x/a"
    assert storage.bucket_of("/bucket/some/key") == "bucket"


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
