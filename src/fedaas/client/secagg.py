"""The member's side of a secure round (SecAgg, Bonawitz et al. CCS 2017; SecAgg+, Bell et al.
CCS 2020): only a masked vector leaves the member, and it answers the unmask stage only as an
honest member may.

:func:`secure_train` is what the agent calls for a train task. For a job
whose accepted spec has ``[secure_aggregation] enabled``, it refuses a task
without a secure session (a coordinator cannot downgrade the member to a
plain upload), then walks the four stages of :mod:`fedaas.protocol_secagg`
with the pure core (:class:`fedaas.algorithms.secagg.SecAggMember`):
advertise fresh round keys signed with its long-term Ed25519 key; check
every peer's signature against the peer's registered key (and that key
against the one this member saw for that peer before, trust on first use);
relay encrypted shares; train, clip and encode (fixed point, weight inside
the vector); mask and upload; answer the unmask request, which the core
refuses if it asks for both shares of a peer, lists this member as dropped,
or names fewer survivors than the threshold. Training runs after the shares
(in the same thread: on the demo's model a training thread cost more CPU
than its overlap saved), so the share stage's straggler grace never waits on
a slow trainer.

Never twice under the same masks: every session gets fresh X25519 keys and
self-mask seed, and the member notes each ``(job, round, attempt)`` before
it advertises, sitting out (sending nothing, staying in the job) a session
it has seen, so a restarted (or replaying) coordinator gets new keys or
nothing, and a member that restarted after sending keys ahead waits for the
next round
(:class:`~fedaas.client.secagg_state.SecureState`, which also keeps the
identity key and the peers' pinned keys).

Pipelined: with its masked upload the member sends its keys for the next
round (the task named that round's attempt); the unmask question brings the
next round's roster, and the member answers it with its shares for that
roster (each peer checked as in stage 2), keeping the member object that
made them (:class:`~fedaas.client.secagg_state.Pending`, memory only). The
next round's task, for exactly that session, carries the shares addressed to
it, and the member goes straight to training: two requests per round. Keys
advertised ahead are shared once, for one roster; a round that runs its
stages afresh comes with a new attempt and new keys. The unmask answer is
held for the next task, as a plain upload's is.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from fedaas.algorithms.secagg import (
    EncryptedShare,
    FixedPoint,
    KeyAdvertisement,
    ProtocolViolation,
    RoundContext,
    SecAggError,
    SecAggMember,
    SecAggParams,
    ShareDecryptionFailed,
    SignatureInvalid,
    ThresholdNotMet,
    UnmaskRequest,
    distributed_noise_std,
)
from fedaas.algorithms.seeds import member_seed
from fedaas.client.finished import upload_wait
from fedaas.client.secagg_state import Pending, SecureRefused, SecureState, SessionSeen
from fedaas.client.training import train_round
from fedaas.protocol import TASK_BUNDLE, ClientPrivacy, Task, UpdateMetadata
from fedaas.protocol_secagg import (
    InboundShares,
    MemberShare,
    SecureKeys,
    SecureRoster,
    SecureUnmaskRequest,
    ShareKeys,
    UnmaskShares,
    WireShare,
    encode_masked,
)

log = logging.getLogger("fedaas.agent")

PEER_FAULTS = (ProtocolViolation, ShareDecryptionFailed, SignatureInvalid, ThresholdNotMet)
"""What a roster or a peer's share can be wrong with: the member sits that round out and stays
in the job. One member sending a share that does not decrypt, or copying a key, made every
honest member leave. (Asked for both shares of a peer, or to mask twice under the same keys,
it leaves: only the coordinator asks that.)"""

HOLD_S = 20.0
"""How long one request for a stage's outcome is held open by the coordinator."""
T = TypeVar("T", bound=BaseModel)


def secure_train(agent: Any, task: Task, ctx: Any, start: dict[str, np.ndarray]) -> Task | None:
    """The agent's train step: plain (``agent._train``) unless the job's spec asks for SecAgg."""
    if not ctx.spec.secure_aggregation.enabled:
        return agent._train(task, ctx, start)
    if task.secure is None:
        raise SecureRefused(
            "the job's spec asks for secure aggregation, but the task has no secure session: "
            "this member never sends its update in the clear for it"
        )
    try:
        return SecureTraining(agent, task, ctx, start).run()
    except PEER_FAULTS as exc:
        log.warning("sitting out round %d of job %s: %s", task.round, task.job_id, exc)
        agent.stop.wait(1.0)  # the round goes on without it (a dropout the protocol absorbs)
        return None


class SecureTraining:
    """One member's run of one secure round (see the module docstring)."""

    def __init__(self, agent: Any, task: Task, ctx: Any, start: dict[str, np.ndarray]) -> None:
        assert task.secure is not None
        self.agent, self.task, self.ctx, self.start = agent, task, ctx, start
        self.session = task.secure
        self.base = f"/v1/jobs/{task.job_id}/rounds/{task.round}"
        self.end = time.monotonic() + task.deadline_in + 5.0
        section = ctx.spec.secure_aggregation
        self.threshold = section.reconstruction_threshold(self.session.sampled)
        s = self.session
        self.encoding = FixedPoint(bits=s.bits, scale=s.scale, clip=s.clip, max_weight=s.max_weight)
        self.params = SecAggParams(self.threshold, section.neighbors, self.encoding)
        self.context = RoundContext(task.job_id, task.round, s.attempt)

    def run(self) -> Task | None:
        """The four stages; the next task when the coordinator sent it with its last answer."""
        agent, task, s = self.agent, self.task, self.session
        self._check_noise()
        secure: SecureState = agent.secure
        secure.register(agent.t)  # done when the agent started, unless that failed
        if not secure.registered:
            raise SecureRefused("the coordinator keeps another identity key for this member")
        pending = secure.take_pending(self.context)  # stages 1 and 2 done in the last round
        if pending is not None:
            member, inbound = self._shared_ahead(pending)
        else:
            try:
                secure.note_attempt(task.job_id, task.round, s.attempt)
            except SessionSeen as exc:  # e.g. keys sent ahead, then this agent restarted
                log.warning("sitting out round %d (nothing sent): %s", task.round, exc)
                agent.stop.wait(min(self._wait(), 1.0))  # the round goes on without it
                return None
            member = SecAggMember(s.member, secure.identity, self.context, self.params)
            inbound = self._keys_and_shares(member)
        encoded = self.encode(*self.train())
        received = [EncryptedShare(x.sender, x.recipient, x.ciphertext) for x in inbound]
        next_keys = self._keys_ahead(s.next_attempt)
        body = encode_masked(member.masked_input(received, encoded), s.attempt, next_keys)
        for peer, why in member.unusable.items():
            log.warning("round %d: %s's shares set aside (%s)", task.round, peer, why)
        wait = self._wait()
        response = agent.t.put_update(
            f"{self.base}/update",
            body,
            params={"next_timeout": wait},  # the answer may be stage 4's question
            timeout=wait,
        )
        if "survivors" in response.json():
            asked = SecureUnmaskRequest.model_validate_json(response.content)
        else:  # the receipt: the question did not come in time
            asked = self._held("GET", "/secagg/unmask", None, SecureUnmaskRequest)
        answer = member.unmask(UnmaskRequest(tuple(asked.survivors), tuple(asked.dropped)))
        shares_back = UnmaskShares(
            seed_shares=[MemberShare(member=m, share=v) for m, v in answer.seed_shares],
            key_shares=[MemberShare(member=m, share=v) for m, v in answer.key_shares],
            next_shares=self._share_ahead(asked.next_roster) if next_keys is not None else None,
        )
        rounds = self.ctx.spec.job.rounds
        wait = upload_wait(task.round, rounds, agent.poll_s)
        response = agent.t.request(  # answered with the next task, when it comes in time
            "POST",
            f"{self.base}/secagg/unmask",
            json=shares_back.model_dump(mode="json"),
            params={"next_timeout": wait},
            timeout=max(wait, 1.0) + 5.0,
        )
        agent.finished.took_part(task.job_id, task.round, rounds)
        log.info(
            "round %d: secure round done (%d members, threshold %d), sent %d masked bytes",
            task.round,
            s.sampled,
            self.threshold,
            len(body),
        )
        if response.headers.get("content-type", "").startswith(TASK_BUNDLE):
            return agent._unbundle(response)
        return None

    def _wait(self) -> float:
        return min(HOLD_S, max(1.0, self.end - time.monotonic()))

    def _next_context(self, attempt: int) -> RoundContext:
        return RoundContext(self.task.job_id, self.task.round + 1, attempt)

    def _keys_ahead(self, attempt: int | None) -> SecureKeys | None:
        """Keys for the next round, signed for the attempt the coordinator drew for it."""
        if attempt is None or self.task.round >= self.ctx.spec.job.rounds:
            return None
        try:
            return self.agent.secure.advertise_ahead(
                self._next_context(attempt), self.session.member
            )
        except SessionSeen as exc:  # named twice: this round's upload goes on without them
            log.warning("round %d: no keys ahead: %s", self.task.round, exc)
            return None

    def _share_ahead(self, roster: SecureRoster | None) -> ShareKeys | None:
        """Stage 2 of the next round, for its roster (which came with this round's unmask
        question), with the secrets advertised ahead; checked as in :meth:`_keys_and_shares`.
        ``None`` (the next round then runs all its stages, fresh) when anything is amiss."""
        secure: SecureState = self.agent.secure
        if roster is None or secure.ahead is None:
            return None
        context = secure.ahead.context
        secrets = secure.take_ahead(context)  # once: never shared twice under the same keys
        assert secrets is not None
        section = self.ctx.spec.secure_aggregation
        try:
            if RoundContext(roster.job_id, roster.round, roster.attempt) != context:
                raise SecureRefused("the next round's roster names another session than its keys")
            secure.check_peers(roster)
            threshold = section.reconstruction_threshold(len(roster.members))
            params = SecAggParams(threshold, section.neighbors, self.encoding)
            member = SecAggMember(self.session.member, secure.identity, context, params, secrets)
            member.advertise()
            shares = member.share_keys(*_advertisements(roster))
        except (SecureRefused, SecAggError, ValueError) as exc:
            log.warning(
                "round %d: no shares ahead for round %d: %s", self.task.round, context.round, exc
            )
            return None
        body = ShareKeys(shares=[_wire(x) for x in shares])
        secure.pending = Pending(context, member, body, len(roster.members))
        return body

    def _shared_ahead(self, pending: Pending) -> tuple[SecAggMember, list[WireShare]]:
        """Stages 1 and 2 done during the last round: the member object that shared, bound to
        this round's encoding; the inbound shares (in the task, or fetched with the same
        shares again, which stage 2's request answers at once)."""
        if pending.size != self.session.sampled:
            raise SecureRefused(
                f"the task samples {self.session.sampled} members; this member shared its keys "
                f"with {pending.size}"
            )
        pending.member.bind(self.params)
        inbound = self.session.inbound
        if inbound is None:
            inbound = self._held("POST", "/secagg/shares", pending.shares, InboundShares).shares
        return pending.member, inbound

    def _keys_and_shares(self, member: SecAggMember) -> list[WireShare]:
        """Stages 1 and 2: advertise signed round keys, check the roster; relay the shares;
        the shares addressed to this member."""
        task, s = self.task, self.session
        ad = member.advertise()  # the roster must carry exactly these keys (share_keys checks)
        keys = SecureKeys(c_public=ad.c_public, s_public=ad.s_public, signature=ad.signature)
        roster = self._held("POST", "/secagg/keys", keys, SecureRoster)
        if (roster.job_id, roster.round, roster.attempt) != (task.job_id, task.round, s.attempt):
            raise SecureRefused("the roster names another round than the task")
        self.agent.secure.check_peers(roster)
        shares = member.share_keys(*_advertisements(roster))
        body = ShareKeys(shares=[_wire(x) for x in shares])
        return self._held("POST", "/secagg/shares", body, InboundShares).shares

    def _check_noise(self) -> None:
        """Under distributed DP: the share must carry the full noise without this member's own."""
        privacy, cfg = self.task.privacy, self.ctx.spec.privacy
        if isinstance(privacy, ClientPrivacy) and privacy.placement == "distributed":
            need = distributed_noise_std(cfg.noise_multiplier * privacy.clip_norm, self.threshold)
            if privacy.noise_std < need * (1 - 1e-9):
                raise SecureRefused(
                    f"noise_std {privacy.noise_std:g} is below the {need:g} that threshold "
                    f"{self.threshold} needs for a fully noised sum"
                )

    def train(self) -> tuple[dict[str, np.ndarray], float]:
        """Local training and the privatized update; its FedAvg weight (1 under DP)."""
        agent, task, ctx = self.agent, self.task, self.ctx
        delta, unclipped, metrics = train_round(
            ctx.module,
            ctx.train,
            ctx.spec.train,
            self.start,
            task.privacy,
            agent.privacy,
            job_id=task.job_id,
            number=task.round,
            seed=member_seed(ctx.spec.job.seed, task.round, task.member or agent.identity),
            max_epsilon=agent.policy.privacy.max_epsilon,
            rounds=ctx.spec.job.rounds,
            allowed_code=agent.policy.allowed_code,
        )
        meta = UpdateMetadata.for_round(task.privacy, ctx.train.num_examples, metrics, unclipped)
        return delta, float(meta.num_examples or 1)

    def encode(self, update: dict[str, np.ndarray], weight: float) -> np.ndarray:
        """The update flattened (tensors by name), clipped to the encoding's bound, encoded."""
        flat = np.concatenate(
            [np.asarray(update[n], np.float64).reshape(-1) for n in sorted(update)]
        )
        norm = float(np.linalg.norm(flat))
        if norm > self.encoding.clip:  # no DP: the member clips; under DP a (2e-22) noise tail
            flat *= self.encoding.clip / norm * (1 - 1e-7)
        if not math.isfinite(norm):
            raise SecureRefused("the update holds NaN or Inf")
        return self.encoding.encode(flat, weight)

    def _held(self, method: str, path: str, body: BaseModel | None, answer: type[T]) -> T:
        """Ask for a stage's outcome until the coordinator answers it (204: not yet)."""
        payload = None if body is None else body.model_dump(mode="json")
        while True:
            wait = self._wait()
            response = self.agent.t.request(
                method, self.base + path, params={"wait": wait}, timeout=wait, json=payload
            )
            if response.status_code == 200:
                return answer.model_validate_json(response.content)
            if time.monotonic() > self.end:
                raise SecureRefused(f"the coordinator did not close stage {path} by the deadline")


def _advertisements(roster: SecureRoster) -> tuple[list[KeyAdvertisement], dict[str, bytes]]:
    """A roster as the pure core takes it: the advertisements and the peers' identity keys."""
    ads = [KeyAdvertisement(e.member, e.c_public, e.s_public, e.signature) for e in roster.members]
    return ads, {e.member: e.identity for e in roster.members}


def _wire(share: EncryptedShare) -> WireShare:
    return WireShare(sender=share.sender, recipient=share.recipient, ciphertext=share.ciphertext)
