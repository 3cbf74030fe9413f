"""When the coordinator closes each stage of a secure round, and what it hands on.

:func:`drive` runs the four stages of a :class:`~fedaas.server.secagg.SecureRound`
(advertise keys, share keys, masked input, unmask; Bonawitz et al. CCS 2017,
Bell et al. CCS 2020). A stage closes as soon as every member still expected
has answered or, once a quorum is in (the reconstruction threshold;
``min_clients`` too for the masked inputs; for the unmask answers, enough
shares of every secret the sum needs), after a straggler grace of
:data:`GRACE_FACTOR` times what the quorum took (at least
:data:`GRACE_MIN_S`); at the round deadline with whoever is in. It never
waits for every reply, and a stage below its quorum fails the round with the
reason, releasing nothing. Closing a stage wakes the members' held requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fedaas.algorithms.secagg import SecAggError
from fedaas.protocol_secagg import (
    RosterEntry,
    SecureKeys,
    SecureRoster,
    SecureUnmaskRequest,
    WireShare,
)
from fedaas.server.errors import InvalidRequest, JobFailed

if TYPE_CHECKING:
    from fedaas.server.secagg import SecureRound

log = logging.getLogger("fedaas.coordinator")

GRACE_MIN_S = 0.25
"""Least straggler grace once a stage has its quorum."""
GRACE_FACTOR = 0.5
"""Straggler grace as a share of the time the stage took to reach its quorum."""
STAGES = ("advertise", "share_keys", "masked_input", "unmask")
ROSTER_IN_TASK_BYTES = 8192
"""Largest roster a train task carries (the task rides in a response header); a larger one
is fetched with stage 1's request, which then answers at once."""


def take_keys_ahead(rnd: SecureRound, keys: dict[int, SecureKeys]) -> None:
    """Stage 1 from keys sent with the last round's unmask answers (checked as any keys):
    closed at once when every sampled member sent them."""
    for member_id, sent in keys.items():
        if member_id in rnd.names:
            try:
                rnd.take_keys(member_id, sent, counted=True)
            except InvalidRequest:
                continue
            rnd.ahead.add(member_id)
    if rnd.ahead and rnd.ahead == set(rnd.names):  # else members confirm them in stage 1,
        rnd.answered["advertise"] |= rnd.ahead  # so the stage's straggler grace is as ever
        close_advertise(rnd)
        rnd.closed["advertise"].set()
        size = len(rnd.roster.model_dump_json()) if rnd.roster is not None else 0
        rnd.roster_in_task = size <= ROSTER_IN_TASK_BYTES


async def drive(
    rnd: SecureRound, deadline: float, declined: Iterable[int], min_clients: int
) -> None:
    """Run the four stages; :class:`JobFailed` with the reason if the sum can't be recovered."""
    expected = set(rnd.names) - set(declined)
    for stage in STAGES:
        if stage == "advertise" and rnd.stage != "advertise":  # keys came ahead of the round
            expected = {rnd.ids[e.member] for e in rnd.roster.members} if rnd.roster else set()
            continue
        need = max(rnd.threshold, min_clients) if stage == "masked_input" else rnd.threshold
        began = time.monotonic()
        await _quorum(rnd, stage, expected, need, deadline)
        log.debug(
            "round %d: secure stage %s closes with %d of %d after %.3f s",
            rnd.context.round,
            stage,
            len(rnd.answered[stage]),
            len(expected),
            time.monotonic() - began,
        )
        try:
            expected = await _close(rnd, stage)
        except SecAggError as exc:
            rnd.failure = str(exc)
            raise JobFailed(
                f"secure aggregation failed in round {rnd.context.round} at stage {stage}: "
                f"{exc}; nothing was released"
            ) from None
        finally:
            rnd.closed[stage].set()


async def _quorum(
    rnd: SecureRound, stage: str, expected: set[int], need: int, deadline: float
) -> None:
    start, reached = time.monotonic(), None
    while True:
        got = rnd.answered[stage]
        now = time.monotonic()
        if expected <= got or now >= deadline:
            return
        # unmask: a quorum is every needed secret recoverable, not a count of answers
        enough = rnd.server.recoverable() if stage == "unmask" else len(got) >= need
        if enough and reached is None:
            reached = now
        if reached is not None and now >= reached + max(
            GRACE_MIN_S, GRACE_FACTOR * (reached - start)
        ):
            return
        wake = (
            deadline
            if reached is None
            else reached + max(GRACE_MIN_S, GRACE_FACTOR * (reached - start))
        )
        rnd.changed.clear()
        try:
            await asyncio.wait_for(rnd.changed.wait(), timeout=max(0.01, min(wake - now, 1.0)))
        except TimeoutError:
            pass


def close_advertise(rnd: SecureRound) -> set[int]:
    """Close stage 1: the roster of every member whose keys arrived; those members."""
    ads = rnd.server.close_advertise()
    rnd.roster = SecureRoster(
        job_id=rnd.context.job_id,
        round=rnd.context.round,
        attempt=rnd.context.attempt,
        members=[
            RosterEntry(
                member=ad.member_id,
                identity=rnd.identities[ad.member_id],
                c_public=ad.c_public,
                s_public=ad.s_public,
                signature=ad.signature,
            )
            for ad in sorted(ads, key=lambda a: a.member_id)
        ],
    )
    rnd.stage = "share_keys"
    return {rnd.ids[ad.member_id] for ad in ads}


async def _close(rnd: SecureRound, stage: str) -> set[int]:
    """Close ``stage``; the members expected at the next one."""
    if stage == "advertise":
        return close_advertise(rnd)
    if stage == "share_keys":
        inbound = rnd.server.close_share_keys()
        rnd.inbound = {
            name: [
                WireShare(sender=s.sender, recipient=s.recipient, ciphertext=s.ciphertext)
                for s in shares
            ]
            for name, shares in inbound.items()
        }
        rnd.stage = "masked_input"
        return {rnd.ids[name] for name in rnd.inbound}
    if stage == "masked_input":
        with rnd.lock:
            request = rnd.server.close_masked_input()
            rnd.stage = "unmask"
        rnd.request = SecureUnmaskRequest(
            survivors=list(request.survivors),
            dropped=list(request.dropped),
            next_attempt=rnd.next_context.attempt if rnd.next_context is not None else None,
        )
        rnd.survivors = sorted(rnd.ids[name] for name in request.survivors)
        return set(rnd.survivors)
    total = await asyncio.to_thread(rnd.server.finish)
    rnd.weighted_sum, rnd.total_weight = rnd.encoding.decode(total)
    rnd.stage = "done"
    return set()
