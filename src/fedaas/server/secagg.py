"""The coordinator's side of a secure round (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et
al. CCS 2020): it relays keys and encrypted shares, sums masked vectors, and recovers only the sum.

:class:`SecureRound` wraps the pure state machine
(:class:`fedaas.algorithms.secagg.SecAggServer`) for one run of one round:
the inbox hands it what members send (:mod:`fedaas.protocol_secagg`), the
round loop runs :meth:`SecureRound.run`, which closes each stage (advertise
keys, share keys, masked input, unmask) as
:mod:`fedaas.server.secagg_stages` decides: never waiting for every reply.
Members' requests for a stage's outcome are held until the stage closes, so
a stage costs one round trip. The encoding, identities, noise shares and the
mean of the recovered sum are in :mod:`fedaas.server.secagg_setup`; stages 1
and 2 of the next round done during this one in :mod:`fedaas.server.secagg_ahead`.

What the coordinator keeps: the members' public keys and the opaque
ciphertexts they relay (memory only), the running modular sum of the masked
vectors (never one vector: each is added and dropped), and the recovered sum.
Nothing of a secure round is written to the spool, the database or the log
but the sum's consequences (the model) and who took part. Every run of a
round draws a fresh ``attempt`` (cryptographic), so a coordinator that
restarts mid-round reruns it under new keys.

Long because one class holds the state every stage's handler reads and
writes (keys, shares, the sum, who answered what), each handler a few lines.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from fedaas.algorithms.secagg import (
    EncryptedShare,
    KeyAdvertisement,
    RoundContext,
    SecAggError,
    SecAggParams,
    SecAggServer,
    UnmaskResponse,
)
from fedaas.protocol import PrivacyInstructions, Receipt
from fedaas.protocol_secagg import (
    InboundShares,
    SecureKeys,
    SecureRoster,
    SecureSession,
    SecureUnmaskRequest,
    ShareKeys,
    UnmaskAccepted,
    UnmaskShares,
    WireShare,
    decode_masked,
)
from fedaas.server.aggregation import Bounded
from fedaas.server.db import Store
from fedaas.server.errors import Conflict, Forbidden, InvalidRequest
from fedaas.server.secagg_ahead import (
    AheadKeys,
    AheadUnusable,
    check_keys_ahead,
    check_shares_ahead,
    take_ahead,
)
from fedaas.server.secagg_setup import (
    distributed_share,
    encoding_for,
    identities,
    unmasked_mean,
)
from fedaas.server.secagg_stages import INBOUND_IN_TASK_BYTES, STAGES, drive
from fedaas.spec import JobSpec
from fedaas.tensors import Manifest

log = logging.getLogger("fedaas.coordinator")


def open_secure_round(
    spec: JobSpec,
    job_id: str,
    state: Any,
    manifest: Manifest,
    store: Store,
    ahead: AheadKeys | None = None,
) -> SecureRound | None:
    """The secure run of round ``state`` (``None`` without ``[secure_aggregation]``).

    Under ``placement = "distributed"`` it first resizes the members' noise
    share to the round's threshold (``state.privacy``). ``ahead``: stages 1
    and 2 of this round, done during the last one (used when they fit it).
    """
    if not spec.secure_aggregation.enabled:
        return None
    threshold = spec.secure_aggregation.reconstruction_threshold(len(state.sampled))
    multiplier = getattr(spec.privacy, "noise_multiplier", 0.0)
    state.privacy = distributed_share(state.privacy, multiplier, threshold)
    args = (spec, job_id, state.number, state.sampled, store, manifest, state.privacy)
    if ahead is not None and ahead.round == state.number:
        try:
            return SecureRound(*args, ahead)
        except AheadUnusable as exc:
            log.info("round %d: stages 1 and 2 run again, fresh: %s", state.number, exc)
    return SecureRound(*args)


class SecureRound:
    """One run of one secure round (see the module docstring)."""

    def __init__(
        self,
        spec: JobSpec,
        job_id: str,
        number: int,
        sampled: dict[int, str],
        store: Store,
        manifest: Manifest,
        privacy: PrivacyInstructions,
        ahead: AheadKeys | None = None,
    ) -> None:
        self.spec, self.manifest = spec, manifest
        self.names = dict(sampled)  # member id -> name (the member's id in the protocol)
        self.ids = {name: mid for mid, name in sampled.items()}
        self.size = sum(math.prod(shape) for shape in manifest.values())
        self.encoding = encoding_for(spec, privacy, len(sampled), self.size)
        self.threshold = spec.secure_aggregation.reconstruction_threshold(len(sampled))
        self.params = SecAggParams(self.threshold, spec.secure_aggregation.neighbors, self.encoding)
        attempt = ahead.attempt if ahead is not None else secrets.randbelow(2**63)
        self.context = RoundContext(job_id, number, attempt)
        self.next_context = (  # what keys sent ahead for the next round are signed for
            RoundContext(job_id, number + 1, secrets.randbelow(2**63))
            if number < spec.job.rounds
            else None
        )
        self.next_keys: dict[int, SecureKeys] = {}  # sent with the masked inputs
        self.next_roster: SecureRoster | None = None
        self._next_shares: dict[int, ShareKeys] = {}  # sent with the unmask answers
        self.store = store
        self.identities = {sampled[m]: key for m, key in identities(store).items() if m in sampled}
        self.length = self.encoding.encoded_length(self.size)
        self.server = SecAggServer(self.context, self.params, self.identities, self.length)
        self.lock = threading.Lock()  # masked inputs may arrive from worker threads
        self.stage = "advertise"
        self.answered: dict[str, set[int]] = {stage: set() for stage in STAGES}
        self.closed = {stage: asyncio.Event() for stage in STAGES}
        self.changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._keys: dict[int, SecureKeys] = {}
        self._shares: dict[int, ShareKeys] = {}
        self.roster: SecureRoster | None = None
        self.inbound: dict[str, list[WireShare]] = {}
        self.ahead = ahead is not None  # stages 1 and 2 ran during the last round
        self._inbound_bytes: dict[str, int] = {}
        self.request: SecureUnmaskRequest | None = None
        self.failure: str | None = None
        self.weighted_sum: np.ndarray | None = None
        self.total_weight = 0.0
        self.survivors: list[int] = []
        self.bytes_up = 0
        self.bytes_down = 0
        if ahead is not None:  # AheadUnusable: the caller opens the round afresh
            take_ahead(self, ahead)

    # what members see ---------------------------------------------------------------
    def session_for(self, member_id: int) -> SecureSession | None:
        """The session a train task carries; ``None`` once the member can no longer join.

        Until it advertises keys; or, when stages 1 and 2 ran during the last
        round, until it uploads, with its inbound shares when they are small
        enough to ride in the task.
        """
        inbound = None
        if self.stage == "advertise":
            if member_id in self.answered["advertise"]:
                return None
        elif self.stage == "masked_input" and self.closed["share_keys"].is_set() and self.ahead:
            name = self.names.get(member_id)
            if name not in self.inbound or member_id in self.answered["masked_input"]:
                return None
            if self.inbound_bytes(name) <= INBOUND_IN_TASK_BYTES:  # else fetched with stage
                inbound = self.inbound[name]  # 2's request, which answers at once
        else:
            return None
        enc = self.encoding
        return SecureSession(
            attempt=self.context.attempt,
            member=self.names[member_id],
            sampled=len(self.names),
            bits=enc.bits,  # type: ignore[arg-type]
            scale=enc.scale,
            clip=enc.clip,
            max_weight=enc.max_weight,
            next_attempt=self.next_context.attempt if self.next_context is not None else None,
            inbound=inbound,
        )

    def inbound_bytes(self, name: str) -> int:
        """The size of the shares addressed to member ``name`` (as JSON): whether they ride in
        its task, and the bytes down they add when they do."""
        if name not in self._inbound_bytes:
            self._inbound_bytes[name] = sum(len(s.model_dump_json()) for s in self.inbound[name])
        return self._inbound_bytes[name]

    def _check(self, stage: str, member_id: int, attempt: int | None = None) -> None:
        if member_id not in self.names:
            raise Forbidden("this member is not part of the secure round", "not_sampled")
        if attempt is not None and attempt != self.context.attempt:
            raise Conflict("this run of the round has another attempt number", "round_closed")
        if self.failure is not None:
            raise Conflict(f"the secure round failed: {self.failure}", "round_closed")
        if self.stage != stage:
            raise Conflict(
                f"the secure round is at stage {self.stage!r}, not {stage!r}", "round_closed"
            )

    def _touch(self, stage: str, member_id: int) -> None:
        self.answered[stage].add(member_id)
        self.changed.set()

    async def _held(self, stage: str, wait: float) -> bool:
        """Wait up to ``wait`` s for ``stage`` to close; whether it did."""
        try:
            await asyncio.wait_for(self.closed[stage].wait(), timeout=max(wait, 0.0))
        except TimeoutError:
            return False
        return True

    async def advertise(self, member_id: int, keys: SecureKeys, wait: float) -> SecureRoster | None:
        """Stage 1: keep the member's signed keys; the roster once the stage closes (else None)."""
        prior = self._keys.get(member_id)
        if prior is not None and prior != keys:
            raise Conflict("this member already advertised other keys this round", "duplicate")
        if member_id not in self.answered["advertise"]:  # new, or sent ahead and now confirmed
            self._check("advertise", member_id)
            if prior is None:
                self.take_keys(member_id, keys)
            self._touch("advertise", member_id)
        if not await self._held("advertise", wait):
            return None
        if self.roster is None or all(
            e.member != self.names[member_id] for e in self.roster.members
        ):
            raise Conflict(
                f"the key stage closed without this member: {self.failure}", "round_closed"
            )
        return self.roster

    def take_keys(self, member_id: int, keys: SecureKeys, counted: bool = False) -> None:
        """One member's signed keys checked (signature, points) and kept; it counts as having
        answered stage 1 once it posts them (or, sent ahead, when every member's came)."""
        name = self.names[member_id]
        if name not in self.identities:  # registered since the round opened
            key = identities(self.store).get(member_id)
            if key is not None:
                self.server.register(name, key)
                self.identities[name] = key
        ad = KeyAdvertisement(name, keys.c_public, keys.s_public, keys.signature)
        try:
            self.server.receive_advertisement(ad)
        except SecAggError as exc:
            raise InvalidRequest(f"refused round keys: {exc}", "invalid_keys") from None
        self._keys[member_id] = keys
        if not counted:  # keys sent ahead were counted in the round they came with
            self.bytes_up += len(keys.model_dump_json())

    def take_shares(self, member_id: int, body: ShareKeys, counted: bool = False) -> None:
        """One member's encrypted shares checked (sender, recipients, sizes) and kept; it counts
        as having answered stage 2 (shares sent ahead were counted in the round they came with)."""
        self._check("share_keys", member_id)
        name = self.names[member_id]
        shares = [EncryptedShare(s.sender, s.recipient, s.ciphertext) for s in body.shares]
        if any(s.sender != name for s in shares):
            raise InvalidRequest("every share must name its sender: this member", "invalid_shares")
        try:
            self.server.receive_shares(name, shares)
        except SecAggError as exc:
            raise InvalidRequest(f"refused shares: {exc}", "invalid_shares") from None
        self._shares[member_id] = body
        if not counted:
            self.bytes_up += len(body.model_dump_json())
        self._touch("share_keys", member_id)

    async def share(self, member_id: int, body: ShareKeys, wait: float) -> InboundShares | None:
        """Stage 2: relay the member's encrypted shares; its inbound ones once the stage closes
        (at once when they came ahead: the same body again)."""
        prior = self._shares.get(member_id)
        if prior is None:
            self.take_shares(member_id, body)
        elif prior != body:
            raise Conflict("this member already sent other shares this round", "duplicate")
        if not await self._held("share_keys", wait):
            return None
        name = self.names[member_id]
        if name not in self.inbound:
            raise Conflict(
                f"the share stage closed without this member: {self.failure}", "round_closed"
            )
        return InboundShares(shares=self.inbound[name])

    def accept_masked(
        self, member_id: int, body: bytes | Path, nbytes: int, number: int
    ) -> Receipt:
        """Stage 3: add the member's masked vector to the running sum (the vector is not kept);
        keep the keys for the next round that came with it."""
        raw = body.read_bytes() if isinstance(body, Path) else body
        try:
            vector, next_keys = decode_masked(
                raw, self.length, self.encoding.bits, self.context.attempt
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc), "invalid_update") from None
        name = self.names.get(member_id)
        if next_keys is not None and name is not None:  # checked before the vector is added
            check_keys_ahead(self.identities.get(name), name, next_keys, self.next_context)
        with self.lock:
            self._check("masked_input", member_id)
            if member_id in self.answered["masked_input"]:
                raise Conflict(f"this member already reported for round {number}", "duplicate")
            try:
                self.server.receive_masked_input(self.names[member_id], vector)
            except SecAggError as exc:
                raise InvalidRequest(f"refused masked input: {exc}", "invalid_update") from None
            self.answered["masked_input"].add(member_id)
            if next_keys is not None:
                self.next_keys[member_id] = next_keys
            self.bytes_up += nbytes
        self._loop.call_soon_threadsafe(self.changed.set)
        return Receipt(job_id=self.context.job_id, round=number)

    async def unmask_request(self, member_id: int, wait: float) -> SecureUnmaskRequest | None:
        """Stage 4's question, once the masked inputs are in (else ``None`` after ``wait``)."""
        if member_id not in self.names:
            raise Forbidden("this member is not part of the secure round", "not_sampled")
        if not await self._held("masked_input", wait):
            return None
        if self.request is None:
            raise Conflict(f"the secure round failed: {self.failure}", "round_closed")
        return self.request

    def unmask(self, member_id: int, body: UnmaskShares) -> UnmaskAccepted:
        """Stage 4's answer: the member's shares (seed shares of survivors, key shares of dropped);
        its shares for the next round's roster, when it sends them, are kept for that round."""
        self._check("unmask", member_id)
        if member_id in self.answered["unmask"]:
            raise Conflict("this member already answered the unmask stage", "duplicate")
        if body.next_shares is not None:  # checked before anything of the answer is kept
            check_shares_ahead(self.names[member_id], body.next_shares, self.next_roster)
        response = UnmaskResponse(
            self.names[member_id],
            tuple((s.member, s.share) for s in body.seed_shares),
            tuple((s.member, s.share) for s in body.key_shares),
        )
        try:
            self.server.receive_unmask(response)
        except SecAggError as exc:
            raise InvalidRequest(f"refused unmask shares: {exc}", "invalid_shares") from None
        self.bytes_up += len(body.model_dump_json())
        if body.next_shares is not None:
            self._next_shares[member_id] = body.next_shares
        self._touch("unmask", member_id)
        return UnmaskAccepted(round=self.context.round)

    def keys_ahead(self) -> AheadKeys | None:
        """Stages 1 and 2 of the next round as done during this one (``None``: it starts fresh)."""
        if self.next_context is None or self.next_roster is None or not self._next_shares:
            return None
        ahead = self.next_context
        return AheadKeys(ahead.round, ahead.attempt, dict(self.next_keys), dict(self._next_shares))

    # the round loop's side ---------------------------------------------------------------
    async def run(self, state: Any, declined: Iterable[int], min_clients: int) -> None:
        """Drive the stages (:func:`~fedaas.server.secagg_stages.drive`) and record the survivors as the round's reports."""
        try:
            await drive(self, state.deadline, declined, min_clients)
        finally:
            state.bytes_up += self.bytes_up
            state.bytes_down += self.bytes_down
        state.reported = {m: 0 for m in self.survivors}

    def aggregate(
        self, noise: dict[str, np.ndarray] | None, denominator: float | None
    ) -> tuple[dict[str, np.ndarray], Bounded]:
        """The mean delta (:func:`~fedaas.server.secagg_setup.unmasked_mean`) and the (empty) account of bounding: no update was seen alone."""
        assert self.weighted_sum is not None
        mean = unmasked_mean(
            self.weighted_sum, self.total_weight, self.manifest, noise, denominator
        )
        return mean, Bounded(self.survivors, [], [], [])
