"""Mask expansion: a 32-byte seed -> a vector of uniform integers modulo 2^32 or 2^64.

The PRG is AES-256 in counter mode from ``cryptography`` (OpenSSL, AES-NI:
several GB/s), keyed by the seed, with a zero counter block: every seed is
derived once for one purpose (HKDF bound to job, round, attempt and member
pair, or a fresh self-mask seed), so no keystream is ever reused. The
keystream is produced in chunks of :data:`CHUNK` elements and viewed with
``np.frombuffer``: no Python loop per element, memory O(chunk). numpy's
generators are never used for masks (their state is recoverable from output).
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

SEED_BYTES = 32
CHUNK = 1 << 20
"""Elements per keystream call when adding a mask in place (bounds temporary memory)."""

_ZERO_IV = bytes(16)
_MASK_DTYPES = (np.dtype(np.uint32), np.dtype(np.uint64))


def _check(seed: bytes, dtype: np.dtype) -> None:
    if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed is {SEED_BYTES} bytes")
    if dtype not in _MASK_DTYPES:
        raise ValueError(f"masks are uint32 or uint64, not {dtype}")


def _stream(seed: bytes):  # type: ignore[no-untyped-def]
    return Cipher(algorithms.AES(bytes(seed)), modes.CTR(_ZERO_IV)).encryptor()


def expand(seed: bytes, length: int, dtype: np.dtype | type = np.uint32) -> np.ndarray:
    """The mask of ``length`` uniform integers (little-endian) that ``seed`` expands to."""
    dt = np.dtype(dtype).newbyteorder("<")
    _check(seed, np.dtype(dtype))
    if length < 0:
        raise ValueError("a mask length is >= 0")
    raw = _stream(seed).update(bytes(length * dt.itemsize))
    return np.frombuffer(raw, dtype=dt).astype(np.dtype(dtype), copy=False)


def add_mask(target: np.ndarray, seed: bytes, sign: int = 1) -> None:
    """``target += sign * expand(seed, len(target))`` modulo 2^bits, in place and in chunks.

    ``target`` is a 1-D uint32 or uint64 array; ``sign`` is +1 or -1. numpy's
    unsigned arithmetic wraps, which is exactly addition modulo 2^bits.
    """
    if target.ndim != 1:
        raise ValueError("masks apply to 1-D vectors")
    _check(seed, target.dtype)
    if sign not in (1, -1):
        raise ValueError("sign is +1 or -1")
    dt = target.dtype.newbyteorder("<")
    stream = _stream(seed)
    zeros = bytes(min(CHUNK, len(target)) * dt.itemsize)
    for start in range(0, len(target), CHUNK):
        stop = min(start + CHUNK, len(target))
        raw = stream.update(zeros[: (stop - start) * dt.itemsize])
        block = np.frombuffer(raw, dtype=dt)
        if sign > 0:
            np.add(target[start:stop], block, out=target[start:stop], casting="unsafe")
        else:
            np.subtract(target[start:stop], block, out=target[start:stop], casting="unsafe")
