"""Members that miss training deadlines are sampled less.

A member that polls for tasks but never uploads would be sampled every
round and make each one wait the full ``round_timeout``. After the round's
training stage, :func:`note_misses` counts a miss for every sampled member
that neither reported nor declined; after its k-th miss in a row it sits out
``min(2^(k-1), MAX_BENCHED_ROUNDS)`` rounds (:func:`benched`). Reporting
clears its record. The round loop samples among the others and takes benched
members back early only when the quorum needs them
(:meth:`fedaas.server.runner.JobRunner._await_members`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from fedaas.server.db import Member
from fedaas.server.rounds import ActiveJob, RoundState

log = logging.getLogger("fedaas.coordinator")

MAX_BENCHED_ROUNDS = 16


def note_misses(job: ActiveJob, state: RoundState) -> None:
    """After the training stage: bench the sampled members that missed it, clear the others."""
    for member in state.sampled:
        if member in state.reported:
            job.missed.pop(member, None)
            job.benched_until.pop(member, None)
        elif member not in job.declined:
            misses = job.missed[member] = job.missed.get(member, 0) + 1
            rest = min(2 ** (misses - 1), MAX_BENCHED_ROUNDS)
            job.benched_until[member] = state.number + 1 + rest
            log.warning(
                "member %s missed the deadline of round %d of job %s: it sits out %d round(s)",
                state.sampled[member],
                state.number,
                job.id,
                rest,
            )


def benched(job: ActiveJob, number: int) -> set[int]:
    """Members that may not be sampled in round ``number`` (unless the quorum needs them)."""
    return {member for member, until in job.benched_until.items() if until > number}


def candidates(
    members: Iterable[Member], job: ActiveJob, number: int
) -> tuple[dict[int, str], dict[int, str]]:
    """``(everyone, eligible)`` for round ``number``, as member id -> name.

    Everyone: enrolled, not revoked, not declined this job; eligible: of
    those, the ones not benched (:func:`benched`), or everyone when fewer
    than ``min_clients`` would be left (the quorum needs the benched ones).
    """
    everyone = {m.id: m.name for m in members if m.revoked_at is None and m.id not in job.declined}
    resting = benched(job, number)
    eligible = {m: name for m, name in everyone.items() if m not in resting}
    if len(eligible) < job.spec.federation.min_clients:
        return everyone, everyone
    return everyone, eligible
