"""The job specification: what a federation trains, on what data, and how.

A job is written as TOML (see ``examples/digits.toml``) and validated here with
pydantic. Every section forbids unknown keys so that a typo such as ``lr_rate``
is reported instead of silently ignored; :class:`SpecError` turns pydantic's
errors into one line per problem, each naming the offending key.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

# the [privacy] section, a union of variants, has its own module; its names are ours too
from fedaas.spec_privacy import PrivacyGaussian as PrivacyGaussian
from fedaas.spec_privacy import PrivacyNone, PrivacySection, privacy_problem
from fedaas.spec_privacy import PrivacyOU as PrivacyOU
from fedaas.spec_privacy import PrivacyRecord as PrivacyRecord
from fedaas.spec_secagg import SecureAggregationSection, secure_aggregation_fits
from fedaas.spec_section import Section as _Section

# [strategy] has its own module; its name is ours too
from fedaas.spec_strategy import StrategySection as StrategySection
from fedaas.spec_strategy import robust_rules_fit

# [train] and [evaluation] have their own module; their names are ours too
from fedaas.spec_train import EvaluationSection as EvaluationSection
from fedaas.spec_train import TrainSection as TrainSection
from fedaas.spec_train import train_problems

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
BUILTIN_MODELS = ("logreg", "mlp", "cnn")


class SpecError(ValueError):
    """A job specification that cannot be accepted; ``problems`` lists each issue."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid job spec: " + "; ".join(problems))


MAX_ROUNDS = 100_000
"""The most rounds a job may have."""


class JobSection(_Section):
    """Identity and length of the job."""

    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[\w.\- ]+$")]
    rounds: Annotated[int, Field(ge=1, le=MAX_ROUNDS)]
    seed: Annotated[int, Field(ge=0, lt=2**63)] = 0


class ModelSection(_Section):
    """Which ``torch.nn.Module`` to train.

    ``name`` is a built-in (``logreg``, ``mlp``, ``cnn`` for images: ``hidden``
    = its channels, default ``[16, 32]``) or ``package.module:factory``,
    a callable that takes ``features=``, ``classes=`` and ``**options`` and
    returns a module. Input and output sizes always come from ``[data]``.
    """

    name: str
    hidden: list[Annotated[int, Field(ge=1, le=65_536)]] = Field(default_factory=list)
    options: dict[str, int | float | str | bool | list[int]] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value in BUILTIN_MODELS or _FACTORY.match(value):
            return value
        raise ValueError(
            f"unknown model {value!r}: use one of {', '.join(BUILTIN_MODELS)} "
            "or 'package.module:factory'"
        )

    @model_validator(mode="after")
    def _hidden_only_for_mlp(self) -> ModelSection:
        if self.name == "mlp" and not self.hidden:
            raise ValueError("mlp needs at least one hidden size, e.g. hidden = [64]")
        if self.name == "logreg" and self.hidden:
            raise ValueError("logreg has no hidden layers; remove 'hidden'")
        return self


_Name = Annotated[str, Field(min_length=1, max_length=200)]


class DataSection(_Section):
    """The schema every member's data must match before it may train.

    ``format``: ``auto`` (from the file name), ``npz`` (arrays ``x``, ``y``),
    ``parquet``, ``csv`` or ``images`` (one subfolder per class).
    ``feature_columns``: for tables, the exact column names (one per feature)
    or a prefix ``p`` meaning ``p0 .. p{features-1}`` (default ``x``);
    ``label_column`` (default ``y``). ``image_size`` (width, height) and
    ``image_mode`` (``L`` or ``RGB``) for image folders.
    """

    features: Annotated[int, Field(ge=1, le=10_000_000)]
    classes: Annotated[int, Field(ge=2, le=100_000)] | None = None
    """Classes of a classification (binary: 2); omitted for a regression (real labels)."""
    format: Literal["auto", "npz", "parquet", "csv", "images"] = "auto"
    feature_columns: list[_Name] | _Name | None = None
    label_column: _Name = "y"
    image_size: (
        Annotated[list[Annotated[int, Field(ge=1, le=65536)]], Field(min_length=2, max_length=2)]
        | None
    ) = None
    image_mode: Literal["L", "RGB"] | None = None

    @model_validator(mode="after")
    def _columns_fit(self) -> DataSection:
        if isinstance(self.feature_columns, list) and len(self.feature_columns) != self.features:
            raise ValueError(
                f"feature_columns names {len(self.feature_columns)} columns, "
                f"features is {self.features}"
            )
        return self


class FederationSection(_Section):
    """Who takes part in a round and when a round closes.

    Give either ``clients_per_round`` (a count) or ``fraction`` (of enrolled
    members); the default is every member. A round closes as soon as every
    sampled member has reported, or at ``round_timeout`` seconds if at least
    ``min_clients`` have; otherwise the job fails with the reason.
    """

    clients_per_round: Annotated[int, Field(ge=1, le=100_000)] | None = None
    fraction: Annotated[float, Field(gt=0, le=1)] | None = None
    min_clients: Annotated[int, Field(ge=1, le=100_000)] = 1
    round_timeout: Annotated[float, Field(gt=0, le=7 * 24 * 3600)] = 300.0
    max_examples_per_member: Annotated[int, Field(ge=1, le=10**12)] | None = None
    """A ceiling on the example count one member may claim as its FedAvg weight; the weight is
    also capped at 3x the round's median claim (:class:`fedaas.algorithms.robust.ExampleCap`)."""

    @model_validator(mode="after")
    def _consistent(self) -> FederationSection:
        if self.clients_per_round is not None and self.fraction is not None:
            raise ValueError("give clients_per_round or fraction, not both")
        if self.clients_per_round is not None and self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min_clients ({self.min_clients}) exceeds clients_per_round "
                f"({self.clients_per_round})"
            )
        return self


class TrackingSection(_Section):
    """Experiment tracking: the coordinator logs the job to MLflow as it runs.

    ``mlflow``: a tracking URI (``http(s)://`` server, ``sqlite:///path/mlflow.db``
    or ``file:///folder``); the job's parameters, every round's metrics and
    the final model go to one run in ``experiment`` (default ``fedaas``).
    Credentials never go in the URI (members receive the spec): use MLflow's
    environment variables (``MLFLOW_TRACKING_TOKEN``, ...) on the coordinator.
    """

    mlflow: Annotated[str, Field(min_length=1, max_length=4096)] | None = None
    experiment: Annotated[str, Field(min_length=1, max_length=200)] = "fedaas"

    @field_validator("mlflow")
    @classmethod
    def _no_credentials(cls, value: str | None) -> str | None:
        if value is not None and re.match(r"^[a-z][a-z0-9+.\-]*://[^/@]*@", value):
            raise ValueError("credentials do not belong in the URI (use MLflow's env variables)")
        if value is not None and not re.match(r"^(https?|sqlite|file|postgresql[+\w]*)://", value):
            raise ValueError("use an http(s)://, sqlite://, file:// or postgresql:// URI")
        return value


class JobSpec(_Section):
    """A complete, validated job."""

    job: JobSection
    model: ModelSection
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    federation: FederationSection = Field(default_factory=FederationSection)
    strategy: StrategySection = Field(default_factory=StrategySection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    privacy: PrivacySection = Field(default_factory=PrivacyNone)
    tracking: TrackingSection | None = None
    secure_aggregation: SecureAggregationSection = Field(default_factory=SecureAggregationSection)
    _secure_fits = model_validator(mode="after")(secure_aggregation_fits)

    @model_validator(mode="after")
    def _train_fits(self) -> JobSpec:
        problems = train_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    _robust_fits = model_validator(mode="after")(robust_rules_fit)

    @model_validator(mode="after")
    def _no_federated_evaluation_under_dp(self) -> JobSpec:
        if self.evaluation.validation_split > 0 and not isinstance(self.privacy, PrivacyNone):
            raise ValueError(
                "evaluation: validation_split (federated evaluation) has each member report its "
                "unnoised validation loss and accuracy, which no privacy accounting covers: "
                "under [privacy] evaluate on the coordinator's holdout instead"
            )
        return self

    def clients_for_round(self, available: int) -> int:
        """How many members to sample from ``available`` enrolled ones."""
        fed = self.federation
        if fed.clients_per_round is not None:
            return fed.clients_per_round
        if fed.fraction is not None:
            return max(1, round(fed.fraction * available))
        return max(available, fed.min_clients)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_spec(data: dict[str, Any]) -> JobSpec:
    """Validate a mapping (parsed TOML or JSON) into a :class:`JobSpec`."""
    if not isinstance(data, dict):
        raise SpecError(["the job spec must be a table of sections"])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc, message = err["loc"], ""
            if loc and loc[0] == "privacy":
                loc, message = privacy_problem(loc, err)
            where = _location(loc)
            if message:
                problems.append(f"{where}: {message}")
            elif err["type"] == "extra_forbidden":
                problems.append(f"{where}: unknown key")
            elif err["type"] == "missing":
                problems.append(f"{where}: required key is missing")
            elif not loc:  # a check across sections names its own keys
                problems.append(err["msg"].removeprefix("Value error, "))
            else:
                msg = err["msg"].removeprefix("Value error, ")
                got = repr(err.get("input"))
                got = got if len(got) <= 60 else got[:57] + "..."
                problems.append(f"{where}: {msg} (got {got})")
        raise SpecError(problems) from None


def loads_spec(text: str) -> JobSpec:
    """Parse TOML text into a validated :class:`JobSpec`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError([f"not valid TOML: {exc}"]) from None
    return parse_spec(data)


def read_spec_source(path: str | Path) -> str:
    """The text of a spec file; :class:`SpecError` when it cannot be read as UTF-8 text."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"cannot read {path}: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise SpecError(
            [f"{path} is not UTF-8 text (byte {exc.start}); a job spec is a TOML file"]
        ) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read and validate a job spec from a TOML file."""
    return loads_spec(read_spec_source(path))
