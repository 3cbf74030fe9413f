"""The member's own policy: which jobs it takes part in, whatever the coordinator asks.

A federation of organizations cannot ask each member to trust the operator
of the coordinator. The member's operator writes a policy file
(``fedaas member --policy member.toml``) and the agent checks every job's
spec against it before it touches a record:

.. code-block:: toml

    [models]
    accept = ["mlp", "mypkg.nets:small"]  # default: the built-ins, plus allowed code
    max_parameters = 5_000_000            # default: the coordinator's own cap (250M)
    max_rounds = 200

    [code]
    allow = ["mypkg"]                     # packages whose factories, train_step and
                                          # eval_step may run (+ --allow-code)

    [privacy]
    required = true                       # no job without differential privacy
    mechanisms = ["gaussian"]             # of "none", "gaussian", "ou"
    units = ["record"]                    # of "client", "record"
    placements = ["local"]                # of "central", "distributed", "local"
    min_noise_multiplier = 1.0
    max_epsilon = 8.0                     # per dataset, all jobs (record and client level)
    max_delta = 1e-5
    reproducible = false                  # refuse seeded (NOT private) noise
    secure_aggregation = false            # true: only jobs with [secure_aggregation] enabled

Every key is optional; no file means the default policy: built-in models
only, at most :data:`~fedaas.models.registry.MAX_PARAMETERS` parameters, any
privacy the coordinator chose. A bad file is one clear line
(:class:`PolicyError`). What the member accepted is then pinned per job
(:mod:`fedaas.client.pinning`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fedaas.models.registry import MAX_PARAMETERS, code_allowed
from fedaas.spec import JobSpec, PrivacyNone

_PACKAGE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
Package = Annotated[str, Field(pattern=_PACKAGE, max_length=200)]
"""A package or module name (``mypkg``, ``mypkg.models``): never a path."""


class PolicyError(ValueError):
    """The member's policy file cannot be used; the message is one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelsPolicy(_Section):
    accept: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    max_parameters: Annotated[int, Field(ge=1)] = MAX_PARAMETERS
    max_rounds: Annotated[int, Field(ge=1)] | None = None


class CodePolicy(_Section):
    allow: list[Package] = Field(default_factory=list)


class PrivacyPolicy(_Section):
    required: bool = False
    mechanisms: list[Literal["none", "gaussian", "ou"]] | None = None
    units: list[Literal["client", "record"]] | None = None
    placements: list[Literal["central", "distributed", "local"]] | None = None
    min_noise_multiplier: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    max_epsilon: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    max_delta: Annotated[float, Field(gt=0, lt=1)] | None = None
    reproducible: bool = True
    secure_aggregation: bool = False


class MemberPolicy(_Section):
    """What this member takes part in; see the module docstring for the file."""

    models: ModelsPolicy = Field(default_factory=ModelsPolicy)
    code: CodePolicy = Field(default_factory=CodePolicy)
    privacy: PrivacyPolicy = Field(default_factory=PrivacyPolicy)

    def with_code(self, packages: list[str]) -> MemberPolicy:
        """This policy with ``packages`` (``--allow-code``) added to ``[code] allow``."""
        merged = list(dict.fromkeys([*self.code.allow, *packages]))
        return self.model_copy(update={"code": CodePolicy.model_validate({"allow": merged})})

    @property
    def allowed_code(self) -> tuple[str, ...]:
        return tuple(self.code.allow)

    def problems(self, spec: JobSpec) -> list[str]:
        """Every way ``spec`` departs from this policy (empty: the member may accept it).

        The parameter count is checked where the model is built
        (:func:`fedaas.models.registry.build_model`, before any allocation).
        """
        found: list[str] = []
        name = spec.model.name
        if not code_allowed(name, self.allowed_code):
            found.append(
                f"model {name!r} is code this member's operator has not allowed "
                f"(allowed packages: {', '.join(self.allowed_code) or 'none'}; --allow-code PKG)"
            )
        for what in ("train_step", "eval_step"):  # the job's own training code
            step = getattr(spec.train, what)
            if step is not None and not code_allowed(step, self.allowed_code):
                found.append(
                    f"{what} {step!r} is code this member's operator has not allowed "
                    f"(allowed packages: {', '.join(self.allowed_code) or 'none'}; "
                    "--allow-code PKG)"
                )
        accepted = self.models.accept
        if accepted is not None and name not in accepted:
            found.append(f"model {name!r} is not one this member accepts ({', '.join(accepted)})")
        if self.models.max_rounds is not None and spec.job.rounds > self.models.max_rounds:
            found.append(
                f"the job has {spec.job.rounds} rounds; this member takes part in at most "
                f"{self.models.max_rounds}"
            )
        return found + self._privacy_problems(spec)

    def _privacy_problems(self, spec: JobSpec) -> list[str]:
        want, have = self.privacy, spec.privacy
        found: list[str] = []
        if want.secure_aggregation and not spec.secure_aggregation.enabled:
            found.append(
                "the job has no [secure_aggregation]; this member requires it (its update never "
                "reaches the coordinator unmasked)"
            )
        if isinstance(have, PrivacyNone):
            if want.required or (want.mechanisms is not None and "none" not in want.mechanisms):
                found.append("the job has no differential privacy; this member requires it")
            return found
        unit = have.unit
        for key, value, allowed in (
            ("mechanism", have.mechanism, want.mechanisms),
            ("unit", unit, want.units),
            ("placement", have.placement, want.placements),
        ):
            if allowed is not None and value not in allowed:
                found.append(f"privacy {key} {value!r} is not one this member accepts ({allowed})")
        z = have.noise_multiplier
        if want.min_noise_multiplier is not None and z < want.min_noise_multiplier:
            found.append(
                f"noise_multiplier {z:g} is below this member's minimum {want.min_noise_multiplier:g}"
            )
        if want.max_delta is not None and have.delta > want.max_delta:
            found.append(f"delta {have.delta:g} is above this member's maximum {want.max_delta:g}")
        if want.max_epsilon is not None and unit == "client":
            budget = have.epsilon_budget
            if budget is None or budget > want.max_epsilon:
                found.append(
                    f"client-level epsilon_budget {budget} is not at most this member's "
                    f"max_epsilon {want.max_epsilon:g}"
                )
        if have.reproducible and not want.reproducible:
            found.append("the job's noise is reproducible (NOT private); this member refuses it")
        return found


DEFAULT_POLICY = MemberPolicy()
"""No policy file: built-in models only, the default parameter cap, any privacy."""


def load_policy(path: Path) -> MemberPolicy:
    """Read and validate a policy file; :class:`PolicyError` (one line) when it is unusable."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise PolicyError(f"cannot read the member policy {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PolicyError(f"the member policy {path} is not valid TOML: {exc}") from None
    try:
        return MemberPolicy.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise PolicyError(f"invalid member policy {path}: {problems}") from None
