"""Server optimizers against the formulas of Reddi et al. 2021, written out directly."""

from __future__ import annotations

import numpy as np
import pytest

from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.spec import SpecError, parse_spec
from fixtures.specs import make_spec

MANIFEST = {"w": (3, 4), "b": (4,)}


def deltas(rounds: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        {k: rng.normal(scale=0.1, size=s).astype(np.float32) for k, s in MANIFEST.items()}
        for _ in range(rounds)
    ]


def reference(
    name: str,
    ds: list[dict[str, np.ndarray]],
    lr: float,
    b1: float = 0.9,
    b2: float = 0.99,
    tau: float = 1e-3,
) -> dict[str, np.ndarray]:
    """The model's total movement after the rounds, straight from REFERENCES.md (float64)."""
    x = {k: np.zeros(s) for k, s in MANIFEST.items()}
    m = {k: np.zeros(s) for k, s in MANIFEST.items()}
    v = {k: np.full(s, tau**2) for k, s in MANIFEST.items()}
    for d in ds:
        for k in MANIFEST:
            D = d[k].astype(np.float64)
            if name == "fedavg":
                x[k] += lr * D
                continue
            if name == "fedavgm":
                m[k] = b1 * m[k] + D
                x[k] += lr * m[k]
                continue
            m[k] = b1 * m[k] + (1 - b1) * D
            if name == "fedadagrad":
                v[k] = v[k] + D**2
            elif name == "fedadam":
                v[k] = b2 * v[k] + (1 - b2) * D**2
            else:
                v[k] = v[k] - (1 - b2) * D**2 * np.sign(v[k] - D**2)
            x[k] += lr * m[k] / (np.sqrt(v[k]) + tau)
    return x


NAMES = ["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"]


@pytest.mark.parametrize("name", NAMES)
def test_steps_follow_the_paper(name: str) -> None:
    lr = 0.5 if name in ("fedavg", "fedavgm") else 0.01
    opt = ServerOptimizer(name, MANIFEST, lr)
    ds = deltas(6)
    moved = {k: np.zeros(s, np.float32) for k, s in MANIFEST.items()}
    for d in ds:
        step = opt.step({k: a.copy() for k, a in d.items()})
        for k in MANIFEST:
            moved[k] += step[k]
    expected = reference(name, ds, lr)
    for k in MANIFEST:
        np.testing.assert_allclose(moved[k], expected[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", NAMES[1:])
def test_a_restored_optimizer_continues_exactly(name: str) -> None:
    ds = deltas(5)
    straight = ServerOptimizer(name, MANIFEST, 0.1)
    for d in ds:
        last = straight.step({k: a.copy() for k, a in d.items()})
    interrupted = ServerOptimizer(name, MANIFEST, 0.1)
    for d in ds[:3]:
        interrupted.step({k: a.copy() for k, a in d.items()})
    resumed = ServerOptimizer.from_state(MANIFEST, *interrupted.state_dict())
    for d in ds[3:]:
        again = resumed.step({k: a.copy() for k, a in d.items()})
    assert resumed.steps == straight.steps == 5
    for k in MANIFEST:
        np.testing.assert_array_equal(again[k], last[k])


def test_state_that_does_not_fit_the_model_is_refused() -> None:
    arrays, meta = ServerOptimizer("fedadam", MANIFEST, 0.1).state_dict()
    with pytest.raises(ValueError, match="m/w"):
        ServerOptimizer.from_state(MANIFEST, {**arrays, "m/w": np.zeros((4, 3))}, meta)
    with pytest.raises(ValueError, match="unreadable"):
        ServerOptimizer.from_state(MANIFEST, arrays, {**meta, "name": "sgd"})


def spec(strategy: dict[str, object]) -> dict[str, object]:
    return make_spec("s", features=2, classes=2, train=None, federation=None, strategy=strategy)


def test_strategy_section_defaults_and_rejects_settings_it_would_ignore() -> None:
    assert parse_spec(spec({"name": "fedadam"})).strategy.lr == 0.01
    assert parse_spec(spec({"name": "fedavgm"})).strategy.lr == 1.0
    assert parse_spec(spec({"name": "fedadam", "server_lr": 0.1})).strategy.lr == 0.1
    with pytest.raises(SpecError, match="strategy 'fedavg' does not use beta1"):
        parse_spec(spec({"name": "fedavg", "beta1": 0.5}))
    with pytest.raises(SpecError, match="does not use tau"):
        parse_spec(spec({"name": "fedavgm", "tau": 0.1}))
    with pytest.raises(SpecError, match="strategy.name"):
        parse_spec(spec({"name": "fedsgd"}))
