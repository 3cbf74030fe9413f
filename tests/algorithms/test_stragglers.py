"""Straggler selection (FedProx, Li et al. 2020): who falls behind, how many epochs, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedaas.algorithms.stragglers import straggler_count, straggler_epochs

NAMES = [f"member-{i}" for i in range(10)]


@pytest.mark.parametrize(
    ("n", "share", "count"),
    [
        (10, 0.0, 0),
        (10, 0.5, 5),
        (10, 0.9, 9),
        (10, 1.0, 10),
        (30, 0.9, 27),
        (3, 0.5, 1),
        (0, 0.9, 0),
    ],
)
def test_count_follows_the_authors_rule(n: int, share: float, count: int) -> None:
    assert straggler_count(n, share) == count


def test_partial_work_is_uniform_below_e() -> None:
    seen = []
    for number in range(400):
        epochs = straggler_epochs(NAMES, share=0.9, epochs=20, drop=False, seed=3, number=number)
        assert sorted(epochs.values()).count(20) >= 1  # one of ten keeps up (1 = 10 - round(9))
        seen += [e for e in epochs.values() if e < 20]
    values = np.bincount(seen, minlength=20)
    assert values[0] == 0 and min(seen) == 1 and max(seen) == 19  # 1 .. E-1
    expected = len(seen) / 19
    assert np.abs(values[1:] - expected).max() < 0.3 * expected  # roughly uniform


def test_drop_gives_zero_and_the_same_members_straggle() -> None:
    kept = straggler_epochs(NAMES, share=0.5, epochs=20, drop=False, seed=1, number=4)
    dropped = straggler_epochs(NAMES, share=0.5, epochs=20, drop=True, seed=1, number=4)
    assert sum(v == 0 for v in dropped.values()) == 5
    assert {k for k, v in dropped.items() if v == 0} == {k for k, v in kept.items() if v < 20}


def test_no_share_means_everyone_does_all_epochs() -> None:
    epochs = straggler_epochs(NAMES, share=0.0, epochs=20, drop=True, seed=1, number=1)
    assert epochs == dict.fromkeys(NAMES, 20)


def test_one_epoch_cannot_be_split() -> None:
    epochs = straggler_epochs(NAMES, share=0.9, epochs=1, drop=False, seed=1, number=1)
    assert set(epochs.values()) == {1}


def test_redrawn_every_round_and_depends_on_the_seed() -> None:
    def stragglers(seed: int, number: int) -> frozenset[str]:
        e = straggler_epochs(NAMES, share=0.5, epochs=5, drop=True, seed=seed, number=number)
        return frozenset(k for k, v in e.items() if v == 0)

    by_round = {stragglers(0, r) for r in range(20)}
    assert len(by_round) > 10
    assert stragglers(0, 1) == stragglers(0, 1)
    assert any(stragglers(0, r) != stragglers(1, r) for r in range(5))
    # every member straggles about half the time
    counts = {n: sum(n in stragglers(0, r) for r in range(200)) for n in NAMES}
    assert all(60 < c < 140 for c in counts.values())


@settings(max_examples=50, deadline=None)
@given(
    names=st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=40, unique=True),
    share=st.floats(0.0, 1.0),
    epochs=st.integers(1, 50),
    drop=st.booleans(),
    seed=st.integers(0, 2**63 - 1),
    number=st.integers(0, 10_000),
    order=st.randoms(use_true_random=False),
)
def test_depends_on_the_set_of_names_not_their_order(
    names: list[str], share: float, epochs: int, drop: bool, seed: int, number: int, order
) -> None:
    result = straggler_epochs(
        names, share=share, epochs=epochs, drop=drop, seed=seed, number=number
    )
    shuffled = list(names)
    order.shuffle(shuffled)
    again = straggler_epochs(
        shuffled, share=share, epochs=epochs, drop=drop, seed=seed, number=number
    )
    assert result == again
    assert set(result) == set(names)
    behind = [v for v in result.values() if v != epochs]
    if drop or epochs > 1:  # with E = 1 a kept straggler's one epoch is all the work there is
        assert len(behind) == straggler_count(len(names), share)
    assert all((v == 0) if drop else (1 <= v < epochs) for v in behind)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"share": 1.5}, r"straggler share must be in \[0, 1\]"),
        ({"share": -0.1}, r"straggler share must be in \[0, 1\]"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"seed": -1}, "seed and round number must be non-negative"),
        ({"sampled": ["a", "a"]}, "names must be distinct"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"sampled": NAMES, "share": 0.5, "epochs": 5, "drop": False, "seed": 0, "number": 1}
    with pytest.raises(ValueError, match=message):
        straggler_epochs(**(args | kwargs))
