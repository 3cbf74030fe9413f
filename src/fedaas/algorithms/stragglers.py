"""Stragglers in a simulated round: which sampled members fall behind, and how far they get.

FedProx (Li et al., MLSys 2020, arXiv:1812.06127, section 5.2) models
systems heterogeneity this way: in every round a share of the sampled
devices are stragglers that cannot finish the E local epochs. FedAvg drops
them (they send nothing); FedProx keeps their partial work, each straggler
running a uniformly random number of epochs below E. As in the authors'
code (``np.random.randint(low=1, high=E)`` in ``flearn/trainers/fedprox.py``)
that number is uniform on ``1 .. E-1``, and ``n - round(n * (1 - share))``
of the ``n`` sampled devices straggle (so 9 of 10 at a share of 0.9).

Who straggles is redrawn every round, deterministically from the job seed,
the round number and each member's identity, never from the order the names
come in: every sampled member gets a key from its own stream (the job seed,
the round, :func:`fedaas.algorithms.seeds.identity_stream` of its name, and
a tag that separates this stream from the member's training shuffle); the
members with the smallest keys straggle, and each draws its epoch count from
the same stream. Pure: no I/O, no global random state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedaas.algorithms.seeds import identity_stream

_TAG = 0x5354_5241_4747  # "STRAGG": keeps this stream apart from the training shuffle's


def straggler_count(sampled: int, share: float) -> int:
    """How many of ``sampled`` members straggle at ``share``: ``n - round(n * (1 - share))``."""
    if sampled < 0:
        raise ValueError("sampled must be at least 0")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"straggler share must be in [0, 1], got {share}")
    return sampled - round(sampled * (1.0 - share))


def straggler_epochs(
    sampled: Sequence[str],
    *,
    share: float,
    epochs: int,
    drop: bool,
    seed: int,
    number: int,
) -> dict[str, int]:
    """Local epochs of each sampled member in round ``number``: ``name -> epochs``.

    Members that keep up get ``epochs`` (the spec's E). Stragglers get 0 when
    ``drop`` (FedAvg's treatment: the member sends nothing this round) and
    otherwise a uniform draw from ``1 .. E-1`` (FedProx's partial work; with
    E = 1 there is nothing smaller to do, so a straggler runs its one epoch).
    Every name in ``sampled`` is a key of the result; names must be distinct.
    The answer depends on ``(seed, number, set of names)`` only.
    """
    names = list(sampled)
    if len(set(names)) != len(names):
        raise ValueError("sampled member names must be distinct")
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    if number < 0 or seed < 0:
        raise ValueError("seed and round number must be non-negative")
    count = straggler_count(len(names), share)
    result = dict.fromkeys(names, epochs)
    if count == 0:
        return result
    keys: dict[str, float] = {}
    partial: dict[str, int] = {}
    for name in names:
        rng = np.random.default_rng([int(seed), int(number), identity_stream(name), _TAG])
        keys[name] = float(rng.random())
        partial[name] = int(rng.integers(1, epochs)) if epochs > 1 else 1
    # ties (probability ~2^-53) fall back to the name, so the order of `sampled` never matters
    for name in sorted(names, key=lambda n: (keys[n], n))[:count]:
        result[name] = 0 if drop else partial[name]
    return result
