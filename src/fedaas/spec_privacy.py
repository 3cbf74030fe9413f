"""The ``[privacy]`` section of a job spec, one variant per kind of privacy.

Four variants, each with only its own keys, so that an invalid combination
(``theta`` with Gaussian noise, adaptive clipping with OU noise, a
``placement`` other than ``local`` for DP-SGD) cannot be written:
:class:`PrivacyNone` (the default), :class:`PrivacyGaussian` and
:class:`PrivacyOU` (client-level DP, DP-FedAvg) and :class:`PrivacyRecord`
(record-level DP, DP-SGD inside each member). The TOML stays flat:
``mechanism`` (``none``, ``gaussian``, ``ou``) and ``unit`` (``record``)
pick the variant. :func:`privacy_problem` turns pydantic's errors into the
one-line messages of :class:`fedaas.spec.SpecError`, without the union's tag
and saying which variant a misplaced key belongs to.

Part of the spec layer (imported by :mod:`fedaas.spec`); imports nothing of ours.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from fedaas.spec_section import Section


class _Privacy(Section):
    label: ClassVar[str]
    """How error messages name the variant."""
    absent: ClassVar[dict[str, str]] = {}
    """Why a key of another variant is refused here (default: who has it)."""


class PrivacyNone(_Privacy):
    """No differential privacy (the default): members send their plain updates."""

    label: ClassVar[str] = "mechanism 'none'"
    mechanism: Literal["none"] = "none"


def _no_noise_unless(allowed: bool) -> None:
    if not allowed:
        raise ValueError(
            "noise_multiplier = 0 adds no noise (epsilon is infinite); it is allowed only "
            "for a clipping-only gaussian baseline without epsilon_budget or adaptive_clipping"
        )


class _Noised(_Privacy):
    """Keys shared by every private variant.

    ``noise_multiplier`` is the noise std over the clip norm; the job stops
    before epsilon at ``delta`` (``accountant`` ``pld`` or ``rdp``) would
    exceed ``epsilon_budget``. ``reproducible`` draws noise from the job seed
    so that a run repeats, and marks the run as NOT private.
    """

    mechanism: Literal["none", "gaussian", "ou"]  # each variant narrows it (first in dumps)
    unit: Literal["client", "record"] = "client"
    placement: Literal["central", "distributed", "local"] = "central"
    clip_norm: Annotated[float, Field(gt=0, le=1e6)] = 1.0
    noise_multiplier: Annotated[float, Field(ge=0, le=1e6)]
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    epsilon_budget: Annotated[float, Field(gt=0, le=1e6)] | None = None
    accountant: Literal["rdp", "pld"] = "pld"
    reproducible: bool = False


class PrivacyGaussian(_Noised):
    """Client-level DP with fresh Gaussian noise every round (DP-FedAvg; McMahan et al.
    2018, arXiv:1710.06963).

    Each member clips its update to ``clip_norm`` and noise of std
    ``noise_multiplier * clip_norm`` protects the sum. ``placement``: who adds
    it, the coordinator (``central``) or each member all of it (``local``);
    ``distributed`` (each member a share) only with ``[secure_aggregation]``
    (:mod:`fedaas.spec_secagg`): otherwise the coordinator sees every
    under-noised share.
    ``adaptive_clipping`` (central only) moves the clip norm towards the
    ``target_quantile`` of update norms at rate ``clip_lr`` (Andrew et al.
    2021, arXiv:1905.03871).
    """

    label: ClassVar[str] = "mechanism 'gaussian'"
    mechanism: Literal["gaussian"]
    unit: Literal["client"] = "client"
    adaptive_clipping: bool = False
    target_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5
    clip_lr: Annotated[float, Field(gt=0, le=10)] = 0.2

    @model_validator(mode="after")
    def _consistent(self) -> PrivacyGaussian:
        _no_noise_unless(
            self.noise_multiplier > 0 or not (self.adaptive_clipping or self.epsilon_budget)
        )
        if self.adaptive_clipping and self.placement != "central":
            raise ValueError(
                "adaptive_clipping needs placement 'central' "
                "(the coordinator noises the count of unclipped updates)"
            )
        fields = type(self).model_fields
        tuned = [k for k in ("target_quantile", "clip_lr") if getattr(self, k) != fields[k].default]
        if tuned and not self.adaptive_clipping:
            raise ValueError("target_quantile and clip_lr apply only with adaptive_clipping = true")
        return self


_ADAPTIVE_OU = (
    "adaptive clipping cannot be used with mechanism 'ou': its privacy bound assumes a fixed "
    "clip_norm"
)


class PrivacyOU(_Noised):
    """Client-level DP with Ornstein-Uhlenbeck noise, correlated across rounds by ``theta``.

    At the same per-round noise it costs *more* privacy than independent
    noise (accounted with the whitening bound, see
    :mod:`fedaas.algorithms.accounting`), and it needs every member in every
    round. ``placement`` ``central`` or ``local``.
    """

    label: ClassVar[str] = "mechanism 'ou'"
    absent: ClassVar[dict[str, str]] = {
        "adaptive_clipping": _ADAPTIVE_OU,
        "target_quantile": _ADAPTIVE_OU,
        "clip_lr": _ADAPTIVE_OU,
    }
    mechanism: Literal["ou"]
    unit: Literal["client"] = "client"
    theta: Annotated[float, Field(gt=-1, lt=1)]

    @field_validator("placement")
    @classmethod
    def _not_distributed(cls, value: str) -> str:
        if value == "distributed":
            raise ValueError(
                "mechanism 'ou' needs placement 'central' or 'local': summed per-member OU "
                "noise stays an OU process only if no member ever misses a round"
            )
        return value

    @model_validator(mode="after")
    def _noised(self) -> PrivacyOU:
        _no_noise_unless(self.noise_multiplier > 0)
        return self


_RECORD = "unit 'record' (DP-SGD inside each member)"


class PrivacyRecord(_Noised):
    """Record-level DP: each member trains with DP-SGD (Abadi et al. 2016, arXiv:1607.00133).

    Every step clips each record's gradient to ``clip_norm`` and adds Gaussian
    noise inside the member (so ``mechanism`` is ``gaussian`` and
    ``placement`` ``local``); each member keeps its own ledger and refuses a
    round that would take it past ``epsilon_budget``.
    """

    label: ClassVar[str] = _RECORD
    absent: ClassVar[dict[str, str]] = {
        "adaptive_clipping": f"{_RECORD} clips per record: adaptive_clipping needs unit 'client'",
        "theta": f"{_RECORD} adds independent Gaussian noise: theta applies only to mechanism 'ou'",
    }
    mechanism: Literal["none", "gaussian", "ou"] = "gaussian"
    unit: Literal["record"]
    placement: Literal["central", "distributed", "local"] = "local"

    @field_validator("mechanism")
    @classmethod
    def _gaussian(cls, value: str) -> str:
        if value != "gaussian":
            raise ValueError(f"{_RECORD} needs mechanism 'gaussian'")
        return value

    @field_validator("placement")
    @classmethod
    def _local(cls, value: str) -> str:
        if value != "local":
            raise ValueError(f"{_RECORD} adds its noise inside each member: placement 'local'")
        return value

    @model_validator(mode="after")
    def _noised(self) -> PrivacyRecord:
        _no_noise_unless(self.noise_multiplier > 0 or self.epsilon_budget is None)
        return self


_PRIVACY_VARIANTS: dict[str, type[_Privacy]] = {
    "none": PrivacyNone,
    "gaussian": PrivacyGaussian,
    "ou": PrivacyOU,
    "record": PrivacyRecord,
}


def _privacy_tag(value: Any) -> str | None:
    """Which variant a ``[privacy]`` table is: ``unit = "record"``, else its ``mechanism``."""
    if isinstance(value, _Privacy):
        return next(tag for tag, cls in _PRIVACY_VARIANTS.items() if isinstance(value, cls))
    if not isinstance(value, dict):
        return None
    unit, mechanism = value.get("unit", "client"), value.get("mechanism", "none")
    if unit == "record":
        return "record"
    if unit != "client" or mechanism not in ("none", "gaussian", "ou"):
        return None
    return mechanism


PrivacySection = Annotated[
    Annotated[PrivacyNone, Tag("none")]
    | Annotated[PrivacyGaussian, Tag("gaussian")]
    | Annotated[PrivacyOU, Tag("ou")]
    | Annotated[PrivacyRecord, Tag("record")],
    Discriminator(
        _privacy_tag,
        custom_error_type="privacy_kind",
        custom_error_message="mechanism must be 'none', 'gaussian' or 'ou', unit 'client' or 'record'",
    ),
]
"""The ``[privacy]`` section: one of the four variants above, ``none`` by default."""


def privacy_problem(loc: tuple[int | str, ...], err: Any) -> tuple[tuple[int | str, ...], str]:
    """``(location, message)`` of a ``[privacy]`` error: no union tag, keys explained."""
    if err["type"] == "privacy_kind":
        table = err["input"]
        if not isinstance(table, dict):
            return ("privacy",), f"must be a table (got {table!r})"
        if table.get("unit", "client") not in ("client", "record"):
            return (
                "privacy",
                "unit",
            ), f"Input should be 'client' or 'record' (got {table['unit']!r})"
        got = table.get("mechanism")
        return ("privacy", "mechanism"), f"Input should be 'none', 'gaussian' or 'ou' (got {got!r})"
    if len(loc) < 2 or loc[1] not in _PRIVACY_VARIANTS:
        return loc, ""
    tag, rest = str(loc[1]), loc[2:]
    loc = ("privacy", *rest)
    if err["type"] != "extra_forbidden" or len(rest) != 1:
        return loc, ""
    key, variant = str(rest[0]), _PRIVACY_VARIANTS[tag]
    owners = [v.label for v in _PRIVACY_VARIANTS.values() if key in v.model_fields]
    if key in variant.absent:
        return loc, variant.absent[key]
    if not owners:
        return loc, "unknown key"
    if tag == "none":
        return loc, (
            f"mechanism is 'none', so {key} would have no effect: "
            "remove it or set mechanism = 'gaussian' or 'ou'"
        )
    return loc, f"unknown key for {variant.label}: {key} applies only to {' and '.join(owners)}"
