"""Seeds of a member's randomness: from the job seed and the member's identity, nothing else.

A member's local shuffle (and anything else it draws for training) must not
depend on where its data lies or on when it arrived: the same job and the
same members then give the same model, in the service and in simulation
(``fedaas simulate``), run after run. :func:`identity_stream` turns an
identity (a member's enrolled name in simulation, a digest of its token in
the service agent) into a stable 64-bit integer with SHA-256 (not ``hash()``,
which Python salts per process); :func:`member_seed` is the seed sequence
for one member's round, as ``numpy.random.default_rng`` takes it.

These seeds are for training randomness only; privacy noise and masks come
from :mod:`fedaas.algorithms.noise` (a cryptographic source unless a run is
explicitly reproducible).
"""

from __future__ import annotations

import hashlib


def identity_stream(identity: str) -> int:
    """A stable 64-bit integer for ``identity`` (the first 8 bytes of its SHA-256)."""
    if not identity:
        raise ValueError("a member identity must not be empty")
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big")


def member_seed(job_seed: int, number: int, identity: str) -> list[int]:
    """The seed sequence of ``identity``'s training in round ``number`` of a job."""
    return [int(job_seed), int(number), identity_stream(identity)]
