"""The coordinator's bounded aggregation over spilled updates, against float64 references."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedaas import tensors
from fedaas.algorithms.screening import ScreenedMean
from fedaas.server.aggregation import aggregate, bound_updates
from fedaas.server.privacy import JobPrivacy
from fedaas.server.spill import RoundSpill
from fedaas.spec import parse_spec
from fixtures.specs import make_spec

MANIFEST = {"w": (3, 700), "b": (5,), "s": ()}


def _spill(tmp_path: Path, rows: list[dict[str, np.ndarray]], claims: list[int]) -> RoundSpill:
    spill = RoundSpill(tmp_path, "job-x", 1, MANIFEST)
    for member, (delta, claim) in enumerate(zip(rows, claims, strict=True), start=1):
        body = tensors.encode(delta, {"num_examples": str(claim)})
        spill.keep(member, body, claim, tensors.SafetensorsFile(body, MANIFEST).finite_norm())
    return spill


def _flat(update: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(update[k], np.float64).reshape(-1) for k in MANIFEST])


def _setup(tmp_path: Path, strategy: dict[str, Any], n: int = 7) -> tuple[Any, ...]:
    rng = np.random.default_rng(3)
    rows = [
        {k: rng.normal(scale=0.1, size=s).astype(np.float32) for k, s in MANIFEST.items()}
        for _ in range(n)
    ]
    rows[-1] = {k: np.full(s, -1e30, np.float32) for k, s in MANIFEST.items()}
    claims = [int(c) for c in rng.integers(5, 20, size=n - 1)] + [10**12]
    spec = parse_spec(make_spec(clients=None, min_clients=n, strategy=strategy or None))
    return _spill(tmp_path, rows, claims), spec, np.stack([_flat(r) for r in rows]), claims


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean", "krum", "screened_mean"])
def test_bounded_aggregate_matches_float64(tmp_path: Path, rule: str, monkeypatch) -> None:
    monkeypatch.setattr("fedaas.server.spill.BLOCK_BYTES", 7 * 8 * 1000)  # many blocks
    strategy = {} if rule == "mean" else {"aggregator": rule}
    if rule == "screened_mean":
        strategy["byzantine"] = 2
    spill, spec, rows, claims = _setup(tmp_path, strategy)
    privacy = JobPrivacy(spec, None, None)
    delta, bounded = aggregate(spill, spec, privacy, 1)
    norms = np.linalg.norm(rows, axis=1)
    scaled = rows * np.minimum(1, 10 * np.sort(norms)[3] / norms)[:, None]
    if rule == "mean":
        w = np.minimum(claims, 3 * sorted(claims)[3]).astype(float)
        want = (w[:, None] * scaled).sum(0) / w.sum()
    elif rule == "median":
        want = np.median(scaled, axis=0)
    elif rule == "trimmed_mean":
        want = np.sort(scaled, axis=0)[1:-1].mean(axis=0)
    elif rule == "krum":
        d = ((scaled[:, None] - scaled[None]) ** 2).sum(-1)
        scores = [np.sort(np.delete(d[i], i))[: 7 - 1 - 2].sum() for i in range(7)]
        want = scaled[int(np.argmin(scores))]
    else:  # the screen on the bounded rows (its formula: tests/algorithms/test_screening.py)
        w = np.minimum(claims, 3 * sorted(claims)[3]).astype(float)
        kept = ScreenedMean(2).screen(scaled @ scaled.T, list(w)).kept
        assert 6 not in kept and len(kept) == 5  # the -1e30 update is screened out
        want = (w[kept, None] * scaled[kept]).sum(0) / w[kept].sum()
    np.testing.assert_allclose(_flat(delta), want, rtol=1e-5, atol=1e-7)
    assert bounded.clipped == [7]
    spill.discard()
    assert list(tmp_path.iterdir()) == []


def test_norm_bound_from_the_spec_replaces_the_relative_one(tmp_path: Path) -> None:
    spill, spec, rows, _ = _setup(tmp_path, {"norm_bound": 0.5})
    bounded = bound_updates(spill, spec, JobPrivacy(spec, None, None))
    norms = np.linalg.norm(rows, axis=1)
    np.testing.assert_allclose(bounded.scales, np.minimum(1, 0.5 / norms))
    assert bounded.clipped == [m for m, n in zip(range(1, 8), norms, strict=True) if n > 0.5]
