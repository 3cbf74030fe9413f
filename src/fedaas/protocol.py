"""The wire contract between the coordinator and its members and operators.

Every control message that crosses HTTP is one of the pydantic models here,
used by both sides: the coordinator's FastAPI handlers declare them as
request bodies and ``response_model``s (so ``/openapi.json`` documents every
answer and a client can be generated from it), and the member agent and the
operator's client parse what they receive with the same models. Tensor
payloads are safetensors (:mod:`fedaas.tensors`); their string metadata is
:class:`UpdateMetadata`.

This module sits at the bottom of the house with :mod:`fedaas.spec` and
:mod:`fedaas.tensors`: it imports nothing else of ours (but secure aggregation's
messages, :mod:`fedaas.protocol_secagg`). It is long because it is
the whole wire contract in one place, which both sides must agree on.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fedaas.protocol_secagg import SecureSession
from fedaas.spec import JobSpec

TASK_BUNDLE = "application/vnd.fedaas.task-bundle"
"""Media type of a task answered together with its model (one round trip instead of two):
:func:`encode_bundle`. The task rides in the body, not in a header: a secure round's task
carries the member's inbound shares (kilobytes), past the response headers that reverse
proxies accept by default (nginx: 4 KiB)."""
RECEIPT_HEADER = "X-Fedaas-Receipt"
"""Header that carries the :class:`Receipt` when an upload's answer is the next task bundle."""
ROUND_HEADER = "X-Fedaas-Round"
"""Header of a model download: the round after which the model was published."""
_LENGTH_BYTES = 4


def encode_bundle(task: bytes, model: bytes) -> bytes:
    """A task bundle's body: the task's length (4 bytes, big-endian), the task (JSON), the
    model (safetensors)."""
    return len(task).to_bytes(_LENGTH_BYTES, "big") + task + model


def decode_bundle(body: bytes) -> tuple[str, bytes]:
    """``(task JSON, model)`` from a task bundle's body; :class:`ValueError` if it is not one
    (a length past the body, or a task that is not UTF-8)."""
    if len(body) < _LENGTH_BYTES:
        raise ValueError("a task bundle starts with its task's length (4 bytes)")
    size = int.from_bytes(body[:_LENGTH_BYTES], "big")
    if size > len(body) - _LENGTH_BYTES:
        raise ValueError(
            f"a task bundle's task claims {size} bytes, but the body holds "
            f"{len(body) - _LENGTH_BYTES} after its length"
        )
    end = _LENGTH_BYTES + size
    return body[_LENGTH_BYTES:end].decode("utf-8"), body[end:]


MAX_EXAMPLES = 10**12
MAX_METRICS = 32
METRIC_NAME = re.compile(r"[A-Za-z_][\w.\-]{0,63}")
"""A metric a member reports: a short name of word characters, dots and dashes. The
coordinator publishes it as ``members.<name>``, so control characters, lone surrogates or
markup there would reach every reader of the job (and could break its status for good)."""
MAX_REASON = 4000

Name = Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.\-]*$")]
JobId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9][\w\-]*$")]
Round = Annotated[int, Field(ge=0, le=1_000_000)]


class Message(BaseModel):
    """A message on the wire: unknown fields are an error, never silently dropped."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# privacy instructions ---------------------------------------------------------------


class NoPrivacy(Message):
    """The round adds no differential privacy: the member sends its plain update."""

    kind: Literal["none"] = "none"


class ClientPrivacy(Message):
    """Client-level DP (DP-FedAvg, McMahan et al. 2018): clip the update, maybe noise it.

    The member clips its update to ``clip_norm`` (L2 over all tensors). With
    ``placement`` ``local`` or ``distributed`` it then adds noise of std
    ``noise_std`` itself: independent Gaussian, or Ornstein-Uhlenbeck noise
    correlated across rounds by ``theta`` (``mechanism = "ou"``). With
    ``central`` placement ``noise_std`` is 0 and the coordinator adds it.
    ``adaptive_clipping``: report whether the update was within the clip norm
    (the coordinator noises that count); otherwise the member reports nothing
    but its update. ``reproducible`` draws noise from ``seed`` (NOT private,
    for tests).
    """

    kind: Literal["client"] = "client"
    mechanism: Literal["gaussian", "ou"]
    placement: Literal["central", "distributed", "local"]
    clip_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    noise_std: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    theta: Annotated[float, Field(gt=-1, lt=1)] | None = None
    adaptive_clipping: bool = False
    reproducible: bool = False
    seed: Annotated[int, Field(ge=0)] = 0


class RecordPrivacy(Message):
    """Record-level DP: the member trains with DP-SGD (Abadi et al. 2016) and keeps its ledger."""

    kind: Literal["record"] = "record"
    noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    clip_norm: Annotated[float, Field(gt=0, allow_inf_nan=False)]
    delta: Annotated[float, Field(gt=0, lt=1)]
    accountant: Literal["rdp", "pld"] = "pld"
    epsilon_budget: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    reproducible: bool = False
    seed: Annotated[int, Field(ge=0)] = 0


PrivacyInstructions = Annotated[
    NoPrivacy | ClientPrivacy | RecordPrivacy, Field(discriminator="kind")
]
"""What a member must do to its update this round, told apart by ``kind``."""


# member <-> coordinator ---------------------------------------------------------------


class Task(Message):
    """One unit of work for one member: train on round ``round`` or evaluate its model.

    ``model_round`` names the global model to start from (``model_etag`` is
    its ETag, so a cached copy is never fetched twice); ``deadline_in`` is
    how many seconds the coordinator waits; ``max_upload_bytes`` the upload
    cap derived from the model.
    """

    job_id: JobId
    round: Annotated[int, Field(ge=1, le=1_000_000)]
    stage: Literal["train", "evaluate"]
    model_round: Round
    model_etag: Annotated[str, Field(min_length=1, max_length=200)]
    deadline_in: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    max_upload_bytes: Annotated[int, Field(ge=1)]
    spec: JobSpec
    privacy: PrivacyInstructions = Field(default_factory=NoPrivacy)
    secure: SecureSession | None = None
    """A secure round's session (``fedaas.protocol_secagg``); ``None`` for a plain round."""
    member: Name | None = None
    """The name the coordinator knows this member by: with the job seed it seeds the member's
    training (``fedaas.algorithms.seeds``), as ``fedaas simulate`` seeds a virtual member."""


def _finite_metrics(value: dict[str, float]) -> dict[str, float]:
    if len(value) > MAX_METRICS:
        raise ValueError(f"at most {MAX_METRICS} metrics")
    for key, number in value.items():
        if not METRIC_NAME.fullmatch(key) or not math.isfinite(number):
            raise ValueError("metrics must map short names to finite numbers")
    return value


class UpdateMetadata(Message):
    """The string metadata of an update's safetensors file (all values are strings there).

    ``num_examples``: how many examples the member trained on (the FedAvg
    weight without DP); ``metrics``: the member's training metrics;
    ``unclipped``: whether the update was within the clip norm (adaptive
    clipping counts these). Under differential privacy a member sends only
    what the accountant covers (:meth:`for_round`); a field left out is
    ``None`` and absent from the strings. The coordinator refuses an update
    that carries more (``fedaas.server.disclosure``).
    """

    num_examples: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    unclipped: bool | None = None

    _check_metrics = field_validator("metrics")(_finite_metrics)

    @classmethod
    def for_round(
        cls,
        privacy: NoPrivacy | ClientPrivacy | RecordPrivacy,
        num_examples: int,
        metrics: dict[str, float],
        unclipped: bool,
    ) -> UpdateMetadata:
        """What a member reports with its update under the round's privacy instructions.

        No DP: everything. Client level: nothing but, with adaptive clipping,
        the unclipped bit (noised and accounted by the coordinator). Record
        level: only its own ``record_epsilon`` and ``record_epsilon_next``
        (the example count would make record-level epsilon infinite, the
        training metrics are unnoised functions of the records).
        """
        if isinstance(privacy, ClientPrivacy):
            return cls(unclipped=unclipped if privacy.adaptive_clipping else None)
        if isinstance(privacy, RecordPrivacy):
            own = ("record_epsilon", "record_epsilon_next")
            return cls(metrics={k: v for k, v in metrics.items() if k in own})
        return cls(num_examples=num_examples, metrics=metrics, unclipped=unclipped)

    def to_strings(self) -> dict[str, str]:
        out = {"metrics": json.dumps(self.metrics)}
        if self.num_examples is not None:
            out["num_examples"] = str(self.num_examples)
        if self.unclipped is not None:
            out["unclipped"] = "1" if self.unclipped else "0"
        return out

    @classmethod
    def from_strings(cls, meta: dict[str, str]) -> UpdateMetadata:
        """Parse safetensors metadata; raises :class:`ValueError` naming what is wrong.

        A key it does not know is refused, as an unknown field of any message is: what a
        member sends is exactly what the coordinator reads, nothing rides along unchecked.
        """
        unknown = sorted(set(meta) - {"num_examples", "metrics", "unclipped"})
        if unknown:
            raise ValueError(f"metadata key {unknown[0]!r} is not one fedaas reads")
        raw = meta.get("num_examples")
        if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= MAX_EXAMPLES):
            raise ValueError("metadata num_examples must be a positive integer")
        if meta.get("unclipped") not in (None, "0", "1"):
            raise ValueError("metadata unclipped must be 0 or 1")
        try:
            metrics = json.loads(meta.get("metrics", "{}"))
        except json.JSONDecodeError:
            raise ValueError("metadata metrics must be a JSON object") from None
        if not isinstance(metrics, dict) or len(metrics) > MAX_METRICS:
            raise ValueError(
                f"metadata metrics must be a JSON object of at most {MAX_METRICS} numbers"
            )
        if any(
            not isinstance(k, str)
            or not METRIC_NAME.fullmatch(k)
            or isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            for k, v in metrics.items()
        ):
            raise ValueError("metadata metrics must map short names to finite numbers")
        unclipped = None if "unclipped" not in meta else meta["unclipped"] == "1"
        return cls(
            num_examples=None if raw is None else int(raw), metrics=metrics, unclipped=unclipped
        )


class Receipt(Message):
    """The coordinator's answer to an accepted update."""

    accepted: bool = True
    job_id: JobId
    round: Round
    num_examples: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)] | None = None


MAX_STATE_VALUES = 1_000_000
"""Numbers in one evaluation report's metric states (a 100,000-class confusion: 400,000)."""


def _finite_states(value: dict[str, list[float]]) -> dict[str, list[float]]:
    if len(value) > 8 or any(len(k) > 32 or not METRIC_NAME.fullmatch(k) for k in value):
        raise ValueError("at most 8 metric states with short names")
    if sum(len(v) for v in value.values()) > MAX_STATE_VALUES:
        raise ValueError(f"at most {MAX_STATE_VALUES} numbers in metric states")
    if not all(math.isfinite(x) for v in value.values() for x in v):
        raise ValueError("metric states must be finite numbers")
    return value


class EvaluationReport(Message):
    """A member's evaluation of a round's model on its local validation split.

    ``states``: the metric states of the job's metrics
    (:mod:`fedaas.train.metrics`), which the coordinator checks and sums
    across members; ``loss``/``accuracy`` are the member's own values
    (``accuracy`` absent for a regression); ``metrics``: what the job's
    ``eval_step`` returned (published as ``members.<key>``).
    """

    num_examples: Annotated[int, Field(ge=1, le=MAX_EXAMPLES)]
    loss: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    accuracy: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    states: dict[str, list[float]] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)

    _check_states = field_validator("states")(_finite_states)
    _check_metrics = field_validator("metrics")(_finite_metrics)


class EvaluationAccepted(Message):
    accepted: bool = True
    round: Round


def one_line_text(value: str) -> str:
    """``value`` on one line: control and format characters (newlines, terminal escapes,
    bidirectional overrides, NUL) and runs of spaces become single spaces."""
    kept = "".join(" " if unicodedata.category(c) in ("Cc", "Cf") else c for c in value)
    return " ".join(kept.split())


class DeclineReport(Message):
    """A member takes no (further) part in a job, and says why.

    The reason is logged, stored and shown to the operator, so it is taken as one line of
    text (:func:`one_line_text`): a member cannot forge log lines or repaint a terminal.
    """

    reason: Annotated[str, Field(min_length=1, max_length=MAX_REASON)]

    @field_validator("reason")
    @classmethod
    def _one_line(cls, value: str) -> str:
        line = one_line_text(value)
        if not line:
            raise ValueError("a reason must say something")
        return line


class Declined(Message):
    declined: bool = True


# operator <-> coordinator -------------------------------------------------------------


class EnrollRequest(Message):
    name: Name


class Enrolled(Message):
    """A new member; its ``token`` is shown this once (only its hash is stored)."""

    id: int
    name: Name
    token: str


class MemberInfo(Message):
    id: int
    name: Name
    revoked: bool
    online: bool
    identity: str | None = None
    """Fingerprint of the member's registered secure-aggregation signing key (the first 16
    hex digits of its SHA-256; the member logs the same when it starts), ``None``: none yet."""


class Revoked(Message):
    name: Name
    revoked: bool = True


class SubmitRequest(Message):
    spec: dict[str, Any]
    source: Annotated[str, Field(max_length=1_000_000, pattern=r"^[^\x00]*$")] | None = None


JobStatusName = Literal["queued", "running", "completed", "failed", "cancelled"]
TERMINAL: tuple[JobStatusName, ...] = ("completed", "failed", "cancelled")


class JobSummary(Message):
    id: JobId
    name: str
    status: JobStatusName
    round: Round
    created_at: float


class RoundProgress(Message):
    """The open round: its stage and how many sampled members have reported.

    Under client-level DP the counts are ``None``: how many members a Poisson
    sample drew is not covered by the noise, so it is not published.
    """

    round: Annotated[int, Field(ge=1)]
    stage: Literal["waiting", "training", "aggregating", "evaluating", "closed"]
    sampled: int | None = None
    reported: int | None = None


class RoundRecord(BaseModel):
    """One closed round as the coordinator recorded it.

    The named fields are always there; further keys are metrics (privacy
    accounting, federated evaluation, members' training metrics). Under
    differential privacy ``participants`` is empty and only what the
    accountant covers is published (``fedaas.server.disclosure``); under
    client-level DP ``clients``, ``bytes_up`` and ``bytes_down`` are ``None``.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    round: Annotated[int, Field(ge=1)]
    accuracy: float | None = None
    loss: float | None = None
    clients: int | None = None
    seconds: float
    bytes_up: int | None = None
    bytes_down: int | None = None
    participants: list[str] = Field(default_factory=list)


class Waiting(Message):
    """A dependency the coordinator is waiting for: the job is paused, nothing is lost."""

    dependency: str
    since: float
    error: str


class JobStatus(Message):
    """Everything the operator may know about a job."""

    id: JobId
    name: str
    status: JobStatusName
    reason: str | None = None
    round: Round
    rounds_total: int
    current: RoundProgress | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    declined: dict[str, str] = Field(default_factory=dict)
    spec: JobSpec
    source: str | None = None
    rounds: list[RoundRecord] = Field(default_factory=list)
    waiting_for: list[Waiting] = Field(default_factory=list)
    """While the job is paused by an outage: what it waits for, since when."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL


class Health(Message):
    """Liveness (``GET /v1/health``): the process answers HTTP."""

    status: Literal["ok"] = "ok"
    version: str


class Readiness(Message):
    """Readiness (``GET /v1/ready``): every dependency answers; 503 when one does not.

    ``checks`` names each dependency (``database``, ``artifacts``,
    ``supervisor``, ``accepting``) with ``ok`` or the reason it is not.
    """

    status: Literal["ready", "not_ready"]
    version: str
    checks: dict[str, str]


class ErrorBody(Message):
    """Every error answer: a machine-readable ``error`` code and a human ``detail``."""

    error: str
    detail: str
