"""``python -m fedaas.server.migrations "what changed"``: write the next migration.

Upgrades a scratch SQLite database to the current head, compares it with the
models in ``fedaas/server/db.py`` and writes ``versions/NNNN_<slug>.py`` with
the difference (autogenerate). Review the file before committing it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from fedaas.server.migrations import alembic_config


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].strip():
        print('usage: python -m fedaas.server.migrations "what changed"', file=sys.stderr)
        return 2
    message = argv[0].strip()
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    number = max((int(h) for h in heads if h.isdigit()), default=0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'scratch.db'}")
        with engine.begin() as connection:
            config = alembic_config(connection)
            ruff = Path(sys.executable).with_name("ruff")
            if ruff.exists():  # format the new file the way the project does
                config.set_section_option("post_write_hooks", "hooks", "ruff")
                config.set_section_option("post_write_hooks", "ruff.type", "exec")
                config.set_section_option("post_write_hooks", "ruff.executable", str(ruff))
                config.set_section_option(
                    "post_write_hooks", "ruff.options", "format REVISION_SCRIPT_FILENAME"
                )
            command.upgrade(config, "head")
            script = command.revision(
                config, message=message, autogenerate=True, rev_id=f"{number:04d}"
            )
        engine.dispose()
    assert script is not None and not isinstance(script, list)
    print(script.path)  # versions/NNNN_<slug>.py
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
