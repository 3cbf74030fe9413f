"""The documented shapes of the API's binary answers (models, task bundles, upload answers),
for ``/openapi.json``: FastAPI derives the JSON ones from their ``response_model``."""

from __future__ import annotations

from typing import Any

from fedaas.protocol import RECEIPT_HEADER, ROUND_HEADER, TASK_BUNDLE

BINARY = {"schema": {"type": "string", "format": "binary"}}
MODEL_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": f"the model (safetensors); its round in `{ROUND_HEADER}`",
        "content": {"application/octet-stream": BINARY},
    },
    304: {"description": "unchanged (`If-None-Match` matched the `ETag`)"},
}
TASK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            "the task (JSON) or, with `bundle=true` and a small model, a task bundle: the "
            f"task's length (4 bytes, big-endian), the task (JSON), the model ({TASK_BUNDLE})"
        ),
        "content": {TASK_BUNDLE: BINARY},
    },
    204: {"description": "no task came up within `timeout`"},
}
UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            f"the receipt (JSON) or, with `next_timeout`, the member's next task bundle "
            f"with the receipt in `{RECEIPT_HEADER}` (a secure round: the unmask question)"
        ),
        "content": {TASK_BUNDLE: BINARY},
    },
}
