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
relay encrypted shares (meanwhile, in a worker thread, train, clip and encode:
fixed point, weight inside the vector; that needs no keys, so it overlaps the
two barriers); mask and upload; answer the unmask request, which the core refuses
if it asks for both shares of a peer, lists this member as dropped, or
names fewer survivors than the threshold.

Never twice under the same masks: every task gets a new
:class:`SecAggMember` (fresh X25519 keys and self-mask seed), and the
member records each ``(job, round, attempt)`` it took part in (state file
``secagg-attempts.json``) before it advertises, refusing a session it has
seen, so a restarted (or replaying) coordinator gets new keys or nothing.
The long-term key lives in ``secagg-identity.key`` (0600) and is registered
with the coordinator on the first secure round (``PUT
/v1/members/me/identity``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel

from fedaas.algorithms.secagg import (
    EncryptedShare,
    FixedPoint,
    IdentityKey,
    KeyAdvertisement,
    RoundContext,
    SecAggMember,
    SecAggParams,
    UnmaskRequest,
    distributed_noise_std,
)
from fedaas.algorithms.seeds import member_seed
from fedaas.client.training import train_round
from fedaas.protocol import ClientPrivacy, Task, UpdateMetadata
from fedaas.protocol_secagg import (
    IdentityRegistration,
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

HOLD_S = 20.0
"""How long one request for a stage's outcome is held open by the coordinator."""
IDENTITY_FILE = "secagg-identity.key"
ATTEMPTS_FILE = "secagg-attempts.json"
PEERS_FILE = "secagg-peers.json"
KEEP_ATTEMPTS = 1000
T = TypeVar("T", bound=BaseModel)


class SecureRefused(Exception):
    """The member will not go on with this secure round; the message says why."""


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def load_identity(state_dir: Path) -> IdentityKey:
    """The member's long-term Ed25519 key, created (0600) on first use."""
    path = state_dir / IDENTITY_FILE
    if path.exists():
        return IdentityKey.from_private_bytes(bytes.fromhex(path.read_text().strip()))
    state_dir.mkdir(parents=True, exist_ok=True)
    key = IdentityKey.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.private_bytes().hex() + "\n")
    return key


def note_attempt(state_dir: Path, job_id: str, number: int, attempt: int) -> None:
    """Record that this member takes part in ``attempt``; refuse one it has seen before."""
    path = state_dir / ATTEMPTS_FILE
    seen: list[str] = json.loads(path.read_text()) if path.exists() else []
    entry = f"{job_id}/{number}/{attempt}"
    if entry in seen:
        raise SecureRefused(
            f"round {number} of job {job_id} reuses attempt {attempt}: this member never "
            "takes part twice in the same secure session"
        )
    _write_json(path, [*seen, entry][-KEEP_ATTEMPTS:])


def check_peers(state_dir: Path, roster: SecureRoster) -> None:
    """Each peer's long-term key must be the one this member saw for it before (TOFU)."""
    path = state_dir / PEERS_FILE
    known: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    changed = [
        e.member
        for e in roster.members
        if known.get(e.member, e.identity.hex()) != e.identity.hex()
    ]
    if changed:
        raise SecureRefused(
            f"the coordinator relays other long-term keys for {', '.join(changed)} than before: "
            "refusing keys it could have made itself"
        )
    fresh = {e.member: e.identity.hex() for e in roster.members if e.member not in known}
    if fresh:
        _write_json(path, {**known, **fresh})


def secure_train(agent: Any, task: Task, ctx: Any, start: dict[str, np.ndarray]) -> Task | None:
    """The agent's train step: plain (``agent._train``) unless the job's spec asks for SecAgg."""
    if not ctx.spec.secure_aggregation.enabled:
        return agent._train(task, ctx, start)
    if task.secure is None:
        raise SecureRefused(
            "the job's spec asks for secure aggregation, but the task has no secure session: "
            "this member never sends its update in the clear for it"
        )
    SecureTraining(agent, task, ctx, start).run()
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

    def run(self) -> None:
        agent, task, s = self.agent, self.task, self.session
        self._check_noise()
        identity = load_identity(agent.state_dir)
        if getattr(agent, "_secagg_registered", None) != identity.public_bytes():
            registration = IdentityRegistration(signing_key=identity.public_bytes())
            agent.t.request(
                "PUT", "/v1/members/me/identity", json=registration.model_dump(mode="json")
            )
            agent._secagg_registered = identity.public_bytes()
        note_attempt(agent.state_dir, task.job_id, task.round, s.attempt)
        # local training runs while stages 1 and 2 wait on their barriers (it needs no keys);
        # leaving the block waits for it, so the model is never trained twice at once
        with ThreadPoolExecutor(1, thread_name_prefix="secagg-train") as pool:
            trained = pool.submit(lambda: self.encode(*self.train()))
            member, roster, inbound = self._keys_and_shares(identity)
            encoded = trained.result()
        received = [EncryptedShare(x.sender, x.recipient, x.ciphertext) for x in inbound.shares]
        body = encode_masked(member.masked_input(received, encoded), s.attempt)
        wait = min(HOLD_S, max(1.0, self.end - time.monotonic()))
        response = agent.t.request(
            "PUT",
            f"{self.base}/update",
            content=body,
            params={"next_timeout": wait},  # the answer may be stage 4's question
            timeout=wait,
            headers={
                "Content-Type": "application/octet-stream",
                "Idempotency-Key": uuid.uuid4().hex,
            },
        )
        if "survivors" in response.json():
            asked = SecureUnmaskRequest.model_validate_json(response.content)
        else:  # the receipt: the question did not come in time
            asked = self._held("GET", "/secagg/unmask", None, SecureUnmaskRequest)
        answer = member.unmask(UnmaskRequest(tuple(asked.survivors), tuple(asked.dropped)))
        shares_back = UnmaskShares(
            seed_shares=[MemberShare(member=m, share=v) for m, v in answer.seed_shares],
            key_shares=[MemberShare(member=m, share=v) for m, v in answer.key_shares],
        )
        agent.t.post_json(f"{self.base}/secagg/unmask", shares_back.model_dump(mode="json"))
        agent.finished.took_part(task.job_id, task.round, self.ctx.spec.job.rounds)
        log.info(
            "round %d: secure round done (%d members, threshold %d), sent %d masked bytes",
            task.round,
            len(roster.members),
            self.threshold,
            len(body),
        )

    def _keys_and_shares(
        self, identity: IdentityKey
    ) -> tuple[SecAggMember, SecureRoster, InboundShares]:
        """Stages 1 and 2: advertise signed round keys, check the roster, relay the shares."""
        task, s = self.task, self.session
        member = SecAggMember(s.member, identity, self.context, self.params)
        ad = member.advertise()
        keys = SecureKeys(c_public=ad.c_public, s_public=ad.s_public, signature=ad.signature)
        roster = self._held("POST", "/secagg/keys", keys, SecureRoster)
        if (roster.job_id, roster.round, roster.attempt) != (task.job_id, task.round, s.attempt):
            raise SecureRefused("the roster names another round than the task")
        check_peers(self.agent.state_dir, roster)
        ads = [
            KeyAdvertisement(e.member, e.c_public, e.s_public, e.signature) for e in roster.members
        ]
        shares = member.share_keys(ads, {e.member: e.identity for e in roster.members})
        wire = [
            WireShare(sender=x.sender, recipient=x.recipient, ciphertext=x.ciphertext)
            for x in shares
        ]
        inbound = self._held("POST", "/secagg/shares", ShareKeys(shares=wire), InboundShares)
        return member, roster, inbound

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
            wait = min(HOLD_S, max(1.0, self.end - time.monotonic()))
            response = self.agent.t.request(
                method, self.base + path, params={"wait": wait}, timeout=wait, json=payload
            )
            if response.status_code == 200:
                return answer.model_validate_json(response.content)
            if time.monotonic() > self.end:
                raise SecureRefused(f"the coordinator did not close stage {path} by the deadline")
