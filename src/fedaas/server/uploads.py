"""Receiving a member's update: spool and validate.

The body is streamed to a spool file under a size cap derived from the job's
model, then validated completely (safetensors structure, tensor names,
shapes, dtype, finite values, metadata) before the round keeps it
(:mod:`fedaas.server.spill`). A rejected upload therefore changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from starlette.requests import ClientDisconnect, Request

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
) -> tuple[SafetensorsFile, UpdateMetadata, float]:
    """Check a spooled update completely; ``(update, metadata, L2 norm)``, the norm measured
    in the pass that checks for NaN and Inf. Raises :class:`InvalidRequest` if it is bad."""
    try:
        update = SafetensorsFile(body, manifest)
        meta = UpdateMetadata.from_strings(update.metadata)
        norm = update.finite_norm()
    except (TensorError, ValueError) as exc:
        raise InvalidRequest(str(exc), "invalid_update") from None
    return update, meta, norm
