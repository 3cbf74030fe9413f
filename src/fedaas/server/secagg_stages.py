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
When stages 1 and 2 ran during the last round
(:func:`fedaas.server.secagg_ahead.take_ahead`), the round opens at stage 3;
closing stage 3 hands out the next round's roster (:func:`next_roster`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from fedaas.algorithms.secagg import KeyAdvertisement, SecAggError
from fedaas.protocol_secagg import (
    RosterEntry,
    SecureRoster,
    SecureUnmaskRequest,
    WireShare,
)
from fedaas.server.errors import JobFailed

if TYPE_CHECKING:
    from fedaas.server.secagg import SecureRound

log = logging.getLogger("fedaas.coordinator")

GRACE_MIN_S = 0.25
"""Least straggler grace once a stage has its quorum."""
GRACE_FACTOR = 0.5
"""Straggler grace as a share of the time the stage took to reach its quorum."""
STAGES = ("advertise", "share_keys", "masked_input", "unmask")
INBOUND_IN_TASK_BYTES = 64 * 1024
"""Most bytes of shares ahead a train task carries (about 280 members' shares); more are
fetched with stage 2's request, which then answers at once. Keeps a task (in the body of its
bundle) a small part of what a member downloads per round."""


async def drive(
    rnd: SecureRound, deadline: float, declined: Iterable[int], min_clients: int
) -> None:
    """Run the four stages; :class:`JobFailed` with the reason if the sum can't be recovered."""
    expected = set(rnd.names) - set(declined)
    for stage in STAGES:
        if rnd.closed[stage].is_set():  # stages 1 and 2 ran during the last round
            expected = {rnd.ids[name] for name in rnd.inbound}
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
    rnd.roster = _roster(rnd, rnd.context.round, rnd.context.attempt, ads)
    rnd.stage = "share_keys"
    return {rnd.ids[ad.member_id] for ad in ads}


def close_share_keys(rnd: SecureRound) -> set[int]:
    """Close stage 2: each member's inbound shares; the members that sent theirs."""
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


def next_roster(rnd: SecureRound) -> SecureRoster | None:
    """Stage 1's answer for the next round, ahead: the keys that came with the masked inputs
    (``None`` on the last round, or with fewer than two of them)."""
    ahead = rnd.next_context
    keys = {rnd.names[m]: k for m, k in rnd.next_keys.items()}
    if ahead is None or len(keys) < 2:
        return None
    ads = [KeyAdvertisement(n, k.c_public, k.s_public, k.signature) for n, k in keys.items()]
    return _roster(rnd, ahead.round, ahead.attempt, ads)


def _roster(
    rnd: SecureRound, number: int, attempt: int, ads: Iterable[KeyAdvertisement]
) -> SecureRoster:
    return SecureRoster(
        job_id=rnd.context.job_id,
        round=number,
        attempt=attempt,
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


async def _close(rnd: SecureRound, stage: str) -> set[int]:
    """Close ``stage``; the members expected at the next one."""
    if stage == "advertise":
        return close_advertise(rnd)
    if stage == "share_keys":
        return close_share_keys(rnd)
    if stage == "masked_input":
        with rnd.lock:
            request = rnd.server.close_masked_input()
            rnd.stage = "unmask"
        rnd.next_roster = next_roster(rnd)
        rnd.request = SecureUnmaskRequest(
            survivors=list(request.survivors),
            dropped=list(request.dropped),
            next_roster=rnd.next_roster,
        )
        rnd.survivors = sorted(rnd.ids[name] for name in request.survivors)
        return set(rnd.survivors)
    total = await asyncio.to_thread(rnd.server.finish)
    for holder, owner, kind in rnd.server.wrong_shares:
        log.warning(
            "round %d: %s sent a wrong share of %s's %s; it was left out (the sum is exact)",
            rnd.context.round,
            holder,
            owner,
            "mask seed" if kind == "seed" else "mask key",
        )
    rnd.weighted_sum, rnd.total_weight = rnd.encoding.decode(total)
    rnd.stage = "done"
    return set()
