"""Many virtual members in one worker process, each in its turn, running the member's own code.

A worker holds one model and, at any moment, one member's data. A training
task names a chunk of members, trained one after another and answered in one
frame (their updates back to back: one pipe round trip for many small
members). For each member it opens its partition (:func:`fedaas.data.source.open_dataset`,
as the agent does; the first partitions that fit stay in a bounded cache: a round visits the
members in turn, so least-recently-used eviction would drop each one just before its next use),
loads its privacy state from its own folder under the run's state directory
(:class:`~fedaas.client.privacy.MemberPrivacy`: OU noise state, record-level
ledger; nothing else is kept per member) and trains it with
:func:`fedaas.client.training.train_round` (evaluates it with
:func:`~fedaas.client.training.evaluation_report`), the functions the
service's agent calls. What goes back is the update as the agent would upload it: safetensors
with :class:`~fedaas.protocol.UpdateMetadata`. Training randomness is seeded
from the job seed, the round and the member's name
(:func:`fedaas.algorithms.seeds.member_seed`), never from which worker runs
it or when, so any number of workers on either backend gives the same model.

Tasks and answers are frames (:mod:`fedaas.sim.simulate.wire`): JSON headers
and safetensors bodies only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from fedaas import tensors
from fedaas.algorithms.seeds import member_seed
from fedaas.client.privacy import BudgetSpent, MemberPrivacy
from fedaas.client.training import evaluation_report, train_round
from fedaas.data.dataset import ArrayDataset, Dataset
from fedaas.data.source import open_dataset
from fedaas.models import build_model, get_state, set_state
from fedaas.protocol import PrivacyInstructions, UpdateMetadata
from fedaas.sim.simulate.wire import WireError, pack, unpack
from fedaas.spec import JobSpec, parse_spec

CACHE_BYTES = 64 * 1024 * 1024
"""Partitions kept in memory per worker: those that fit, kept until the next job."""

_INSTRUCTIONS: TypeAdapter[Any] = TypeAdapter(PrivacyInstructions)


def _refusal(exc: Exception) -> dict[str, str]:
    """A failed task's answer, as the agent would act: over its budget the member declines,
    anything else is an error named for the driver (a worker never raises)."""
    if isinstance(exc, BudgetSpent):
        return {"declined": str(exc)}
    return {"error": f"{type(exc).__name__}: {exc}"}


class VirtualMembers:
    """One worker's members: :meth:`handle` answers a frame with a frame (see the module doc)."""

    def __init__(self) -> None:
        self.spec: JobSpec | None = None
        self.job_id = ""
        self.state_root = Path(".")
        self.module: Any = None
        self.manifest: tensors.Manifest = {}
        self.model: dict[str, np.ndarray] | None = None
        self.model_round = -1
        self.allow_code: tuple[str, ...] = ()
        self._cache: dict[str, tuple[tuple[Dataset, Dataset | None], int]] = {}
        self._cached_bytes = 0

    def handle(self, frame: bytes) -> bytes:
        """Carry out one task; a member that fails answers ``{"error": ...}``, never raises."""
        try:
            header, body = unpack(frame)
            op = header.get("op")
            if op == "job":
                return pack(self._job(header))
            if op == "model":
                self.model, _ = tensors.decode(body, self.manifest)
                self.model_round = int(header["round"])
                return pack({"round": self.model_round})
            if op == "train":
                return self._train_all(header)
            if op == "evaluate":
                return pack(self._evaluate(header))
            raise WireError(f"unknown task {op!r}")
        except Exception as exc:  # reported to the driver with the member's name
            return pack(_refusal(exc))

    def _job(self, header: dict[str, Any]) -> dict[str, Any]:
        import torch

        torch.set_num_threads(1)  # one core per worker: deterministic and no oversubscription
        self.spec = parse_spec(header["spec"])
        self.job_id = str(header["job_id"])
        self.state_root = Path(header["state_root"])
        self.allow_code = tuple(str(c) for c in header.get("allow_code", ()))
        self.module = build_model(  # as the agent builds it
            self.spec.model, self.spec.data, task=self.spec.train.task, allowed_code=self.allow_code
        )
        self.manifest = tensors.manifest_of(get_state(self.module))
        self._cache.clear()
        self._cached_bytes = 0
        return {"job_id": self.job_id}

    def _data(self, name: str, url: str) -> tuple[Dataset, Dataset | None]:
        """The member's training (and validation) data, split as the agent splits it."""
        assert self.spec is not None
        if name in self._cache:
            return self._cache[name][0]
        data = open_dataset(url, self.spec.data)
        parts: tuple[Dataset, Dataset | None] = (data, None)
        if self.spec.evaluation.validation_split > 0:
            parts = data.split(self.spec.evaluation.validation_split, self.spec.job.seed)
        if isinstance(data, ArrayDataset):
            size = data.x.nbytes + data.y.nbytes
            if self._cached_bytes + size <= CACHE_BYTES:  # kept while it fits, never evicted
                self._cache[name] = (parts, size)
                self._cached_bytes += size
        return parts

    def _train_all(self, header: dict[str, Any]) -> bytes:
        """A chunk of members (``members``: member, name, url, epochs) trained in turn.

        One answer frame for all: ``answers`` lists each member's answer in
        task order with the ``bytes`` of its update, and the body is their
        updates one after another. A member that fails declines (``error``)
        without stopping the others.
        """
        number = int(header["round"])
        instructions = _INSTRUCTIONS.validate_python(header["privacy"])
        answers, updates = [], []
        for task in header["members"]:
            try:
                answer, update = self._train(task, number, instructions)
            except Exception as exc:
                answer, update = {"member": task.get("member"), **_refusal(exc)}, b""
            answer["bytes"] = len(update)
            answers.append(answer)
            updates.append(update)
        return pack({"answers": answers}, b"".join(updates))

    def _train(
        self, task: dict[str, Any], number: int, instructions: PrivacyInstructions
    ) -> tuple[dict[str, Any], bytes]:
        """Round ``number`` of member ``name``: its update as the agent would upload it."""
        spec, model = self.spec, self.model
        if spec is None or model is None:
            raise WireError("a training task before the job and its model")
        name, index = str(task["name"]), int(task["member"])
        if self.model_round != number - 1:
            raise WireError(f"round {number} needs the model of round {number - 1}")
        began = time.perf_counter()
        train, _ = self._data(name, str(task["url"]))
        cfg = spec.train
        epochs = int(task.get("epochs", cfg.epochs))
        if epochs != cfg.epochs:  # a straggler: fewer local epochs this round
            cfg = cfg.model_copy(update={"epochs": epochs})
        set_state(self.module, model)
        privacy = MemberPrivacy(self.state_root / f"m{index}", name)
        update, unclipped, metrics = train_round(
            self.module,
            train,
            cfg,
            model,
            instructions,
            privacy,
            job_id=self.job_id,
            number=number,
            seed=member_seed(spec.job.seed, number, name),
            max_epsilon=None,
            rounds=spec.job.rounds,
            allowed_code=self.allow_code,
        )
        meta = UpdateMetadata.for_round(instructions, train.num_examples, metrics, unclipped)
        body = tensors.encode(update, meta.to_strings())
        return {"member": index, "seconds": time.perf_counter() - began}, body

    def _evaluate(self, header: dict[str, Any]) -> dict[str, Any]:
        """Federated evaluation: the agent's report on the member's validation split."""
        if self.spec is None or self.model is None:
            raise WireError("an evaluation task before the job and its model")
        _, validation = self._data(str(header["name"]), str(header["url"]))
        if validation is None:
            return {"member": int(header["member"])}
        set_state(self.module, self.model)
        report = evaluation_report(
            self.module, validation, self.spec, self.model_round, self.allow_code
        )
        return {"member": int(header["member"]), "report": report.model_dump(mode="json")}
