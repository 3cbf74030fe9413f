"""Schema migrations of the coordinator's database (Alembic).

:class:`fedaas.server.db.Store` runs ``alembic upgrade head`` on every start,
so a coordinator brings an older database (SQLite or PostgreSQL) up to date
by itself. A database made before migrations existed (by ``create_all``) is
recognised and stamped at ``0001`` first.

To change the schema:

1. edit the models in ``fedaas/server/db.py``;
2. run ``python -m fedaas.server.migrations "add jobs.priority"``: it upgrades
   a scratch SQLite database to the current head, compares it with the
   models and writes ``versions/NNNN_add_jobs_priority.py``;
3. read the generated file (autogenerate misses renames and server defaults;
   a new NOT NULL column on a table with rows needs a ``server_default``),
   then run the tests: ``tests/server/test_migrations.py`` fails while the
   models and the migrated schema differ, on SQLite and on PostgreSQL.

Revision ids are the zero-padded sequence number (``0001``, ``0002`` ...).
"""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for these migrations, running on ``connection`` if given."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.set_main_option("version_locations", str(HERE / "versions"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config
