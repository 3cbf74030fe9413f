"""What the coordinator accepts, keeps and publishes about members, for each privacy setting.

A differential privacy guarantee covers only what went through the
accounted mechanism (DP-FedAvg, McMahan et al., ICLR 2018,
arXiv:1710.06963; DP-SGD, Abadi et al., CCS 2016, arXiv:1607.00133).
Anything else a member sends, or the coordinator stores and publishes in
the clear, can undo it: a member's example count alone makes record-level
epsilon infinite (adding one record changes it), its training loss is an
unnoised function of its records, and the names of a round's participants
void amplification by subsampling. So, under DP, this module keeps to what
the accountant covers:

============================  =====================  =========================
                              client level           record level
============================  =====================  =========================
member sends                  the clipped (noised)   the DP-SGD update, its
                              update; the unclipped  record-level epsilon (and
                              bit only with          next-round epsilon)
                              adaptive clipping
refused in an upload          num_examples, metrics, num_examples, training
                              unclipped bit (unless  metrics, unclipped bit
                              adaptive clipping)
stored receipts               none                   none
round record                  model metrics on the   + member count, bytes
                              coordinator's held-out
                              data, epsilon, delta,
                              clip norm, sampling
participants                  never                  never
member/byte counts            hidden                 published
============================  =====================  =========================

An upload that carries a refused field is rejected (``400``
``invalid_update`` with the reason), not silently trimmed: a member that
sends them is misconfigured or out of date, and its operator should know.
Without DP everything is accepted and published as before.
"""

from __future__ import annotations

from typing import Any

from fedaas.protocol import UpdateMetadata
from fedaas.server.errors import InvalidRequest
from fedaas.spec_privacy import PrivacyGaussian, PrivacyOU, PrivacyRecord

RECORD_METRICS = frozenset({"record_epsilon", "record_epsilon_next"})
"""The only member metrics a record-level upload may carry (its own accounting)."""

CLIENT_LEVEL_PUBLISHED = frozenset(
    {
        "accuracy",  # the coordinator's held-out evaluation of the noised model
        "loss",
        "epsilon",
        "delta",
        "clip_norm",
        "private",
        "sampling_rate",
        "population",
        "amplification",
        "amplification_note",
        "seconds",
    }
)
RECORD_LEVEL_PUBLISHED = frozenset(
    {
        "accuracy",
        "loss",
        "record_epsilon",
        "record_epsilon_next",
        "delta",
        "private",
        "clients",
        "seconds",
        "bytes_up",
        "bytes_down",
    }
)
COUNTS = ("clients", "bytes_up", "bytes_down")


class Disclosure:
    """The disclosure rules of one job's privacy setting (see the module docstring)."""

    def __init__(self, cfg: Any) -> None:
        self.level = "none"
        self.adaptive = False
        if isinstance(cfg, PrivacyGaussian | PrivacyOU):
            self.level = "client"
            self.adaptive = isinstance(cfg, PrivacyGaussian) and cfg.adaptive_clipping
        elif isinstance(cfg, PrivacyRecord):
            self.level = "record"

    @property
    def private(self) -> bool:
        return self.level != "none"

    @property
    def hides_counts(self) -> bool:
        """Client level: how many members were sampled or reported is not published."""
        return self.level == "client"

    def check_update(self, meta: UpdateMetadata) -> None:
        """Refuse an upload's metadata that this setting does not allow (``InvalidRequest``)."""
        if self.level == "none":
            if meta.num_examples is None:
                raise InvalidRequest(
                    "metadata num_examples is required without differential privacy "
                    "(it is the update's FedAvg weight)",
                    "invalid_update",
                )
            return
        extra = []
        if meta.num_examples is not None:
            extra.append("num_examples")
        allowed = RECORD_METRICS if self.level == "record" else frozenset()
        extra += [f"metrics.{k}" for k in sorted(meta.metrics) if k not in allowed]
        if meta.unclipped is not None and not self.adaptive:
            extra.append("unclipped")
        if self.adaptive and meta.unclipped is None:
            raise InvalidRequest(
                "metadata unclipped is required: the job uses adaptive clipping",
                "invalid_update",
            )
        if extra:
            raise InvalidRequest(
                f"under {self.level}-level differential privacy an update may not carry "
                f"{', '.join(extra)}: no noise covers them (update the member agent)",
                "invalid_update",
            )

    @property
    def keeps_receipts(self) -> bool:
        """Per-member receipts (who reported, with what) are stored only without DP."""
        return self.level == "none"

    def participants(self, names: list[str]) -> list[str]:
        """The participants to publish: none under DP."""
        return names if self.level == "none" else []

    def published(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """The round record's metrics, cut to what this setting may publish."""
        if self.level == "none":
            return metrics
        allowed = CLIENT_LEVEL_PUBLISHED if self.level == "client" else RECORD_LEVEL_PUBLISHED
        kept = {k: v for k, v in metrics.items() if k in allowed}
        for key in COUNTS:
            kept.setdefault(key, None)  # the round record always names them
        kept.setdefault("accuracy", None)
        kept.setdefault("loss", None)
        return kept
