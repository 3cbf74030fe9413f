"""The ``[strategy]`` section of a job spec: the server optimizer and the aggregation rule.

The optimizer (``name``, ``server_lr``, ``beta1``, ``beta2``, ``tau``) steps
on the round's combined update; ``aggregator`` says how the members' updates
are combined (:mod:`fedaas.algorithms.robust`,
:mod:`fedaas.algorithms.screening`). :func:`robust_rules_fit` checks the
rule against the rest of the job (enough members per round, privacy that
keeps each update private on its own).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from fedaas.spec_privacy import PrivacyGaussian, PrivacyOU
from fedaas.spec_section import Section as _Section

AGGREGATORS = ("mean", "median", "trimmed_mean", "krum", "screened_mean")
NEEDS_2F_3 = ("krum", "screened_mean")
"""Rules that score updates by Krum (``n > 2f + 2`` updates per round)."""


class StrategySection(_Section):
    """How the coordinator turns the members' mean update into the next global model.

    ``fedavg`` (McMahan et al. 2017; ``server_lr`` other than 1 makes it server
    SGD), ``fedavgm`` (server momentum ``beta1``), ``fedadagrad``,
    ``fedadam``, ``fedyogi`` (adaptive server optimizers, Reddi et al. ICLR
    2021, with ``beta1``, ``beta2``, ``tau``). ``server_lr`` defaults to 1
    for ``fedavg``/``fedavgm`` and 0.01 for the adaptive ones. The robust
    ``aggregator`` options replace the weighted mean that the optimizer steps on.
    """

    name: Literal["fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi"] = "fedavg"
    server_lr: Annotated[float, Field(gt=0, le=100)] | None = None
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: Annotated[float, Field(gt=0, le=10)] = 1e-3
    aggregator: Literal["mean", "median", "trimmed_mean", "krum", "screened_mean"] = "mean"
    """How the round's updates become the mean delta: the weighted ``mean`` (FedAvg),
    coordinate-wise ``median``, ``trimmed_mean`` (``trim`` at each end), ``krum``
    (``byzantine`` = f, ``krum_select`` = m > 1 for Multi-Krum) or ``screened_mean``
    (FedAvg of the updates left after ``byzantine`` = f are screened out by Krum score
    and cosine to the robust centre, :mod:`fedaas.algorithms.screening`)."""
    trim: Annotated[float, Field(gt=0, lt=0.5)] = 0.2
    byzantine: Annotated[int, Field(ge=0, le=10_000)] = 1
    krum_select: Annotated[int, Field(ge=1, le=100_000)] = 1
    norm_bound: Annotated[float, Field(gt=0, le=1e12)] | None = None
    """Clip every update to this L2 norm (Sun et al. 2019); unset: 10x the round's median."""

    @model_validator(mode="after")
    def _meaningful(self) -> StrategySection:
        unused = {"fedavg": ("beta1", "beta2", "tau"), "fedavgm": ("beta2", "tau")}
        only = {"trim": ("trimmed_mean",), "byzantine": NEEDS_2F_3, "krum_select": ("krum",)}
        fields = type(self).model_fields
        given = [k for k in unused.get(self.name, ()) if getattr(self, k) != fields[k].default]
        if given:
            raise ValueError(f"strategy '{self.name}' does not use {', '.join(given)}")
        stray = [
            k
            for k, rules in only.items()
            if self.aggregator not in rules and getattr(self, k) != fields[k].default
        ]
        if stray:
            raise ValueError(f"aggregator '{self.aggregator}' does not use {', '.join(stray)}")
        return self

    @property
    def lr(self) -> float:
        if self.server_lr is not None:
            return self.server_lr
        return 1.0 if self.name in ("fedavg", "fedavgm") else 0.01


def robust_rules_fit(spec: Any) -> Any:
    """``JobSpec`` validator: the rule has enough updates and each update is private alone."""
    rule, fed = spec.strategy, spec.federation
    if rule.aggregator in NEEDS_2F_3 and fed.min_clients < 2 * rule.byzantine + 3:
        raise ValueError(
            f"strategy: {rule.aggregator} with byzantine = {rule.byzantine} needs more than "
            f"{2 * rule.byzantine + 2} updates per round: set federation.min_clients >= "
            f"{2 * rule.byzantine + 3}"
        )
    placement = getattr(spec.privacy, "placement", "local")
    client_level = isinstance(spec.privacy, PrivacyGaussian | PrivacyOU)
    if rule.aggregator != "mean" and client_level and placement != "local":
        raise ValueError(
            f"strategy: aggregator '{rule.aggregator}' combines the updates one by one, but "
            f"privacy placement '{placement}' makes only their sum private: use placement "
            "'local' (each update private on its own) or aggregator 'mean'"
        )
    return spec
