"""One member against the coordinator's aggregate: each attack performed over HTTP on a real process.

Five members are sampled into round 1 of a real coordinator; four upload honest
updates and ``mallory`` uploads a poisoned one (an update of -50x the model
claiming 10^12 examples, values of 1e30, or a norm far above the DP clip).
The round's model is then fetched and compared with a float64 reference of
what each defence promises: norms clipped to 10x the round's median,
example counts capped at 3x the median claim, and the robust rules of
``[strategy] aggregator`` (coordinate-wise median, trimmed mean, Krum, the
screened mean). Each
test also checks that plain FedAvg would have been ruined by the same upload,
so the test fails if the defence goes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedaas import tensors
from fedaas.algorithms.screening import ScreenedMean
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

HONEST = ("alpha", "beta", "gamma", "delta")
MEMBERS = (*HONEST, "mallory")
FACTOR, RATIO = 10.0, 3.0  # server/aggregation.py: NORM_FACTOR, EXAMPLE_RATIO


def body(delta: dict[str, np.ndarray], examples: int) -> bytes:
    return tensors.encode(delta, {"num_examples": str(examples), "metrics": "{}"})


def flat(update: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(update[n], np.float64).reshape(-1) for n in names])


def honest_deltas(fed: Federation) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        {k: rng.normal(scale=0.01, size=v.shape).astype(np.float32) for k, v in fed.base.items()}
        for _ in HONEST
    ]


def run_round(fed: Federation, poisoned: dict[str, np.ndarray], claim: int) -> dict[str, Any]:
    """Honest members upload 10 examples each, mallory its poison; returns round 1's record."""
    for name, delta in zip(HONEST, honest_deltas(fed), strict=True):
        response = fed.upload(body(delta, 10), member=name)
        assert response.status_code == 200, response.text
    response = fed.upload(body(poisoned, claim), member="mallory")
    assert response.status_code == 200, response.text  # accepted: bounded, not refused
    job = fed.job(after_round=0, timeout=30)
    assert job["status"] == "running" and job["round"] == 1, job
    return job["rounds"][0]


def new_model(fed: Federation, names: list[str]) -> np.ndarray:
    model = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", fed.tokens["alpha"])
    assert model.status_code == 200 and model.headers["X-Fedaas-Round"] == "1"
    decoded, _ = tensors.decode(model.content, fed.manifest)
    return flat(decoded, names)


def reference(rows: np.ndarray, claims: list[int], rule: str) -> tuple[np.ndarray, int]:
    """The defended aggregate in float64, and how many rows were norm-clipped."""
    norms = np.linalg.norm(rows, axis=1)
    bound = FACTOR * np.sort(norms)[(len(norms) - 1) // 2]
    scales = np.minimum(1.0, bound / norms)
    scaled = rows * scales[:, None]
    clipped = int((scales < 1).sum())
    if rule == "mean":
        cap = RATIO * sorted(claims)[(len(claims) - 1) // 2]
        w = np.minimum(np.asarray(claims, np.float64), cap)
        return (w[:, None] * scaled).sum(axis=0) / w.sum(), clipped
    if rule == "median":
        return np.median(scaled, axis=0), clipped
    if rule == "trimmed_mean":  # beta 0.2 of 5: one dropped at each end
        return np.sort(scaled, axis=0)[1:-1].mean(axis=0), clipped
    if rule == "screened_mean":  # f = 1: mallory's update is the one screened out
        cap = RATIO * sorted(claims)[(len(claims) - 1) // 2]
        w = np.minimum(np.asarray(claims, np.float64), cap)
        kept = ScreenedMean(1).screen(scaled @ scaled.T, list(w)).kept
        assert kept == list(range(len(rows) - 1))
        return (w[kept, None] * scaled[kept]).sum(axis=0) / w[kept].sum(), clipped
    n, f = len(rows), 1  # krum
    d = ((scaled[:, None, :] - scaled[None, :, :]) ** 2).sum(axis=2)
    scores = [np.sort(np.delete(d[i], i))[: n - f - 2].sum() for i in range(n)]
    return scaled[int(np.argmin(scores))], clipped


def spec(name: str, **strategy: Any) -> dict[str, Any]:
    return make_spec(
        name, rounds=3, clients=5, min_clients=5, timeout=120, seed=5, strategy=strategy or None
    )


@pytest.mark.parametrize("rule", ["mean", "median", "trimmed_mean", "krum", "screened_mean"])
def test_one_member_claiming_1e12_examples_with_minus_50x_the_model(
    start_federation: StartFederation, rule: str
) -> None:
    strategy: dict[str, Any] = {} if rule == "mean" else {"aggregator": rule}
    with start_federation(spec(f"byz-{rule}", **strategy), members=MEMBERS, online=MEMBERS) as fed:
        names = list(fed.manifest)
        poison = {k: -50.0 * v for k, v in fed.base.items()}
        record = run_round(fed, poison, 10**12)
        got = new_model(fed, names) - flat(fed.base, names)
        rows = np.stack([flat(d, names) for d in (*honest_deltas(fed), poison)])
        want, clipped = reference(rows, [10] * 4 + [10**12], rule)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
        assert record["updates_clipped"] == clipped == 1
        honest_mean = rows[:4].mean(axis=0)
        fedavg = rows[4]  # 10^12 of 10^12 + 40 examples: plain FedAvg takes mallory's update
        assert np.linalg.norm(fedavg - honest_mean) > 100 * np.linalg.norm(honest_mean)
        # the mean is bounded (weight 30 of 70, norm 10x the median); the robust rules ignore it
        largest = np.linalg.norm(rows[:4], axis=1).max()
        limit = 2 * largest if rule != "mean" else 30 / 70 * FACTOR * largest + largest
        assert np.linalg.norm(got - honest_mean) < limit


def test_values_of_1e30_with_a_huge_count_leave_a_finite_model(
    start_federation: StartFederation,
) -> None:
    with start_federation(spec("byz-overflow"), members=MEMBERS, online=MEMBERS) as fed:
        names = list(fed.manifest)
        poison = {k: np.full(v.shape, 1e30, np.float32) for k, v in fed.base.items()}
        record = run_round(fed, poison, 10**12)
        model = new_model(fed, names)
        assert np.isfinite(model).all()
        rows = np.stack([flat(d, names) for d in (*honest_deltas(fed), poison)])
        want, _ = reference(rows, [10] * 4 + [10**12], "mean")
        np.testing.assert_allclose(model - flat(fed.base, names), want, rtol=1e-4, atol=1e-6)
        assert record["updates_clipped"] == 1
        assert np.abs(model).max() < 10  # a float32 running sum held Inf here before


def test_a_model_that_would_overflow_is_never_published(
    start_federation: StartFederation,
) -> None:
    """server_lr 100 x values of 1e37 overflow float32: the job fails naming the member."""
    job_spec = make_spec("byz-inf", rounds=3, clients=1, timeout=60, strategy={"server_lr": 100.0})
    with start_federation(job_spec, members=("mallory", "alpha"), online=("mallory",)) as fed:
        poison = {k: np.full(v.shape, 1e37, np.float32) for k, v in fed.base.items()}
        assert fed.upload(body(poison, 10), member="mallory").status_code == 200
        job = fed.job(after_round=0, timeout=30)
        assert job["status"] == "failed", job
        assert "NaN or Inf" in job["reason"] and "member mallory" in job["reason"], job
        assert job["round"] == 0 and job["rounds"] == []
        model = fed.request("GET", f"/v1/jobs/{fed.job_id}/model", fed.cluster.admin_token)
        assert model.status_code == 200 and model.headers["X-Fedaas-Round"] == "0"
        assert model.content == fed.base_bytes
        assert list((fed.cluster.state / "artifacts" / "spool").iterdir()) == []


def test_under_dp_an_update_above_the_clip_norm_is_refused(
    start_federation: StartFederation,
) -> None:
    privacy = {"mechanism": "gaussian", "noise_multiplier": 1.0, "clip_norm": 0.5}
    job_spec = make_spec("byz-dp", rounds=2, clients=None, timeout=60, privacy=privacy)
    with start_federation(
        job_spec, members=("alpha", "mallory"), online=("alpha", "mallory")
    ) as fed:
        names = list(fed.manifest)
        big = {k: np.full(v.shape, 20.0, np.float32) for k, v in fed.base.items()}
        norm = np.linalg.norm(flat(big, names))
        assert norm > 20
        refused = fed.upload(tensors.encode(big, {}), member="mallory")
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "invalid_update"
        assert f"update norm {norm:.6g} exceeds" in refused.json()["detail"]
        scale = 0.4 / np.linalg.norm(flat(fed.delta, names))
        clipped = {k: (v * scale).astype(np.float32) for k, v in fed.delta.items()}
        accepted = fed.upload(tensors.encode(clipped, {}), member="alpha")
        assert accepted.status_code == 200, accepted.text
        assert fed.job()["current"]["reported"] in (1, None)
