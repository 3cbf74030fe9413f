"""Log output of the long-running commands: readable lines, or JSON for log shippers.

``fedaas --log-format json server ...`` (or ``FEDAAS_LOG_FORMAT=json``)
writes one JSON object per line: ``time`` (ISO 8601, UTC), ``level``,
``logger``, ``message`` and the record's structured fields (``event``,
``job``, ``round``, ``members``, ``seconds``, ``metrics``, ``member``, ...),
so that Loki, Elasticsearch or CloudWatch can index them without parsing
the message. Credential redaction (:func:`fedaas.storage.install_log_redaction`)
runs before either format sees a record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

FORMATS = ("text", "json")
FORMAT_ENV = "FEDAAS_LOG_FORMAT"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the record's ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
