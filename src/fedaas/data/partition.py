"""Non-IID partitions of a labelled dataset across federation members.

:func:`dirichlet_per_class` is the per-class Dirichlet split of NIID-Bench (Li
et al., ICDE 2022) with a deterministic minimum-size repair, so that it works
for any member count (a 100-member split of the 1437 digits training examples
never passes the plain retry rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class _Draw:
    """One per-class Dirichlet draw: each class's shuffled indices and its cut points."""

    pieces: list[list[np.ndarray]]  # pieces[member][class]: indices of that class
    counts: np.ndarray  # (members, classes) int64


def _draw(
    labels: np.ndarray, classes: np.ndarray, clients: int, alpha: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """``(shuffled indices per class, cut points per class, counts)`` of one draw.

    The random stream (one permutation, then one Dirichlet vector, per class in
    label order) is the one NIID-Bench's retry loop consumes, so an accepted
    draw is the same split this module gave before the repair existed.
    """
    perms, cuts = [], []
    counts = np.zeros((clients, classes.size), dtype=np.int64)
    for k, c in enumerate(classes):
        idx = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(clients, alpha))
        cut = (np.cumsum(shares)[:-1] * idx.size).astype(np.int64)
        perms.append(idx)
        cuts.append(cut)
        counts[:, k] = np.diff(np.concatenate(([0], cut, [idx.size])))
    return perms, cuts, counts


def _pieces(perms: list[np.ndarray], cuts: list[np.ndarray], clients: int) -> _Draw:
    pieces: list[list[np.ndarray]] = [[] for _ in range(clients)]
    counts = np.zeros((clients, len(perms)), dtype=np.int64)
    for k, (idx, cut) in enumerate(zip(perms, cuts, strict=True)):
        for j, piece in enumerate(np.split(idx, cut)):
            pieces[j].append(piece)
            counts[j, k] = piece.size
    return _Draw(pieces, counts)


def _repair(draw: _Draw, min_size: int) -> None:
    """Top up every member below ``min_size`` from the largest members, in place.

    Members below the minimum are served in index order. Each takes from the
    currently largest member (lowest index on ties) a run of examples of one
    class: the class with the highest combined share in the receiver's and the
    donor's label mix (the donor's majority class for an empty receiver). That
    is the move that changes both members' class proportions least: the
    receiver stays concentrated on the classes it already has, and the donor
    loses from its most common class. A run is as long as the receiver still
    needs, the donor holds of that class, and the donor can give without
    falling to the minimum itself; the examples moved are the last ones of the
    donor's (already shuffled) piece of that class. Deterministic: no
    randomness beyond the draw. Terminates because the total is at least
    ``members * min_size``, so while a member is short the largest one has
    more than the minimum.
    """
    counts = draw.counts
    sizes = counts.sum(axis=1)
    for r in np.flatnonzero(sizes < min_size):
        while sizes[r] < min_size:
            d = int(np.argmax(sizes))
            score = counts[d] / sizes[d]
            if sizes[r] > 0:
                score = score + counts[r] / sizes[r]
            score = np.where(counts[d] > 0, score, -1.0)
            c = int(np.argmax(score))
            k = int(min(min_size - sizes[r], counts[d, c], sizes[d] - min_size))
            piece = draw.pieces[d][c]
            draw.pieces[r][c] = np.concatenate((draw.pieces[r][c], piece[piece.size - k :]))
            draw.pieces[d][c] = piece[: piece.size - k]
            counts[d, c] -= k
            counts[r, c] += k
            sizes[d] -= k
            sizes[r] += k


def dirichlet_per_class(
    labels: np.ndarray,
    clients: int,
    alpha: float,
    seed: int,
    min_size: int = 10,
    max_tries: int = 1000,
) -> list[np.ndarray]:
    """Split example indices across ``clients`` by a per-class Dirichlet draw.

    For each class c, draw ``p_c ~ Dir_N(alpha)`` and give client j the share
    ``p_{c,j}`` of class c's examples: the common code variant used by
    NIID-Bench (Li et al., ICDE 2022). Smaller ``alpha`` means more skew.
    ``min_size`` is lowered to half an equal share when even an equal split
    could not reach it.

    Minimum size, for any member count: as in NIID-Bench the whole draw is
    repeated (up to ``max_tries`` times, counting sizes only, so the retries
    are cheap) and the first draw where every member holds at least
    ``min_size`` examples is returned unchanged. With many members that never
    happens (each of N members needs its Dirichlet shares to add up to
    ``min_size / n``). Then the draw with the smallest total shortfall (the
    first on ties) is repaired: members below the minimum are topped up from
    the largest members, moving examples of the class that keeps both sides'
    label proportions closest to what they were (see :func:`_repair`).
    The repair is deterministic, so the split is a function of
    ``(labels, clients, alpha, seed, min_size, max_tries)``; it only adds to
    the members that were short, so the rest of the split keeps its alpha skew.

    Returns one sorted index array per client; every index appears once.
    """
    if clients < 1:
        raise ValueError("clients must be at least 1")
    if not alpha > 0 or not np.isfinite(alpha):
        raise ValueError("alpha must be positive")
    if min_size < 0:
        raise ValueError("min_size must be at least 0")
    if max_tries < 1:
        raise ValueError("max_tries must be at least 1")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError("labels must be one-dimensional")
    n = labels.shape[0]
    if n < clients:
        raise ValueError(f"cannot split {n} examples across {clients} clients")
    if min_size > n // clients:  # unreachable: settle for half an equal share
        min_size = max(1, n // (2 * clients))
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    best: tuple[int, list[np.ndarray], list[np.ndarray]] | None = None
    for _ in range(max_tries):
        perms, cuts, counts = _draw(labels, classes, clients, alpha, rng)
        short = int(np.maximum(min_size - counts.sum(axis=1), 0).sum())
        if best is None or short < best[0]:
            best = (short, perms, cuts)
        if short == 0:
            break
    assert best is not None
    draw = _pieces(best[1], best[2], clients)
    if best[0] > 0:
        _repair(draw, min_size)
    return [np.sort(np.concatenate(p)) for p in draw.pieces]
