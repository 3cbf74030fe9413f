"""The coordinator lease: fencing for the database lock.

One row (``id`` 1) whose ``epoch`` goes up by one each time a coordinator
takes the database; a coordinator's writes are refused once the epoch is no
longer the one it took (:meth:`fedaas.server.db.Store.take_lease`).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    columns = (
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("taken_at", sa.Float(), nullable=False),
    )
    # as 0003: a database made by a newer ``create_all`` (stamped 0001) may have the table
    # already, maybe without its row
    if "coordinator_lease" in sa.inspect(bind).get_table_names():
        lease = sa.table("coordinator_lease", *(sa.column(c.name) for c in columns))
        if bind.execute(sa.select(sa.func.count()).select_from(lease)).scalar():
            return
    else:
        lease = op.create_table(
            "coordinator_lease",
            *columns,
            sa.PrimaryKeyConstraint("id", name=op.f("pk_coordinator_lease")),
        )
    op.bulk_insert(lease, [{"id": 1, "epoch": 0, "holder": "", "taken_at": 0.0}])


def downgrade() -> None:
    op.drop_table("coordinator_lease")
