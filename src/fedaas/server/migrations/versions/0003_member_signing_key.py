"""Members' long-term signing keys (secure aggregation).

Each member registers one Ed25519 public key (32 bytes, stored as 64 hex
characters); the coordinator relays it with the member's round keys so its
peers check the round keys' signatures (:mod:`fedaas.server.secagg`).
Nullable: members enrolled before, or that never took part in a secure
round, have none.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a pre-Alembic database made by a newer ``create_all`` (stamped 0001) may have it already
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("members")}
    if "signing_key" in columns:
        return
    with op.batch_alter_table("members") as batch:
        batch.add_column(sa.Column("signing_key", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("members") as batch:
        batch.drop_column("signing_key")
