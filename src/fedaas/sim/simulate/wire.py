"""The only thing that crosses between the simulation's driver and its workers: frames.

A frame is a JSON header (UTF-8) and an opaque body (safetensors bytes, or
nothing)::

    [4 bytes: header length, big-endian][header JSON][body]

Over a pipe (the embedded backend), each frame is preceded by its 8-byte
length. Ray actors take and return a frame as one ``bytes`` value. A training task
carries a chunk of members (:func:`chunked`) and its answer all their
updates, one after another in the body. No
Python object is ever pickled across: a worker can only be told what JSON
and safetensors can say.
"""

from __future__ import annotations

import json
import math
import struct
from typing import IO, Any

MAX_HEADER = 16 * 1024 * 1024


class WireError(ValueError):
    """A frame that does not parse: the other side is broken or gone."""


def pack(header: dict[str, Any], body: bytes = b"") -> bytes:
    """One frame: ``header`` as JSON, then ``body``."""
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack(">I", len(head)) + head + body


def unpack(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """``(header, body)`` of a frame made by :func:`pack`."""
    if len(frame) < 4:
        raise WireError("a frame shorter than its header length")
    (size,) = struct.unpack(">I", frame[:4])
    if size > MAX_HEADER or 4 + size > len(frame):
        raise WireError(f"a frame header of {size} bytes does not fit the frame")
    try:
        header = json.loads(frame[4 : 4 + size])
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WireError(f"a frame header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise WireError("a frame header must be a JSON object")
    return header, frame[4 + size :]


def chunked(members: list[int], workers: int) -> list[list[int]]:
    """The round's members as tasks for ``workers`` workers, one frame each way per task.

    Guided self-scheduling (Polychronopoulos and Kuck 1987): each task takes
    ``1 / (2 * workers)`` of the members still left, so the first tasks carry
    many members (one frame for many small updates) and the last carry one
    (no worker waits long for another's big task at the end of the round).
    """
    chunks, start = [], 0
    while start < len(members):
        size = max(1, math.ceil((len(members) - start) / (2 * workers)))
        chunks.append(members[start : start + size])
        start += size
    return chunks


def write_frame(stream: IO[bytes], frame: bytes) -> None:
    """Send one frame over a pipe (length-prefixed) and flush it."""
    stream.write(struct.pack(">Q", len(frame)))
    stream.write(frame)
    stream.flush()


def read_frame(stream: IO[bytes]) -> bytes | None:
    """The next frame from a pipe, or ``None`` at a clean end of stream."""
    prefix = _read_exactly(stream, 8)
    if prefix is None:
        return None
    (size,) = struct.unpack(">Q", prefix)
    data = _read_exactly(stream, size)
    if data is None:
        raise WireError(f"the pipe closed inside a frame of {size} bytes")
    return data


def _read_exactly(stream: IO[bytes], size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            if left == size:
                return None
            raise WireError("the pipe closed inside a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
