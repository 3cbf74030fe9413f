"""A member's metrics never replace the coordinator's, and cannot end a job for everyone.

Against a real coordinator: ``mallory`` uploads a valid update whose metrics
claim accuracy 0.99, epsilon 0.5, round 999, and (under record-level DP) a
next-round epsilon far over the budget. The round record keeps the
coordinator's own values; mallory's land under ``members.``; and the
record-level job goes on without mallory instead of stopping.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedaas import tensors
from fedaas.data.source import write_npz
from fedaas.server.member_reports import member_means
from fixtures.federation import StartFederation
from fixtures.specs import CLASSES, FEATURES, make_spec

pytestmark = pytest.mark.slow

LIES = {"accuracy": 0.99, "loss": 0.0001, "epsilon": 0.5, "round": 999.0, "clients": 1000.0}


def test_member_metrics_are_namespaced_and_never_replace_the_coordinators(
    start_federation: StartFederation, tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    holdout = tmp_path / "holdout.npz"
    write_npz(
        str(holdout),
        rng.normal(size=(200, FEATURES)).astype(np.float32),
        rng.integers(0, CLASSES, 200),
    )
    spec = make_spec("liar", rounds=3, clients=2, evaluation={"holdout": str(holdout)})
    with start_federation(spec, members=("alpha", "mallory"), online=("alpha", "mallory")) as fed:
        honest = fed.good_body(metrics=json.dumps({"train_loss": 1.0}))
        assert fed.upload(honest, member="alpha").status_code == 200
        lying = fed.good_body(metrics=json.dumps(LIES | {"train_loss": 3.0}))
        assert fed.upload(lying, member="mallory").status_code == 200
        job = fed.job(after_round=0, timeout=30)
        assert job["status"] == "running" and job["round"] == 1, job
        (record,) = job["rounds"]
        assert record["round"] == 1 and record["clients"] == 2
        assert record["accuracy"] is not None and record["accuracy"] < 0.6  # random labels
        assert record["loss"] > 0.5
        assert "epsilon" not in record or record["epsilon"] is None
        assert record["members.accuracy"] == pytest.approx(0.99)
        assert record["members.round"] == pytest.approx(999.0)
        assert record["members.train_loss"] == pytest.approx(2.0)  # 10 examples each
        assert not {"train_loss", "round.", "members.members."} & set(record)


def test_one_members_huge_record_epsilon_declines_that_member_only(
    start_federation: StartFederation,
) -> None:
    privacy = {
        "unit": "record",
        "noise_multiplier": 1.0,
        "clip_norm": 1.0,
        "epsilon_budget": 5.0,
        "placement": "local",
    }
    spec = make_spec("eps-liar", rounds=3, clients=None, timeout=60, privacy=privacy)
    members = ("alpha", "beta", "mallory")
    with start_federation(spec, members=members, online=members) as fed:
        honest = {"record_epsilon": 1.0, "record_epsilon_next": 2.0}
        for name in ("alpha", "beta"):
            body = tensors.encode(fed.delta, {"metrics": json.dumps(honest)})
            assert fed.upload(body, member=name).status_code == 200
        huge = {"record_epsilon": 1.0, "record_epsilon_next": 1e300}
        body = tensors.encode(fed.delta, {"metrics": json.dumps(huge)})
        assert fed.upload(body, member="mallory").status_code == 200
        job = fed.job(after_round=0, timeout=30)
        assert job["status"] == "running", job  # before: "completed: privacy budget reached"
        assert job["rounds"][0]["record_epsilon_next"] == pytest.approx(2.0)
        assert set(job["declined"]) == {"mallory"}
        assert "exceeds the job's budget" in job["declined"]["mallory"]
        task = fed.request("GET", "/v1/tasks/next", fed.tokens["alpha"], params={"timeout": 20})
        assert task.status_code == 200 and task.json()["round"] == 2
        none = fed.request("GET", "/v1/tasks/next", fed.tokens["mallory"], params={"timeout": 0})
        assert none.status_code == 204


def test_a_members_metric_near_the_float_maximum_keeps_the_mean_finite() -> None:
    """``sum(w * value) / W`` overflowed on two members' 1.7e308 (published as null);
    a convex combination of finite values stays finite."""
    big = 1.7e308
    means = member_means([(10, {"m": big}), (10, {"m": big}), (10, {"other": 2.0})])
    assert math.isfinite(means["members.m"]) and means["members.m"] == pytest.approx(big)
    assert means["members.other"] == 2.0
    assert member_means([(5, {"m": 1.0}), (15, {"m": 3.0})]) == {"members.m": 2.5}
