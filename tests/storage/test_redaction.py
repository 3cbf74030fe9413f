"""Redaction of URLs, options, messages and log records; no side effects on import."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from fedaas import storage

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


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


def test_redact_url_can_keep_the_user_name() -> None:
    url = "postgresql+psycopg://fedaas:s3cret-pw@127.0.0.1:1/db?password=x"
    assert storage.redact_url(url, keep_user=True) == (
        "postgresql+psycopg://fedaas:***@127.0.0.1:1/db?password=***"
    )
    assert storage.redact_url("postgresql://fedaas@h/db", keep_user=True) == (
        "postgresql://fedaas@h/db"
    )
    assert storage.redact_url("sqlite:////abs/path.db") == "sqlite:////abs/path.db"


def test_one_line_is_redacted_and_short() -> None:
    storage.remember_secrets({"secret": SECRET})
    assert storage.one_line(RuntimeError(f"bad {SECRET}\nmore")) == "bad ***"
    assert storage.one_line(RuntimeError("")) == "RuntimeError"
    assert len(storage.one_line(RuntimeError("x" * 500))) == 200


def test_log_records_are_scrubbed_once_installed(caplog: pytest.LogCaptureFixture) -> None:
    storage.install_log_redaction()
    storage.install_log_redaction()  # idempotent
    storage.storage_options_for("s3://b/k", {"secret": SECRET})  # now a known secret
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("botocore.some.child").warning("signing with %s", SECRET)
        try:
            raise RuntimeError(f"boom {SECRET}")
        except RuntimeError:
            logging.getLogger("gcsfs").exception("failed")
    assert "signing with ***" in caplog.text
    assert SECRET not in caplog.text


def test_redact_filter_scrubs_one_handler() -> None:
    storage.remember_secrets({"token": SECRET})
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "token %s", (SECRET,), None)
    assert storage.RedactFilter().filter(record)
    assert record.getMessage() == "token ***"


def _in_fresh_interpreter(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    return json.loads(out.stdout)


def test_importing_storage_changes_neither_environment_nor_logging() -> None:
    result = _in_fresh_interpreter(
        "import json, logging, os\n"
        "env, factory = dict(os.environ), logging.getLogRecordFactory()\n"
        "import fedaas.storage\n"
        "from fedaas.storage import errors, filesystems, io, options, redaction, urls\n"
        "print(json.dumps({'env': dict(os.environ) == env,\n"
        "                  'factory': logging.getLogRecordFactory() is factory}))\n"
    )
    assert result == {"env": True, "factory": True}


def test_gcsfs_setting_is_made_before_a_gs_url_is_resolved() -> None:
    result = _in_fresh_interpreter(
        "import json, os, sys\n"
        "os.environ.pop('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT', None)\n"
        "from fedaas import storage\n"
        "before = 'gcsfs' in sys.modules\n"
        "storage.resolve('gs://bucket/key', {'endpoint_url': 'http://127.0.0.1:9', 'token': 'anon'})\n"
        "print(json.dumps({'imported_before': before,\n"
        "                  'value': os.environ.get('GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT')}))\n"
    )
    assert result == {"imported_before": False, "value": "false"}
