"""Receiving a member's update: spool, validate, fold.

The body is streamed to a spool file under a size cap derived from the job's
model, then validated completely (safetensors structure, tensor names,
shapes, dtype, finite values, metadata) before a single number is added to
the round's running sum. A rejected upload therefore changes nothing; an
accepted one is folded chunk by chunk, and the spool file is deleted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from starlette.requests import ClientDisconnect, Request

from fedaas.algorithms.aggregate import WeightedSum
from fedaas.server.errors import ApiError
from fedaas.tensors import Manifest, SafetensorsFile, TensorError

MAX_EXAMPLES = 10**12
MAX_METRICS = 32


MEMORY_SPOOL_BYTES = 4 * 1024 * 1024


async def receive_body(request: Request, limit: int, new_spool: Callable[[], Path]) -> bytes | Path:
    """Read the request body, with 413 as soon as it exceeds ``limit``.

    Bodies up to :data:`MEMORY_SPOOL_BYTES` stay in memory; larger ones are
    streamed to a spool file from ``new_spool()`` (the caller deletes it), so
    an in-flight upload never costs more than that much memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, "bad_request", "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(
                413, "too_large", f"update of {declared} bytes exceeds the limit of {limit}"
            )
    size = 0
    pieces: list[bytes] = []
    spool: Path | None = None
    sink: BinaryIO | None = None
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "too_large", f"update exceeds the limit of {limit} bytes")
            if sink is None and size > MEMORY_SPOOL_BYTES:
                spool = new_spool()
                sink = spool.open("wb")
                sink.writelines(pieces)
                pieces = []
            if sink is not None:
                sink.write(chunk)
            else:
                pieces.append(chunk)
    except BaseException as exc:
        if spool is not None:
            spool.unlink(missing_ok=True)
        if isinstance(exc, ClientDisconnect):
            raise ApiError(400, "bad_request", "the upload was interrupted") from None
        raise
    finally:
        if sink is not None:
            sink.close()
    return spool if spool is not None else b"".join(pieces)


def _metadata(meta: dict[str, str]) -> tuple[int, dict[str, float]]:
    raw = meta.get("num_examples", "")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_EXAMPLES:
        raise TensorError("metadata num_examples must be a positive integer")
    try:
        metrics = json.loads(meta.get("metrics", "{}"))
    except json.JSONDecodeError:
        raise TensorError("metadata metrics must be a JSON object") from None
    if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
        raise TensorError(
            f"metadata metrics must be a JSON object of at most {MAX_METRICS} numbers"
        )
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if (
            not isinstance(key, str)
            or len(key) > 64
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise TensorError("metadata metrics must map short names to finite numbers")
        clean[key] = float(value)
    return int(raw), clean


def validate_update(
    body: bytes | Path, manifest: Manifest
) -> tuple[SafetensorsFile, int, dict[str, float]]:
    """Check a spooled update completely; raises :class:`ApiError` (400) if it is bad."""
    try:
        update = SafetensorsFile(body, manifest)
        num_examples, metrics = _metadata(update.metadata)
        update.check_finite()
    except TensorError as exc:
        raise ApiError(400, "invalid_update", str(exc)) from None
    return update, num_examples, metrics


def fold_update(update: SafetensorsFile, acc: WeightedSum, weight: float) -> None:
    """Add ``weight * update`` into the running sum, one bounded chunk at a time."""
    for name in update.manifest:
        for offset, values in update.chunks(name):
            acc.add_chunk(name, offset, values, weight)
    acc.commit(weight)
