"""Masks: deterministic per seed, uniform-looking, chunked in place like in one call."""

from __future__ import annotations

import os

import numpy as np
import pytest

from fedaas.algorithms.secagg import prg


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_expansion_is_deterministic_and_seed_specific(dtype: type) -> None:
    seed = os.urandom(32)
    a, b = prg.expand(seed, 1000, dtype), prg.expand(seed, 1000, dtype)
    assert a.dtype == np.dtype(dtype) and np.array_equal(a, b)
    assert not np.array_equal(a, prg.expand(os.urandom(32), 1000, dtype))
    assert np.array_equal(prg.expand(seed, 10, dtype), a[:10])  # a prefix of the same stream


def test_mask_bits_look_uniform() -> None:
    mask = prg.expand(os.urandom(32), 1 << 16)
    bits = np.unpackbits(mask.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.005  # 2M bits: sd 3.5e-4
    assert abs(float(mask.mean()) / 2**32 - 0.5) < 0.01


def test_add_mask_in_chunks_matches_one_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prg, "CHUNK", 7)
    seed = os.urandom(32)
    base = np.arange(50, dtype=np.uint32)
    target = base.copy()
    prg.add_mask(target, seed, +1)
    assert np.array_equal(target, base + prg.expand(seed, 50))
    prg.add_mask(target, seed, -1)
    assert np.array_equal(target, base)  # wraps modulo 2^32 both ways


def test_bad_seeds_and_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        prg.expand(b"short", 4)
    with pytest.raises(ValueError, match="uint32 or uint64"):
        prg.add_mask(np.zeros(4, dtype=np.int64), os.urandom(32))
    with pytest.raises(ValueError, match="sign"):
        prg.add_mask(np.zeros(4, dtype=np.uint32), os.urandom(32), 2)
