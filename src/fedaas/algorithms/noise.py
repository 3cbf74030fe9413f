"""Where privacy noise and sampling randomness come from.

Private runs draw from the operating system's cryptographic source
(``os.urandom``), never from numpy's or Python's pseudo-random generators,
whose state an observer can reconstruct from a few outputs.

Floating-point Gaussian samplers leak through their low-order bits
(Mironov, "On Significance of the Least Significant Bits for Differential
Privacy", CCS 2012): the set of doubles a sampler can return around
``x + noise`` differs from the set around ``x' + noise``. fedaas uses the
same mitigation on both paths, client-level noise here (:func:`secure_noise_source`)
and DP-SGD (:mod:`fedaas.train.dp_sgd`): Opacus's secure mode, each
coordinate is ``(g1 + g2 + g3 + g4) / 2`` of four independent Box-Muller
draws (Holohan et al. 2021, arXiv:2112.05307), which smears the low bits of
the result over many more representable values; releases are then rounded
to float32. We chose it over a discrete Gaussian on an integer grid
(Canonne, Kamath & Steinke, NeurIPS 2020, arXiv:2004.00010), which removes
the leak exactly, because the updates are float32 tensors that the server
optimizer consumes as floats: a grid would need a fixed-point encoding of
every update (the job of the secure aggregation issue, which will bring
one) and an exact sampler that costs tens of draws per coordinate in
Python. The mitigation is a hardening, not a proof: say so when asked.

:class:`ReproducibleNoise` (seeded numpy) exists only for the reproducibility
mode, which marks a run as **not private**.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

Shape = tuple[int, ...]

_CHUNK = 1 << 20  # normals drawn per os.urandom call; bounds temporary memory
_TWO_POW_M53 = 2.0**-53


class NoiseSource(Protocol):
    """Where standard normal draws come from."""

    @property
    def private(self) -> bool:
        """Whether noise from this source protects privacy."""
        ...

    def standard_normal(self, shape: Shape) -> np.ndarray:
        """Independent N(0, 1) draws (float64) of the given shape."""
        ...


def secure_uniform(count: int) -> np.ndarray:
    """``count`` uniforms in ``[0, 1)`` with 53 bits each from ``os.urandom``."""
    bits = np.frombuffer(os.urandom(8 * count), dtype="<u8") >> np.uint64(11)
    return bits * _TWO_POW_M53


class SecureNoise:
    """N(0, 1) from ``os.urandom`` (the OS CSPRNG) by the Box-Muller transform.

    Each uniform uses 53 random bits, so draws are truncated at about
    8.6 standard deviations (probability ~1e-17 per draw). ``mitigated``
    applies the four-draw smoothing of the module docstring (Mironov 2012);
    :func:`secure_noise_source` always turns it on.
    """

    private = True

    def __init__(self, mitigated: bool = False) -> None:
        self.mitigated = mitigated

    def standard_normal(self, shape: Shape) -> np.ndarray:
        if self.mitigated:
            raw = SecureNoise().standard_normal((4, math.prod(shape)))
            return (raw.sum(axis=0) / 2.0).reshape(shape)
        count = math.prod(shape)
        out = np.empty(count, dtype=np.float64)
        for start in range(0, count, _CHUNK):
            n = min(_CHUNK, count - start)
            pairs = (n + 1) // 2
            bits = np.frombuffer(os.urandom(16 * pairs), dtype="<u8") >> np.uint64(11)
            u1 = (bits[:pairs] + 1.0) * _TWO_POW_M53  # (0, 1]: log never sees 0
            u2 = bits[pairs:] * _TWO_POW_M53  # [0, 1)
            radius = np.sqrt(-2.0 * np.log(u1))
            angle = 2.0 * math.pi * u2
            chunk = out[start : start + n]
            chunk[:pairs] = radius * np.cos(angle)
            chunk[pairs:] = (radius * np.sin(angle))[: n - pairs]
        return out.reshape(shape)


class ReproducibleNoise:
    """Seeded numpy noise for the reproducibility mode: **not private**.

    Anyone who knows the seed can subtract the noise. ``stream`` separates
    members that share a job seed. The state is JSON-compatible
    (:meth:`state_dict`), so a restarted member continues the same sequence.
    """

    private = False

    def __init__(self, seed: int, stream: int = 0) -> None:
        sequence = np.random.SeedSequence(seed, spawn_key=(stream,))
        self._generator = np.random.Generator(np.random.PCG64DXSM(sequence))

    def standard_normal(self, shape: Shape) -> np.ndarray:
        return self._generator.standard_normal(shape)

    def uniform(self, count: int) -> np.ndarray:
        """``count`` uniforms in ``[0, 1)`` (seeded sampling in reproducible runs)."""
        return self._generator.random(count)

    def state_dict(self) -> dict[str, Any]:
        state = self._generator.bit_generator.state
        return {
            "bit_generator": state["bit_generator"],
            "state": hex(state["state"]["state"]),
            "inc": hex(state["state"]["inc"]),
            "has_uint32": int(state["has_uint32"]),
            "uinteger": int(state["uinteger"]),
        }

    @classmethod
    def from_state(cls, data: Mapping[str, Any]) -> ReproducibleNoise:
        if data.get("bit_generator") != "PCG64DXSM":
            raise ValueError("not a PCG64DXSM noise state")
        source = cls(0)
        source._generator.bit_generator.state = {
            "bit_generator": "PCG64DXSM",
            "state": {"state": int(data["state"], 16), "inc": int(data["inc"], 16)},
            "has_uint32": int(data["has_uint32"]),
            "uinteger": int(data["uinteger"]),
        }
        return source


def secure_noise_source() -> SecureNoise:
    """The noise source for private runs: OS randomness, Mironov-mitigated (see above)."""
    return SecureNoise(mitigated=True)


def reproducible_noise_source(seed: int, stream: int = 0) -> ReproducibleNoise:
    """Fixed-seed noise; only for runs that are marked as not private."""
    return ReproducibleNoise(seed, stream)
