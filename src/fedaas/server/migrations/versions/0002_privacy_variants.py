"""Stored job specs: drop the [privacy] defaults that the privacy variants no longer accept.

Before the ``[privacy]`` section became a discriminated union (one variant
per mechanism, each with only its own keys), ``JobSpec.to_dict`` wrote
every privacy key at its default whatever the mechanism (e.g.
``placement = "central"`` for ``mechanism = "none"``). Such a stored spec
would no longer load, so a queued or running job could not resume. This
drops exactly those keys whose value is the old default and that the row's
variant does not have; anything else is left for validation to judge. The
variants' keys are frozen here as they were when this revision was written.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OLD_DEFAULTS: dict[str, Any] = {
    "placement": "central",
    "unit": "client",
    "clip_norm": 1.0,
    "adaptive_clipping": False,
    "target_quantile": 0.5,
    "clip_lr": 0.2,
    "delta": 1e-05,
    "accountant": "pld",
    "reproducible": False,
}
_COMMON = {"mechanism", "unit", "placement", "clip_norm", "noise_multiplier", "delta"}
_COMMON |= {"epsilon_budget", "accountant", "reproducible"}
VARIANT_KEYS: dict[str, set[str]] = {
    "none": {"mechanism"},
    "gaussian": _COMMON | {"adaptive_clipping", "target_quantile", "clip_lr"},
    "ou": _COMMON | {"theta"},
    "record": set(_COMMON),
}


def upgrade_privacy_table(table: dict[str, Any]) -> dict[str, Any]:
    unit, mechanism = table.get("unit", "client"), table.get("mechanism", "none")
    tag = "record" if unit == "record" else mechanism
    keys = VARIANT_KEYS.get(tag)
    if keys is None:
        return table
    return {
        key: value
        for key, value in table.items()
        if key in keys or key not in OLD_DEFAULTS or OLD_DEFAULTS[key] != value
    }


def upgrade() -> None:
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("spec", sa.Text))
    connection = op.get_bind()
    for job_id, text in connection.execute(sa.select(jobs.c.id, jobs.c.spec)).all():
        try:
            spec = json.loads(text)
        except json.JSONDecodeError:
            continue
        privacy = spec.get("privacy") if isinstance(spec, dict) else None
        if not isinstance(privacy, dict):
            continue
        upgraded = upgrade_privacy_table(privacy)
        if upgraded != privacy:
            spec["privacy"] = upgraded
            connection.execute(
                jobs.update().where(jobs.c.id == job_id).values(spec=json.dumps(spec))
            )


def downgrade() -> None:
    """Nothing to undo: the dropped keys held the defaults the old section assumed anyway."""
