"""Stages 1 and 2 of the next secure round, done during this one (pipelined SecAgg).

Bonawitz et al. (CCS 2017) run four stages per round, each a barrier. The
first two only need the members' fresh keys and the roster of them, not the
round's updates, so they can run a round early: members send their next
round's keys with this round's masked upload (checked on arrival:
:func:`check_keys_ahead`), closing stage 3 hands them the next round's roster
(:func:`fedaas.server.secagg_stages.next_roster`), and members send their
encrypted shares for that roster with their unmask answer (checked on
arrival: :func:`check_shares_ahead`). The next round then opens at stage 3
(:func:`take_ahead`), or, unless it samples exactly the members that sent
both, afresh under a new attempt (:class:`AheadUnusable`): shares made for one
roster are never made again for another under the same keys, which members
enforce on their side too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedaas.algorithms.secagg import (
    KeyAdvertisement,
    RoundContext,
    SecAggError,
    verify_advertisement,
)
from fedaas.protocol_secagg import SecureKeys, SecureRoster, ShareKeys
from fedaas.server.errors import InvalidRequest
from fedaas.server.secagg_stages import close_advertise, close_share_keys

if TYPE_CHECKING:
    from fedaas.server.secagg import SecureRound


@dataclass(frozen=True)
class AheadKeys:
    """Stages 1 and 2 of run ``attempt`` of round ``round``, done during the last round:
    members' keys (sent with their masked uploads) and their encrypted shares for the roster of
    those keys (sent with their unmask answers)."""

    round: int
    attempt: int
    keys: dict[int, SecureKeys]
    shares: dict[int, ShareKeys]


def check_keys_ahead(
    identity: bytes | None, name: str, keys: SecureKeys, context: RoundContext | None
) -> None:
    """Keys sent ahead must be signed by the member's registered key for the next round's
    ``context`` (``None``: the job has no next round); else :class:`InvalidRequest`. Their
    points are checked with the rest of stage 1 when that round opens."""
    if context is None:
        raise InvalidRequest("this is the job's last round: no keys ahead", "invalid_keys")
    ad = KeyAdvertisement(name, keys.c_public, keys.s_public, keys.signature)
    try:
        if identity is None:
            raise SecAggError(f"{name} has no registered identity key")
        verify_advertisement(ad, identity, context, points=False)  # points: when used
    except SecAggError as exc:
        raise InvalidRequest(f"refused next round's keys: {exc}", "invalid_keys") from None


def check_shares_ahead(name: str, body: ShareKeys, roster: SecureRoster | None) -> None:
    """Shares for the next round: from member ``name``, one to each other member of the next
    ``roster``, else :class:`InvalidRequest` (checked in full, as any shares, when that round
    opens)."""
    names = {e.member for e in roster.members} if roster is not None else set()
    if name not in names:
        raise InvalidRequest("no next round's roster names this member", "invalid_shares")
    recipients = [s.recipient for s in body.shares]
    if any(s.sender != name for s in body.shares) or len(set(recipients)) != len(recipients):
        raise InvalidRequest("shares ahead: one from this member to each peer", "invalid_shares")
    if not set(recipients) <= names - {name}:
        raise InvalidRequest("shares ahead for members outside the roster", "invalid_shares")


class AheadUnusable(Exception):
    """Stages 1 and 2 done ahead do not fit the round (it runs them again, fresh)."""


def take_ahead(rnd: SecureRound, ahead: AheadKeys) -> None:
    """Stages 1 and 2 from keys and shares sent during the last round, checked as any keys and
    shares, both stages closed at once; :class:`AheadUnusable` unless the round sampled exactly
    the members that sent both (the caller then opens the round afresh, under a new attempt)."""
    names = set(rnd.names)
    if set(ahead.keys) != names or set(ahead.shares) != names:
        raise AheadUnusable("the round samples other members than those that sent keys and shares")
    try:
        for member_id, keys in sorted(ahead.keys.items()):
            rnd.take_keys(member_id, keys, counted=True)
            rnd.answered["advertise"].add(member_id)
        close_advertise(rnd)
        rnd.closed["advertise"].set()
        for member_id, shares in sorted(ahead.shares.items()):
            rnd.take_shares(member_id, shares, counted=True)
        close_share_keys(rnd)
        rnd.closed["share_keys"].set()
    except (InvalidRequest, SecAggError) as exc:
        raise AheadUnusable(str(exc)) from None
