"""Receiving a member's update: spool, validate, fold.

The body is streamed to a spool file under a size cap derived from the job's
model, then validated completely (safetensors structure, tensor names,
shapes, dtype, finite values, metadata) before a single number is added to
the round's running sum. A rejected upload therefore changes nothing; an
accepted one is folded chunk by chunk, and the spool file is deleted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from starlette.requests import ClientDisconnect, Request

from fedaas.algorithms.aggregate import WeightedSum
from fedaas.protocol import UpdateMetadata
from fedaas.server.errors import InvalidRequest, TooLarge
from fedaas.tensors import Manifest, SafetensorsFile, TensorError

MEMORY_SPOOL_BYTES = 4 * 1024 * 1024


async def receive_body(request: Request, limit: int, new_spool: Callable[[], Path]) -> bytes | Path:
    """Read the request body, with :class:`TooLarge` as soon as it exceeds ``limit``.

    Bodies up to :data:`MEMORY_SPOOL_BYTES` stay in memory; larger ones are
    streamed to a spool file from ``new_spool()`` (the caller deletes it), so
    an in-flight upload never costs more than that much memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("invalid Content-Length")
        if int(declared) > limit:
            raise TooLarge(f"update of {declared} bytes exceeds the limit of {limit}")
    size = 0
    pieces: list[bytes] = []
    spool: Path | None = None
    sink: BinaryIO | None = None
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise TooLarge(f"update exceeds the limit of {limit} bytes")
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
            raise InvalidRequest("the upload was interrupted") from None
        raise
    finally:
        if sink is not None:
            sink.close()
    return spool if spool is not None else b"".join(pieces)


def validate_update(
    body: bytes | Path, manifest: Manifest
) -> tuple[SafetensorsFile, UpdateMetadata]:
    """Check a spooled update completely; raises :class:`InvalidRequest` if it is bad."""
    try:
        update = SafetensorsFile(body, manifest)
        meta = UpdateMetadata.from_strings(update.metadata)
        update.check_finite()
    except (TensorError, ValueError) as exc:
        raise InvalidRequest(str(exc), "invalid_update") from None
    return update, meta


def fold_update(update: SafetensorsFile, acc: WeightedSum, weight: float) -> None:
    """Add ``weight * update`` into the running sum, one bounded chunk at a time."""
    for name in update.manifest:
        for offset, values in update.chunks(name):
            acc.add_chunk(name, offset, values, weight)
    acc.commit(weight)
