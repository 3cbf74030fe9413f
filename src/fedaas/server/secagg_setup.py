"""What a secure round is set up with, and what comes out of it.

Members' long-term identity keys (registered once, relayed with round keys),
the round's fixed-point encoding (:class:`fedaas.algorithms.secagg.FixedPoint`:
its clip and weight cap from the spec and the round's privacy), the size of
each member's noise share under ``placement = "distributed"`` (any
``threshold - 1`` shares other than the target's carry the full noise), and
the mean delta from the recovered sum, with central DP noise on the sum.
"""

from __future__ import annotations

import math
import threading
import weakref
from typing import Any

import numpy as np
from sqlalchemy import update

from fedaas.algorithms.secagg import (
    FixedPoint,
    distributed_noise_std,
)
from fedaas.protocol import ClientPrivacy, PrivacyInstructions
from fedaas.server.db import Member, Store
from fedaas.spec import JobSpec
from fedaas.tensors import Manifest

DEFAULT_CLIP = 10.0
"""L2 clip of an update before encoding when the spec sets none (and no client-level DP)."""
DEFAULT_MAX_WEIGHT = 10_000
"""Cap of a member's FedAvg weight (examples) without ``max_examples_per_member``."""
NOISE_TAIL = 10.0
"""A noised update's norm stays below ``clip + std (sqrt(d) + 10)`` but with prob. ~2e-22."""


_known: weakref.WeakKeyDictionary[Store, dict[int, bytes]] = weakref.WeakKeyDictionary()
_changes: weakref.WeakKeyDictionary[Store, int] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def register_identity(store: Store, member_id: int, key: bytes | None) -> None:
    """Store (or with ``None`` clear) a member's long-term Ed25519 public key."""
    value = None if key is None else key.hex()
    with store.session() as s:
        s.execute(update(Member).where(Member.id == member_id).values(signing_key=value))
    with _lock:  # the keys read before this commit are stale now
        _known.pop(store, None)
        _changes[store] = _changes.get(store, 0) + 1


def identities(store: Store) -> dict[int, bytes]:
    """Every member's registered long-term key, by member id.

    Read from the database once and kept until :func:`register_identity`
    (their only writer) changes one: every secure round asks, and reading
    every member costs a millisecond at ten members and grows with them.
    """
    with _lock:
        known, seen = _known.get(store), _changes.get(store, 0)
    if known is None:
        known = {m.id: bytes.fromhex(m.signing_key) for m in store.members() if m.signing_key}
        with _lock:
            if _changes.get(store, 0) == seen:  # no registration raced this read
                _known[store] = known
    return dict(known)


def encoding_for(
    spec: JobSpec, privacy: PrivacyInstructions, sampled: int, size: int
) -> FixedPoint:
    """The round's fixed-point encoding: the clip (DP: clip norm plus the member's own noise,
    Gaussian tail), the weight cap (1 under DP, where every update weighs 1) and ``sampled``."""
    if isinstance(privacy, ClientPrivacy):
        tail = privacy.noise_std * (math.sqrt(size) + NOISE_TAIL)
        clip, max_weight = privacy.clip_norm * (1 + 1e-5) + 1e-6 + tail, 1.0
    else:
        clip = spec.secure_aggregation.clip_norm or DEFAULT_CLIP
        max_weight = float(spec.federation.max_examples_per_member or DEFAULT_MAX_WEIGHT)
        if privacy.kind == "record":  # DP-SGD members send no example count: a plain mean
            max_weight = 1.0
    return FixedPoint.for_round(sampled, clip, max_weight)


def distributed_share(privacy: PrivacyInstructions, noise_multiplier: float, threshold: int) -> Any:
    """Under ``placement = "distributed"``: each member's noise share, sized so that any
    ``threshold - 1`` shares other than the target's carry the full noise."""
    if not isinstance(privacy, ClientPrivacy) or privacy.placement != "distributed":
        return privacy
    std = distributed_noise_std(noise_multiplier * privacy.clip_norm, threshold)
    return privacy.model_copy(update={"noise_std": std})


def unmasked_mean(
    weighted_sum: np.ndarray,
    total_weight: float,
    manifest: Manifest,
    noise: dict[str, np.ndarray] | None,
    denominator: float | None,
) -> dict[str, np.ndarray]:
    """The round's mean delta from the recovered sum: ``(sum [+ noise]) / denominator``.

    ``denominator``: the DP one (``q*N``), else the recovered total weight
    (FedAvg's example-weighted mean; the weights never travel alone).
    """
    divide = 1.0 / (denominator or total_weight or 1.0)
    delta: dict[str, np.ndarray] = {}
    offset = 0
    for name in sorted(manifest):
        shape = manifest[name]
        count = math.prod(shape)
        block = weighted_sum[offset : offset + count].copy()
        if noise is not None:  # central DP: noise on the recovered sum
            block += noise[name].reshape(-1)
        delta[name] = (block * divide).astype(np.float32).reshape(shape)
        offset += count
    return delta
