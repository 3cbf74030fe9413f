"""Named tensors <-> safetensors, and the checks every tensor payload must pass.

Every tensor that crosses the wire or touches disk is safetensors (never
pickle). The wire dtype is little-endian float32. A *manifest* maps each
tensor name to its shape; an update is accepted only if it matches the job's
manifest exactly and holds only finite numbers.

:class:`SafetensorsFile` reads a validated file tensor by tensor, in bounded
chunks, so that the coordinator can fold an update of any size into its
running sum without ever holding the whole update in memory.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
import safetensors
import safetensors.numpy

WIRE_DTYPE = "F32"
MAX_HEADER_BYTES = 16 * 1024 * 1024
CHUNK_ELEMENTS = 1 << 20
NORM_CHUNK = 1 << 16
"""Elements per float64 piece when a norm is summed (0.5 MB, per upload in flight)."""

Manifest = dict[str, tuple[int, ...]]


class TensorError(ValueError):
    """A tensor payload that does not match what the job expects."""


def manifest_of(tensors: Mapping[str, np.ndarray]) -> Manifest:
    return {name: tuple(int(d) for d in array.shape) for name, array in tensors.items()}


def manifest_bytes(manifest: Manifest) -> int:
    """Bytes of tensor data (float32) that a payload with this manifest carries."""
    return sum(4 * math.prod(shape) for shape in manifest.values())


def max_payload_bytes(manifest: Manifest) -> int:
    """The largest acceptable body for an update with this manifest.

    Tensor data plus a generous allowance for the JSON header (names, shapes,
    offsets and the metadata strings), never more than the hard header cap.
    """
    header_allowance = 64 * 1024 + 256 * len(manifest)
    return 8 + manifest_bytes(manifest) + min(header_allowance, MAX_HEADER_BYTES)


def _wire_array(array: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian float32, keeping the shape (0-d stays 0-d).

    ``np.ascontiguousarray`` would turn a 0-d array into shape ``(1,)``, so a
    scalar parameter would come back with a different shape than it left.
    """
    return np.asarray(array, dtype="<f4", order="C")


def _layout(
    tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None, ascii: bool
) -> tuple[dict[str, np.ndarray], bytes]:
    """The wire arrays by name and the safetensors prefix (8-byte length, padded JSON header).

    The format's layout: names sorted (for one dtype, the order the reference
    writer uses), contiguous offsets, the header padded with spaces to 8 bytes.
    ``ascii``: names and metadata escaped to ASCII in the header (else UTF-8).
    """
    arrays = {name: _wire_array(a) for name, a in sorted(tensors.items())}
    quote = json.encoder.encode_basestring_ascii if ascii else json.encoder.encode_basestring
    parts = []  # what json.dumps(header, separators=(",", ":")) writes, without its overhead
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        pairs = ",".join(f"{quote(k)}:{quote(v)}" for k, v in metadata.items())
        parts.append(f'"__metadata__":{{{pairs}}}')
    offset = 0
    for name, array in arrays.items():
        shape = ",".join(str(int(d)) for d in array.shape)
        end = offset + array.nbytes
        parts.append(
            f'{quote(name)}:{{"dtype":"{WIRE_DTYPE}","shape":[{shape}],"data_offsets":[{offset},{end}]}}'
        )
        offset = end
    blob = ("{" + ",".join(parts) + "}").encode()
    blob += b" " * (-len(blob) % 8)
    return arrays, struct.pack("<Q", len(blob)) + blob


def encode(tensors: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """Serialize float tensors to safetensors bytes (as little-endian float32).

    Written here rather than by ``safetensors.numpy.save``, whose per-tensor
    bookkeeping costs more than the copy for the small updates of
    ``fedaas simulate``; the reference parser reads it back in the tests.
    """
    arrays, prefix = _layout(tensors, metadata, ascii=False)  # as the reference writes it
    return b"".join([prefix, *(a.tobytes() for a in arrays.values())])


def save(
    path: str | Path,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write a safetensors file tensor by tensor, without a second in-memory copy.

    ``safetensors.numpy.save_file`` first copies every tensor to ``bytes``;
    for the coordinator's model-sized buffers that doubles peak memory, so the
    (documented, simple) layout is streamed here instead (:func:`_layout`).
    Files written here are read back by the reference parser in the tests.
    """
    arrays, prefix = _layout(tensors, metadata, ascii=True)
    with open(path, "wb") as f:
        f.write(prefix)
        for array in arrays.values():
            if array.size:  # memoryview cannot cast a view with a zero in its shape
                f.write(memoryview(array).cast("B"))


def _parse_header(head: bytes, total: int) -> tuple[dict, int]:
    """Parse and sanity-check a safetensors header; returns (header, data start)."""
    if total < 8:
        raise TensorError("not a safetensors payload: shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", head[:8])
    if length > MAX_HEADER_BYTES or 8 + length > total:
        raise TensorError("not a safetensors payload: header length out of range")
    try:  # UTF-8 only, as the format says (json.loads alone would also take UTF-16/32)
        header = json.loads(head[8 : 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        # RecursionError: a header of deeply nested brackets must be a 400, not a crash
        raise TensorError("not a safetensors payload: header is not JSON") from None
    if not isinstance(header, dict):
        raise TensorError("not a safetensors payload: header is not an object")
    try:  # JSON's \ud800-style escapes can spell a lone surrogate: text no UTF-8 can carry
        json.dumps(header, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise TensorError("not a safetensors payload: header holds a lone surrogate") from None
    return header, 8 + length


def _check_entries(header: dict, data_len: int, manifest: Manifest | None) -> dict[str, tuple]:
    """Check names, dtypes, shapes and offsets; returns name -> (shape, start, end)."""
    entries: dict[str, tuple] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise TensorError(f"tensor {name!r}: malformed header entry")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype != WIRE_DTYPE:
            raise TensorError(f"tensor {name!r}: dtype {dtype!r}, expected {WIRE_DTYPE}")
        if (
            not isinstance(shape, list)
            or not all(type(d) is int and d >= 0 for d in shape)  # not bool: true == 1
            or not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
        ):
            raise TensorError(f"tensor {name!r}: malformed shape or offsets")
        start, end = offsets
        if not 0 <= start <= end or end - start != 4 * math.prod(shape):
            raise TensorError(f"tensor {name!r}: data offsets do not match its shape")
        if end > data_len:
            raise TensorError(f"tensor {name!r}: data runs past the end of the payload (truncated)")
        entries[name] = (tuple(shape), start, end)
    spans = sorted((s, e) for _, s, e in entries.values())
    position = 0
    for start, end in spans:
        if start != position:
            raise TensorError("tensor data is not laid out contiguously")
        position = end
    if position != data_len:
        raise TensorError("payload length does not match its header (truncated or padded)")
    if manifest is not None:
        missing = sorted(set(manifest) - set(entries))
        extra = sorted(set(entries) - set(manifest))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {', '.join(map(repr, missing[:5]))}")
            if extra:
                parts.append(f"unexpected {', '.join(map(repr, extra[:5]))}")
            raise TensorError("tensor names do not match the model: " + "; ".join(parts))
        for name, (shape, _, _) in entries.items():
            if shape != tuple(manifest[name]):
                raise TensorError(
                    f"tensor {name!r}: shape {list(shape)}, expected {list(manifest[name])}"
                )
    return entries


def _metadata(header: dict) -> dict[str, str]:
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise TensorError("safetensors metadata must map strings to strings")
    return meta


def decode(
    data: bytes, manifest: Manifest | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse and validate safetensors bytes; returns (tensors, metadata)."""
    header, start = _parse_header(data[: 8 + MAX_HEADER_BYTES], len(data))
    _check_entries(header, len(data) - start, manifest)
    meta = _metadata(header)
    try:
        tensors = safetensors.numpy.load(data)
    except safetensors.SafetensorError as exc:
        raise TensorError(f"not a valid safetensors payload: {exc}") from None
    for name, array in tensors.items():
        if not np.isfinite(array).all():
            raise TensorError(f"tensor {name!r} holds NaN or Inf")
    return tensors, meta


def load(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    return decode(Path(path).read_bytes())


class SafetensorsFile:
    """A safetensors payload (bytes in memory, or a file), validated once, read in chunks.

    Validation checks the header (names, dtypes, shapes, contiguous offsets,
    total length) and, with a manifest, that it matches the model exactly.
    """

    def __init__(self, source: bytes | str | Path, manifest: Manifest | None = None) -> None:
        if isinstance(source, bytes):
            self._data: bytes | None = source
            self.path: Path | None = None
            total, head = len(source), source[: 8 + MAX_HEADER_BYTES]
        else:
            self._data, self.path = None, Path(source)
            total = self.path.stat().st_size
            with self.path.open("rb") as f:
                prefix = f.read(8)  # the header's length: read no more than the header
                length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else 0
                head = prefix + f.read(min(length, MAX_HEADER_BYTES))
        header, self._data_start = _parse_header(head, total)
        self._entries = _check_entries(header, total - self._data_start, manifest)
        self.metadata = _metadata(header)

    @property
    def manifest(self) -> Manifest:
        return {name: shape for name, (shape, _, _) in self._entries.items()}

    def chunks(
        self, name: str, max_elements: int = CHUNK_ELEMENTS
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(flat offset, float32 values)`` for one tensor, in bounded pieces."""
        _, start, end = self._entries[name]
        begin = self._data_start + start
        if self._data is not None:
            view = memoryview(self._data)
            for pos in range(begin, begin + (end - start), 4 * max_elements):
                stop = min(pos + 4 * max_elements, begin + (end - start))
                yield (pos - begin) // 4, np.frombuffer(view[pos:stop], dtype="<f4")
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            yield from _read_chunks(f, begin, end - start, max_elements)

    @property
    def payload(self) -> bytes | None:
        """The payload when it is held in memory (``None`` for a file)."""
        return self._data

    def finite_norm(self) -> float:
        """The L2 norm over all tensors, summed in float64; raises :class:`TensorError`
        naming the first tensor that holds NaN or Inf.

        One pass does both: the running sum of squares of float32 values
        cannot overflow float64, so it turns NaN or Inf exactly in the tensor
        that holds one.
        """
        total = 0.0
        for name in self._entries:
            for _, values in self.chunks(name, NORM_CHUNK):
                wide = values.astype(np.float64)
                total += float(np.dot(wide, wide))
            if not math.isfinite(total):
                raise TensorError(f"tensor {name!r} holds NaN or Inf")
        return math.sqrt(total)


def _read_chunks(
    f: BinaryIO, offset: int, nbytes: int, max_elements: int
) -> Iterator[tuple[int, np.ndarray]]:
    f.seek(offset)
    done = 0
    while done < nbytes:
        size = min(4 * max_elements, nbytes - done)
        buf = f.read(size)
        if len(buf) != size:
            raise TensorError("payload ended early")
        yield done // 4, np.frombuffer(buf, dtype="<f4")
        done += size


def save_state(
    path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, object]
) -> None:
    """Atomically write arrays with their own dtypes plus a JSON ``state`` (e.g. noise state).

    For small internal state, not for wire payloads (those are float32 and
    go through :func:`encode`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    contiguous = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    safetensors.numpy.save_file(contiguous, str(tmp), metadata={"state": json.dumps(meta)})
    tmp.replace(path)


def load_state(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Read what :func:`save_state` wrote."""
    with safetensors.safe_open(str(path), framework="numpy") as f:
        meta = json.loads((f.metadata() or {}).get("state", "{}"))
        arrays = {name: f.get_tensor(name) for name in f.keys()}
    return arrays, meta
