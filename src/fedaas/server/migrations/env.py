"""Alembic environment: runs on the connection that :class:`~fedaas.server.db.Store` passes in."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from fedaas.server.db import Base

config = context.config


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite's ALTER TABLE is limited
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("fedaas migrations run online only (Store upgrades on start)")

connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # `alembic -x`-style use with a URL in the config
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()
