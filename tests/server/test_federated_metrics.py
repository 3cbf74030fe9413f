"""Federated evaluation over HTTP: members' metric states are checked, summed, then computed.

A real coordinator process; two members upload their round-1 updates, then
report their validation split's metric states. A report whose states cannot
be the counts of its examples is refused with the reason; the round's
``federated_auroc``/``federated_f1`` are those of the summed states (the
pooled data), and nothing a member reports lands on a coordinator key.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

from fedaas.train.metrics import MetricStates, compute_metrics, merge_states
from fixtures.federation import StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow
NAMES = ("auroc", "f1")


def _states(seed: int, n: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    y = torch.from_numpy((rng.random(n) < 0.3 + 0.4 * seed).astype(np.int64))
    logit = torch.from_numpy((2 * y.numpy() - 1) * 1.0 + rng.normal(size=n)).float()
    states = MetricStates("binary", 2, (*NAMES, "accuracy"), torch.device("cpu"))
    states.update(logit, y, torch.tensor(0.5 * n))
    return states.states()


def _report(states: dict[str, Any], n: int, **extra: Any) -> dict[str, Any]:
    return {"num_examples": n, "loss": 0.5, "accuracy": 0.5, "states": states, **extra}


def test_members_states_are_summed_and_bad_ones_refused(start_federation: StartFederation) -> None:
    spec = make_spec(
        "fedmetrics", clients=2, min_clients=2, classes=2,
        train={"task": "binary", "lr": 0.1}, evaluation={"validation_split": 0.2, "metrics": list(NAMES)},
    )  # fmt: skip
    with start_federation(spec, members=("alpha", "beta"), online=("alpha", "beta")) as fed:
        for name in ("alpha", "beta"):
            body = fed.good_body(metrics='{"auroc": 0.0, "loss": 99.0}')
            assert fed.upload(body, member=name).status_code == 200
        for name in ("alpha", "beta"):  # the round closed: each is asked to evaluate
            for _ in range(40):
                task = fed.request("GET", "/v1/tasks/next", fed.tokens[name], params={"timeout": 5})
                if task.status_code == 200 and task.json()["stage"] == "evaluate":
                    break
            assert task.json()["stage"] == "evaluate", task.text
        path = f"/v1/jobs/{fed.job_id}/rounds/1/evaluation"
        alpha, beta = _states(0, 40), _states(1, 25)
        inflated = {**alpha, "stats": [v * 100 for v in alpha["stats"]]}
        refused = fed.request("POST", path, fed.tokens["alpha"], json=_report(inflated, 40))
        assert refused.status_code == 400 and "whole numbers in 0..40" in refused.text
        missing = fed.request("POST", path, fed.tokens["alpha"], json=_report({}, 40))
        assert missing.status_code == 400 and "metric states must be" in missing.text
        ok = fed.request("POST", path, fed.tokens["alpha"], json=_report(alpha, 40))
        assert ok.status_code == 200, ok.text
        own = {"f1": 0.0, "auroc": 0.0, "federated_f1": 0.0}
        ok = fed.request("POST", path, fed.tokens["beta"], json=_report(beta, 25, metrics=own))
        assert ok.status_code == 200, ok.text
        for _ in range(100):
            rounds = fed.job()["rounds"]
            if rounds and "federated_auroc" in rounds[0]:
                break
            time.sleep(0.1)
    record = rounds[0]
    pooled = compute_metrics(merge_states([(1.0, alpha), (1.0, beta)]), "binary", 2, NAMES)
    assert record["federated_auroc"] == pytest.approx(pooled["auroc"])
    assert record["federated_f1"] == pytest.approx(pooled["f1"])
    assert record["auroc"] == record["federated_auroc"] and record["f1"] == record["federated_f1"]
    assert record["federated_examples"] == 65
    # what members said about themselves stays in their namespace
    assert record["members.auroc"] == 0.0 and record["members.loss"] == 99.0
    assert record["members.eval.f1"] == 0.0 and record["members.eval.federated_f1"] == 0.0
