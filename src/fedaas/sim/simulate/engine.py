"""The coordinator's round loop in one process, with the members in a worker pool.

Every decision is the service's own code, called in-process instead of over
HTTP: who is eligible (:func:`fedaas.server.eligibility.candidates`), who is
sampled and every privacy number (:class:`fedaas.server.privacy.JobPrivacy`:
sampling, budget, clip norm, central noise, the ledger), the checks an upload
passes and how it is kept (:func:`fedaas.server.rounds.check_update`,
:meth:`~fedaas.server.rounds.RoundState.keep`: structure, the DP norm limit,
what :class:`~fedaas.server.disclosure.Disclosure` lets a member send; the
spilled updates), their bounding, the rule
and the server optimizer (:func:`fedaas.server.rounds.aggregate_round`),
what a round record publishes, and the member's training
(:mod:`fedaas.sim.simulate.members`). What differs from the service: every
member is online and answers (no deadlines, so nobody is benched), and
straggler simulation may shorten or drop a member's round. Members go to
the workers in chunks (:func:`~fedaas.sim.simulate.wire.chunked`), and their
updates are kept in memory up to :data:`fedaas.server.spill.MEMORY_BYTES` rather than a
file each (both only amortize fixed costs: what is trained and checked is
the same). Updates are
aggregated in member order whatever order they arrive in, so the model is
the same bit for bit on any number of workers and on either backend.
Secure aggregation is not simulated.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from fedaas import tensors
from fedaas.algorithms.server_optimizers import ServerOptimizer
from fedaas.algorithms.stragglers import straggler_epochs
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state
from fedaas.models.registry import MAX_PARAMETERS
from fedaas.protocol import EvaluationReport, RoundRecord
from fedaas.server.db import Member
from fedaas.server.eligibility import candidates
from fedaas.server.errors import InvalidRequest, JobFailed
from fedaas.server.member_reports import (
    capped_evaluations,
    custom_evaluations,
    evaluation_problems,
    member_means,
    within_budget,
)
from fedaas.server.privacy import JobPrivacy, PrivacyError
from fedaas.server.rounds import ActiveJob, RoundState, Stage, aggregate_round, check_update
from fedaas.server.spill import MEMORY_BYTES, RoundSpill
from fedaas.sim.simulate.wire import chunked, pack, unpack
from fedaas.spec import JobSpec

log = logging.getLogger("fedaas.simulate")


class Pool(Protocol):
    """What the round loop needs of a backend (:class:`LocalPool`, :class:`RayPool`)."""

    size: int

    def broadcast(self, frame: bytes) -> list[bytes]: ...

    def run(self, frames: Sequence[bytes], on_answer: Callable[[int, bytes], None]) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Stragglers:
    """A share of each round's sampled members straggles: fewer local epochs, or none (``drop``).

    Who straggles and how much is decided by
    :func:`fedaas.algorithms.stragglers.straggler_epochs` from the job seed, the
    round and the names (the FedProx paper's setting, Li et al. 2020).
    """

    share: float
    drop: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1:
            raise ValueError(f"the straggler share must be within [0, 1], not {self.share}")


class RoundLoop:
    """One simulated job: :meth:`run_round` closes a round like the coordinator does."""

    def __init__(
        self,
        spec: JobSpec,
        job_id: str,
        members: list[tuple[str, str]],
        pool: Pool,
        work_dir: Path,
        *,
        holdout: str | None = None,
        allow_code: tuple[str, ...] = (),
        stragglers: Stragglers | None = None,
    ) -> None:
        self.spec, self.pool, self.stragglers = spec, pool, stragglers
        self.urls = {i + 1: url for i, (_, url) in enumerate(members)}
        self._rows = [
            Member(id=i + 1, name=name, revoked_at=None) for i, (name, _) in enumerate(members)
        ]
        self.spool = work_dir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.model_path = work_dir / "model.safetensors"
        module = build_model(  # as the coordinator builds a submitted job's first model
            spec.model,
            spec.data,
            seed=spec.job.seed,
            task=spec.train.task,
            allowed_code=allow_code,
            max_parameters=MAX_PARAMETERS,
        )
        initial = get_state(module)
        manifest = tensors.manifest_of(initial)
        cfg = spec.strategy
        self.job = ActiveJob(
            id=job_id,
            spec=spec,
            manifest=manifest,
            max_upload=tensors.max_payload_bytes(manifest),
            completed_round=0,
            privacy=JobPrivacy(spec, None, None),
            optimizer=ServerOptimizer(cfg.name, manifest, cfg.lr, cfg.beta1, cfg.beta2, cfg.tau),
        )
        holdout = spec.evaluation.holdout or holdout
        if holdout:
            self.job.holdout = open_dataset(holdout, spec.data)
            self.job.module = build_model(
                spec.model, spec.data, task=spec.train.task, allowed_code=allow_code
            )
        self._save(initial, 0)
        pool.broadcast(
            pack(
                {
                    "op": "job",
                    "spec": spec.to_dict(),
                    "job_id": job_id,
                    "state_root": str((work_dir / "members").resolve()),
                    "allow_code": list(allow_code),
                }
            )
        )

    def _save(self, model: dict[str, Any], number: int) -> None:
        """The round's model, as the artifact store writes it (atomically)."""
        tmp = self.model_path.with_name("model.partial")
        tensors.save(tmp, model, {"job": self.job.id, "round": str(number)})
        tmp.replace(self.model_path)
        self.model_bytes = self.model_path.read_bytes()

    def names(self, ids: Sequence[int]) -> list[str]:
        return [self._rows[m - 1].name for m in ids]

    def _epochs(self, sampled: dict[int, str], number: int) -> dict[int, int]:
        epochs = self.spec.train.epochs
        if self.stragglers is None or self.stragglers.share == 0:
            return {m: epochs for m in sampled}
        names = [sampled[m] for m in sorted(sampled)]
        plan = straggler_epochs(
            names,
            share=self.stragglers.share,
            epochs=epochs,
            drop=self.stragglers.drop,
            seed=self.spec.job.seed,
            number=number,
        )
        return {m: int(plan[sampled[m]]) for m in sampled}

    def run_round(self, number: int) -> RoundRecord:
        """Round ``number`` from sampling to its record; raises what the coordinator raises
        (:class:`JobFailed`, :class:`~fedaas.server.privacy.BudgetReached`)."""
        job, spec, privacy = self.job, self.spec, self.job.privacy
        fed = spec.federation
        state = RoundState(number=number, deadline=math.inf)
        job.round = state
        privacy.check_budget(number)
        _, eligible = candidates(self._rows, job, number)
        if len(eligible) < max(fed.min_clients, 1):
            raise JobFailed(
                f"quorum not met: {len(eligible)} member(s) left, min_clients is "
                f"{fed.min_clients}{self._declined_note()}"
            )
        chosen = privacy.sample(number, sorted(eligible), sorted(eligible))
        try:
            privacy.open_round(number, eligible=len(eligible))
        except PrivacyError as exc:
            raise JobFailed(str(exc)) from None
        state.sampled = {m: eligible[m] for m in chosen}
        state.spill = RoundSpill(
            self.spool, job.id, number, job.manifest, memory_bytes=MEMORY_BYTES
        )
        state.privacy = privacy.instructions()
        state.stage = Stage.TRAINING
        epochs = self._epochs(state.sampled, number)
        order = [m for m in sorted(state.sampled) if epochs[m] > 0]
        self.pool.broadcast(pack({"op": "model", "round": number - 1}, self.model_bytes))
        instructions = state.privacy.model_dump(mode="json")
        chunks = chunked(order, self.pool.size)
        frames = [
            pack(
                {
                    "op": "train",
                    "round": number,
                    "privacy": instructions,
                    "members": [
                        {
                            "member": m,
                            "name": state.sampled[m],
                            "url": self.urls[m],
                            "epochs": epochs[m],
                        }
                        for m in chunk
                    ],
                }
            )
            for chunk in chunks
        ]
        try:
            self.pool.run(frames, lambda i, answer: self._fold_chunk(state, chunks[i], answer))
            state.stage = Stage.AGGREGATING
            state.train_metrics = [  # in member order, whatever the order of arrival
                (state.reported[m] or 1, state.member_metrics[m]) for m in sorted(state.reported)
            ]
            if len(state.reported) < fed.min_clients:
                raise JobFailed(
                    f"quorum not met in round {number}: {len(state.reported)} of "
                    f"{len(state.sampled)} sampled member(s) reported, min_clients is "
                    f"{fed.min_clients}{self._declined_note()}"
                )
            privacy.record_release(number)
            model, metrics = aggregate_round(job, state, tensors.SafetensorsFile(self.model_path))
        finally:
            state.spill.discard()
        self._save(model, number)
        metrics.update(member_means(state.train_metrics))  # "members.<key>"
        kept, over = within_budget(spec, state.reported, state.member_metrics)
        for member, reason in over.items():
            job.declined[member] = reason
        metrics.update(
            privacy.close_round(
                number, unclipped=state.unclipped, reported=len(state.reported), member_metrics=kept
            )
        )
        metrics.update(
            clients=len(state.reported),
            seconds=time.monotonic() - state.opened_at,
            bytes_up=state.bytes_up,
            bytes_down=len(self.model_bytes) * len(order),
        )
        metrics.setdefault("accuracy", None)
        metrics.setdefault("loss", None)
        if spec.evaluation.validation_split > 0 and state.reported:
            metrics.update(self._evaluate(sorted(state.reported), number, metrics))
        participants = privacy.disclosure.participants(self.names(sorted(state.reported)))
        metrics = privacy.disclosure.published(metrics)
        job.completed_round = number
        state.stage = Stage.CLOSED
        job.round = None
        return RoundRecord(round=number, participants=participants, **metrics)

    def _fold_chunk(self, state: RoundState, members: list[int], answer: bytes) -> None:
        """A chunk's answer (see :meth:`VirtualMembers._train_all`): each member folded in turn."""
        header, body = unpack(answer)
        answers = header.get("answers")
        if not isinstance(answers, list):  # the whole chunk failed: each of its members declines
            for member in members:
                self._fold(state, member, header, b"")
            return
        if [a.get("member") for a in answers] != members:
            raise JobFailed(f"a worker answered for members {[a.get('member') for a in answers]}")
        offset = 0
        for member, item in zip(members, answers, strict=True):
            size = int(item.get("bytes", 0))
            self._fold(state, member, item, body[offset : offset + size])
            offset += size

    def _fold(self, state: RoundState, member: int, header: dict[str, Any], body: bytes) -> None:
        """One member's answer, checked and kept as the coordinator's inbox keeps an upload."""
        job = self.job
        reason = header.get("declined") or header.get("error")
        if reason:  # a member that fails or is over its budget declines, as the agent does
            job.declined[member] = str(reason)
            log.warning("member %s declined job %s: %s", state.sampled[member], job.id, reason)
            return
        try:
            update, meta, norm = check_update(job, state, body)
        except InvalidRequest as exc:  # a bad update ends the run and names its member
            raise JobFailed(f"member {state.sampled[member]}: {exc}") from None
        state.keep(member, update, meta, norm, len(body))  # held parsed: not parsed again

    def _evaluate(self, members: list[int], number: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Federated evaluation of the new model, summed as the coordinator sums the reports."""
        self.pool.broadcast(pack({"op": "model", "round": number}, self.model_bytes))
        frames = [
            pack(
                {"op": "evaluate", "member": m, "name": self._rows[m - 1].name, "url": self.urls[m]}
            )
            for m in members
        ]
        reports: dict[int, EvaluationReport] = {}

        def keep(i: int, answer: bytes) -> None:
            header, _ = unpack(answer)
            if "report" in header:
                report = EvaluationReport.model_validate(header["report"])
                if not evaluation_problems(self.spec, report.num_examples, report.states):
                    reports[members[i]] = report

        self.pool.run(frames, keep)
        if not reports:
            return {}
        ordered = sorted(reports.items())  # member order
        federated: dict[str, Any] = capped_evaluations(
            self.spec,
            {m: (r.num_examples, r.loss, r.accuracy) for m, r in ordered},
            {m: r.states for m, r in ordered},
        )
        federated.update(custom_evaluations([(r.num_examples, r.metrics) for _, r in ordered]))
        for key, value in list(federated.items()):  # without a holdout, as the coordinator does
            own = key.removeprefix("federated_")
            if key.startswith("federated_") and key != "federated_examples":
                if metrics.get(own) is None:
                    federated[own] = value
        return federated

    def _declined_note(self) -> str:
        if not self.job.declined:
            return ""
        why = "; ".join(
            f"{self._rows[m - 1].name}: {r}" for m, r in sorted(self.job.declined.items())
        )
        return f" (declined: {why[:2000]})"
