"""The database schema is made by Alembic migrations and matches the models, on both backends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from fedaas.server.db import Base, Job, Store
from fedaas.server.migrations import alembic_config


def _url(db_url: str | None, tmp_path: Path) -> str:
    return db_url or f"sqlite:///{tmp_path / 'fedaas.db'}"


def _diff(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_one_linear_history() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    assert len(script.get_heads()) == 1, "migrations must form one line: merge the heads"
    revisions = list(script.walk_revisions())
    assert [r.revision for r in reversed(revisions)][0] == "0001"
    for r in revisions:
        assert r.revision.isdigit() and len(r.revision) == 4, r.revision


def test_migrated_schema_matches_the_models(db_url: str | None, tmp_path: Path) -> None:
    """If this fails, db.py changed without a migration: see fedaas/server/migrations/__init__.py."""
    url = _url(db_url, tmp_path)
    store = Store(url)
    store.engine.dispose()
    assert _diff(url) == []
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()


def test_upgrade_is_idempotent_and_keeps_data(db_url: str | None, tmp_path: Path) -> None:
    url = _url(db_url, tmp_path)
    store = Store(url)
    store.add_member("alpha", "0" * 64)
    store.engine.dispose()
    again = Store(url)
    assert [m.name for m in again.members()] == ["alpha"]
    again.engine.dispose()


def test_downgrade_to_nothing_and_back(db_url: str | None, tmp_path: Path) -> None:
    url = _url(db_url, tmp_path)
    engine = create_engine(url)
    with engine.begin() as connection:
        config = alembic_config(connection)
        command.upgrade(config, "head")
        command.downgrade(config, "base")
        assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
        command.upgrade(config, "head")
    engine.dispose()
    assert _diff(url) == []


def test_a_database_from_before_migrations_is_adopted(tmp_path: Path) -> None:
    """A state folder made by ``create_all`` (before Alembic) is stamped and kept."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO members (name, token_hash, created_at) VALUES ('alpha', :h, 1.0)"),
            {"h": "1" * 64},
        )
    engine.dispose()
    store = Store(url)
    assert [m.name for m in store.members()] == ["alpha"]
    with store.engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    store.engine.dispose()


def test_specs_stored_before_the_privacy_variants_still_load(
    db_url: str | None, tmp_path: Path
) -> None:
    """A queued job whose spec was dumped by the flat [privacy] section resumes after upgrade."""
    url = _url(db_url, tmp_path)
    flat_defaults = {
        "placement": "central",
        "unit": "client",
        "clip_norm": 1.0,
        "adaptive_clipping": False,
        "target_quantile": 0.5,
        "clip_lr": 0.2,
        "delta": 1e-5,
        "accountant": "pld",
        "reproducible": False,
    }
    base = {
        "job": {"name": "old", "rounds": 2, "seed": 0},
        "model": {"name": "logreg", "hidden": [], "options": {}},
        "data": {"features": 4, "classes": 3},
    }
    stored = {
        "none": {**flat_defaults, "mechanism": "none"},
        "ou": {**flat_defaults, "mechanism": "ou", "noise_multiplier": 2.0, "theta": 0.5},
        "record": {
            **flat_defaults,
            "mechanism": "gaussian",
            "unit": "record",
            "placement": "local",
            "noise_multiplier": 1.0,
        },
        "wrong": {"mechanism": "gaussian", "noise_multiplier": 1.0, "theta": 0.5},
    }
    engine = create_engine(url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0001")
        for name, privacy in stored.items():
            connection.execute(
                text(
                    "INSERT INTO jobs (id, name, spec, status, round, created_at, extra) "
                    "VALUES (:id, :id, :spec, 'queued', 0, 1.0, '{}')"
                ),
                {"id": name, "spec": json.dumps({**base, "privacy": privacy})},
            )
    engine.dispose()
    store = Store(url)  # upgrades to head
    none, ou, record = (store.job(n).job_spec().privacy for n in ("none", "ou", "record"))
    assert none.mechanism == "none"
    assert (ou.mechanism, ou.theta, ou.noise_multiplier) == ("ou", 0.5, 2.0)
    assert record.unit == "record"
    wrong = json.loads(store.job("wrong").spec)["privacy"]
    assert wrong == stored["wrong"]  # only old defaults are dropped; the rest is judged as before
    store.engine.dispose()


def test_sqlite_keeps_its_pragmas(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'fedaas.db'}")
    with store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    store.engine.dispose()


@pytest.mark.parametrize("big", [2**31, 10**12])
def test_large_counts_fit_on_every_backend(db_url: str | None, tmp_path: Path, big: int) -> None:
    """num_examples may be up to 10**12 (uploads.MAX_EXAMPLES): a 32-bit column would fail on PostgreSQL."""

    store = Store(_url(db_url, tmp_path))
    member = store.add_member("alpha", "2" * 64)
    store.add_job(
        Job(
            id="job-1",
            name="j",
            spec="{}",
            status="running",
            round=0,
            created_at=1.0,
            extra="{}",
        )
    )
    update = {
        "job_id": "job-1",
        "round": 1,
        "member_id": member.id,
        "num_examples": big,
        "nbytes": big,
        "metrics": "{}",
        "received_at": 1.0,
    }
    store.close_round("job-1", 1, {"loss": 0.5}, ["alpha"], [update])
    (stored,) = store.updates_for("job-1", 1)
    assert stored.num_examples == big and stored.nbytes == big
    store.engine.dispose()


def test_start_job_does_not_undo_a_cancel(db_url: str | None, tmp_path: Path) -> None:
    """Store.start_job: the atomic 'queued/running -> running' the coordinator needs on activation."""
    store = Store(_url(db_url, tmp_path))
    for job_id, status in (("job-q", "queued"), ("job-c", "cancelled")):
        store.add_job(
            Job(id=job_id, name="j", spec="{}", status=status, round=0, created_at=1.0, extra="{}")
        )
    assert store.start_job("job-q", 5.0) is True
    assert store.job("job-q").status == "running" and store.job("job-q").started_at == 5.0
    assert store.start_job("job-q", 9.0) is True  # resumed: keeps its first start time
    assert store.job("job-q").started_at == 5.0
    assert store.start_job("job-c", 5.0) is False
    assert store.job("job-c").status == "cancelled" and store.job("job-c").started_at is None
    assert store.start_job("job-missing", 5.0) is False
    store.engine.dispose()
