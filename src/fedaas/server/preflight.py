"""Problems with a job that can be seen before it runs, while they are cheap.

A job whose quorum (``min_clients``) exceeds the members enrolled can never
close a round: without this check it waits ``round_timeout``, or trains a
round and then fails it. A job without any evaluation trains blind: its
rounds report no accuracy and no loss. :func:`preflight` names both, for the
CLI's ``job submit`` (a warning, or a refusal with ``--strict``) and the
dashboard's submit page. Pure: it reads the spec and the member list only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedaas.protocol import MemberInfo
from fedaas.spec import JobSpec


@dataclass
class Preflight:
    """``blocking``: the job cannot start as things stand; ``notes``: it runs, but look."""

    blocking: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def all(self) -> list[str]:
        return [*self.blocking, *self.notes]


def preflight(spec: JobSpec, members: list[MemberInfo]) -> Preflight:
    """What stands in the way of ``spec`` with these members (revoked ones do not count)."""
    found = Preflight()
    active = [m for m in members if not m.revoked]
    online = [m for m in active if m.online]
    need = spec.federation.min_clients
    if len(active) < need:
        found.blocking.append(
            f"federation.min_clients is {need} but only {len(active)} member(s) are enrolled: "
            f"no round can reach its quorum (enroll more members or lower min_clients)"
        )
    elif len(online) < need:
        found.blocking.append(
            f"federation.min_clients is {need} but only {len(online)} of {len(active)} enrolled "
            f"member(s) are online: the job waits up to round_timeout "
            f"({spec.federation.round_timeout:g} s) for more, then fails"
        )
    per_round = spec.federation.clients_per_round
    if per_round is not None and per_round > len(active) >= need:
        found.notes.append(
            f"federation.clients_per_round is {per_round} but only {len(active)} member(s) are "
            f"enrolled: each round samples all of them"
        )
    if spec.evaluation.holdout is None and spec.evaluation.validation_split == 0:
        found.notes.append(
            "the job has no evaluation (neither evaluation.holdout nor "
            "evaluation.validation_split): its rounds will report no accuracy or loss"
        )
    return found
