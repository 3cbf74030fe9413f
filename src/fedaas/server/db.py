"""Coordinator persistence through SQLAlchemy: members, jobs, rounds, updates.

SQLite (a file in the state folder) is the default; any SQLAlchemy URL works.
Only hashes of tokens are stored. A job row's ``round`` is the last round
whose model is durable in the artifact store; a restarted coordinator
continues from there.

Fencing: a coordinator that holds the database (:mod:`fedaas.server.db_lock`)
takes its lease (:meth:`Store.take_lease`: the ``coordinator_lease`` row's
``epoch`` goes up by one). From then on every transaction of its that writes
reads the epoch again, ``FOR SHARE``, right before it commits, and is rolled
back with :class:`StoreFenced` if another coordinator took the lease since.
The lock alone leaves a window: a database restart ends the lock's session,
and until this coordinator's watchdog notices (seconds) a second one may hold
the lock too; the epoch check closes it at every commit. Taking the lease
waits for the commits that already read the old epoch, so the new holder
reads everything the old one committed, and the old one commits nothing after.

Long because it is the one place that knows the schema and every query
the coordinator makes: how anything is stored is read here and only here.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from fedaas.spec import JobSpec, parse_spec
from fedaas.storage.errors import one_line
from fedaas.storage.redaction import redact_url


class Base(DeclarativeBase):
    # deterministic constraint names on every backend, so migrations can refer to them
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Member(Base):
    __tablename__ = "members"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    signing_key: Mapped[str | None] = mapped_column(String(64), nullable=True)  # Ed25519, hex


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    spec: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    extra: Mapped[str] = mapped_column(Text, default="{}")

    def job_spec(self) -> JobSpec:
        """The job's validated specification."""
        return parse_spec(json.loads(self.spec))


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (UniqueConstraint("job_id", "number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[str] = mapped_column(Text)
    participants: Mapped[str] = mapped_column(Text)
    closed_at: Mapped[float] = mapped_column(Float)


class Update(Base):
    __tablename__ = "updates"
    __table_args__ = (UniqueConstraint("job_id", "round", "member_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    round: Mapped[int] = mapped_column(Integer)
    member_id: Mapped[int] = mapped_column(ForeignKey("members.id"))
    num_examples: Mapped[int] = mapped_column(BigInteger)  # up to 10**12 (uploads.MAX_EXAMPLES)
    nbytes: Mapped[int] = mapped_column(BigInteger)
    metrics: Mapped[str] = mapped_column(Text)
    received_at: Mapped[float] = mapped_column(Float)


class CoordinatorLease(Base):
    """One row: which coordinator may write (``epoch``, up by one each time one takes it)."""

    __tablename__ = "coordinator_lease"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    holder: Mapped[str] = mapped_column(String(100))
    taken_at: Mapped[float] = mapped_column(Float)


LEASE_ID = 1
"""The lease row's id (the migration that made the table inserted it)."""


def _sqlite_pragmas(dbapi_connection: Any, _: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class StoreError(RuntimeError):
    """The database cannot be opened or brought up to date (one line, password hidden)."""


class StoreFenced(RuntimeError):
    """Another coordinator took the database's lease since this one did: it may not write."""


def _note_write(state: Any) -> None:
    """``do_orm_execute``: a session that runs an INSERT, UPDATE or DELETE has written."""
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info["wrote"] = True


def _note_flush(session: Session, _: Any) -> None:
    session.info["wrote"] = True  # ``after_flush`` only fires when something was flushed


def redacted(url: str) -> str:
    """``url`` with its password masked, for messages (an unparsable one is not shown)."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<unparsable database URL>"
    # SQLAlchemy's own masking: urlsplit takes no '_' in a scheme ("oracle+cx_oracle://")
    # and would leave its password in place
    return redact_url(parsed.render_as_string(hide_password=True), keep_user=True)


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest schema (``alembic upgrade head``).

    A database created before migrations existed (tables, no
    ``alembic_version``) holds exactly the first revision: it is stamped
    ``0001`` and then upgraded like any other.
    """
    from alembic import command

    from fedaas.server.migrations import alembic_config

    with engine.begin() as connection:
        config = alembic_config(connection)
        tables = set(inspect(connection).get_table_names())
        if "alembic_version" not in tables and "jobs" in tables:
            command.stamp(config, "0001")
        command.upgrade(config, "head")


BACKENDS = ("sqlite", "postgresql")
"""The databases the coordinator is built and tested on."""


class Store:
    """Typed access to the coordinator's database.

    Any SQLAlchemy URL: ``sqlite:///PATH`` (the default, WAL mode) or
    ``postgresql+psycopg://USER@HOST:PORT/DB``. The schema is migrated to the
    newest revision on start.
    """

    def __init__(self, url: str) -> None:
        try:
            backend = make_url(url).get_backend_name()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the database {redacted(url)}: {one_line(exc)}") from None
        if backend not in BACKENDS:
            raise StoreError(
                f"cannot open the database {redacted(url)}: the coordinator keeps its state in "
                "SQLite (sqlite:///PATH) or PostgreSQL (postgresql+psycopg://USER@HOST/DB)"
            )
        try:
            # a lost server is noticed in seconds, not after the OS's TCP timeout
            connect = {"connect_timeout": 5} if url.startswith("postgresql") else {}
            self.engine = create_engine(
                url, pool_pre_ping=not url.startswith("sqlite"), connect_args=connect
            )
            if self.engine.dialect.name == "sqlite":
                event.listen(self.engine, "connect", _sqlite_pragmas)
            upgrade_schema(self.engine)
        except (SQLAlchemyError, ImportError) as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(
                f"cannot open the database {redacted(url)}: {one_line(cause)}"
            ) from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        event.listen(self._session, "do_orm_execute", _note_write)
        event.listen(self._session, "after_flush", _note_flush)
        self._epoch: int | None = None  # None: no lease taken, writes are not fenced
        self._on_fenced: Callable[[], None] | None = None

    def take_lease(self, holder: str, on_fenced: Callable[[], None] | None = None) -> int:
        """Take the database for this coordinator (after its lock): the new lease epoch. Every
        write of this Store is fenced from now on; ``on_fenced`` runs (once) when one is
        refused because another coordinator took the lease since."""
        lease = (CoordinatorLease.id == LEASE_ID,)
        try:
            with self._session() as s, s.begin():
                s.execute(
                    update(CoordinatorLease)
                    .where(*lease)
                    .values(
                        epoch=CoordinatorLease.epoch + 1, holder=holder[:100], taken_at=time.time()
                    )
                )
                epoch = s.scalar(select(CoordinatorLease.epoch).where(*lease))
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            raise StoreError(f"cannot take the database's lease: {one_line(cause)}") from None
        if epoch is None:
            raise StoreError("the database has no coordinator lease row: its schema is damaged")
        self._epoch, self._on_fenced = int(epoch), on_fenced
        return self._epoch

    def lease(self) -> tuple[int, str]:
        """The lease's epoch and holder now."""
        with self.session() as s:
            row = s.get(CoordinatorLease, LEASE_ID)
            return (0, "") if row is None else (row.epoch, row.holder)

    def _fence(self, session: Session) -> None:
        """Raise :class:`StoreFenced` (rolling the transaction back) unless this Store still
        holds the lease; ``FOR SHARE`` keeps a new holder from taking it until this commits."""
        current = session.scalar(
            select(CoordinatorLease.epoch)
            .where(CoordinatorLease.id == LEASE_ID)
            .with_for_update(read=True)
        )
        if current == self._epoch:
            return
        on_fenced, self._on_fenced = self._on_fenced, None
        if on_fenced is not None:
            on_fenced()
        raise StoreFenced(
            f"another coordinator took the database (lease {current}, this one holds "
            f"{self._epoch}): this one may no longer write to it"
        )

    def ping(self) -> None:
        """Raise if the database cannot answer a trivial query now."""
        with self.engine.connect() as connection:
            connection.execute(select(1))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction; one that wrote is fenced (see the module docstring) at its end."""
        with self._session() as session, session.begin():
            yield session
            if self._epoch is not None:
                session.flush()
                if session.info.get("wrote"):
                    self._fence(session)

    # members ---------------------------------------------------------------
    def add_member(self, name: str, token_hash: str) -> Member:
        with self.session() as s:
            member = Member(name=name, token_hash=token_hash, created_at=time.time())
            s.add(member)
            s.flush()
            return member

    def members(self) -> list[Member]:
        with self.session() as s:
            return list(s.scalars(select(Member).order_by(Member.id)))

    def active_member_names(self, ids: Iterable[int]) -> dict[int, str]:
        """The names of those of ``ids`` that are not revoked, by id."""
        query = select(Member.id, Member.name).where(
            Member.id.in_(list(ids)), Member.revoked_at.is_(None)
        )
        with self.session() as s:
            return {member_id: name for member_id, name in s.execute(query)}

    def member_by_name(self, name: str) -> Member | None:
        with self.session() as s:
            return s.scalar(select(Member).where(Member.name == name))

    def revoke_member(self, member_id: int) -> None:
        with self.session() as s:
            member = s.get(Member, member_id)
            if member is not None and member.revoked_at is None:
                member.revoked_at = time.time()

    # jobs ------------------------------------------------------------------
    def add_job(self, job: Job) -> Job:
        with self.session() as s:
            s.add(job)
        return job

    def job(self, job_id: str) -> Job | None:
        with self.session() as s:
            return s.get(Job, job_id)

    def jobs(self, statuses: tuple[str, ...]) -> list[Job]:
        with self.session() as s:
            query = select(Job).where(Job.status.in_(statuses)).order_by(Job.created_at)
            return list(s.scalars(query))

    def job_summaries(self) -> list[tuple[str, str, str, int, float]]:
        """Each job's id, name, status, round, created_at (oldest first; not its spec, ledger)."""
        query = select(Job.id, Job.name, Job.status, Job.round, Job.created_at)
        with self.session() as s:
            return [tuple(row) for row in s.execute(query.order_by(Job.created_at))]

    def start_job(self, job_id: str, started_at: float) -> bool:
        """Mark a queued (or resumed) job running, atomically; False if it ended meanwhile.

        A plain ``update_job(status="running")`` from the thread that activates
        a job would overwrite a cancel that arrived during activation.
        """
        with self.session() as s:
            result = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status.in_(("queued", "running")))
                .values(status="running", started_at=func.coalesce(Job.started_at, started_at))
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1

    def _extra(self, s: Session, job_id: str) -> dict[str, Any]:
        """The job's ``extra`` column: the one place it is parsed."""
        return _parse_extra(s.scalar(select(Job.extra).where(Job.id == job_id)))

    def declined(self, job_id: str) -> dict[str, str]:
        """Members that declined the job, by name, with their reasons."""
        with self.session() as s:
            return dict(self._extra(s, job_id).get("declined", {}))

    def declines(self, job_ids: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """Each member's declines among ``job_ids``, in their order: ``(job id, reason)``."""
        with self.session() as s:
            rows = s.execute(select(Job.id, Job.extra).where(Job.id.in_(job_ids)))
            extras = {job_id: extra for job_id, extra in rows}
        out: dict[str, list[tuple[str, str]]] = {}
        for job_id in job_ids:
            declined = json.loads(extras.get(job_id) or "{}").get("declined", {})
            for name, reason in declined.items():
                out.setdefault(name, []).append((job_id, reason))
        return out

    def contributions(self, job_ids: Sequence[str]) -> dict[str, int]:
        """How many rounds of ``job_ids`` each member took part in, as published (under
        client-level DP none are). Reads the participants alone: parsing every round's
        metrics made the members page take seconds on a coordinator with long jobs."""
        counts: Counter[str] = Counter()
        with self.session() as s:
            for text in s.scalars(select(Round.participants).where(Round.job_id.in_(job_ids))):
                counts.update(json.loads(text))
        return dict(counts)

    def record_decline(self, job_id: str, name: str, reason: str) -> None:
        with self.session() as s:
            extra = self._extra(s, job_id)
            extra.setdefault("declined", {})[name] = reason
            s.execute(update(Job).where(Job.id == job_id).values(extra=json.dumps(extra)))

    def privacy_state(self, job_id: str) -> dict[str, Any] | None:
        """The job's privacy state as of its last committed round (``None`` before any)."""
        with self.session() as s:
            return self._extra(s, job_id).get("privacy")

    def save_privacy_state(self, job_id: str, privacy_state: dict[str, Any]) -> None:
        """Store the job's privacy state now (a round's ledger entry, before its release)."""
        with self.session() as s:
            extra = self._extra(s, job_id)
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(extra=json.dumps({**extra, "privacy": privacy_state}))
            )

    def discard_updates_after(self, job_id: str, number: int) -> None:
        """Forget receipts of rounds after ``number`` (an interrupted round reruns)."""
        with self.session() as s:
            s.execute(delete(Update).where(Update.job_id == job_id, Update.round > number))

    def update_job(self, job_id: str, **fields: Any) -> None:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            for key, value in fields.items():
                setattr(job, key, value)

    # rounds ----------------------------------------------------------------
    def close_round(
        self,
        job_id: str,
        number: int,
        metrics: dict[str, Any],
        participants: list[str],
        updates: list[dict[str, Any]],
        privacy_state: dict[str, Any] | None = None,
    ) -> None:
        """Record a finished round, its updates and the job's privacy state, in one transaction.

        Idempotent: a retry after a commit whose answer was lost finds the round
        recorded and changes nothing.
        """
        with self.session() as s:  # Core inserts: this runs once per round, on the hot path
            done = select(Round.id).where(Round.job_id == job_id, Round.number == number)
            if s.scalar(done) is not None:
                return
            if updates:
                s.execute(insert(Update), updates)
            s.execute(
                insert(Round).values(
                    job_id=job_id,
                    number=number,
                    metrics=json.dumps(metrics),
                    participants=json.dumps(participants),
                    closed_at=time.time(),
                )
            )
            values: dict[str, Any] = {"round": number}
            if privacy_state is not None:
                extra = self._extra(s, job_id)
                values["extra"] = json.dumps({**extra, "privacy": privacy_state})
            s.execute(update(Job).where(Job.id == job_id).values(**values))

    def add_round_metrics(
        self, job_id: str, number: int, metrics: dict[str, Any], **defaults: Any
    ) -> None:
        """Add metrics measured after round ``number`` was committed (federated evaluation);
        ``defaults`` fill keys that are still ``None``."""
        with self.session() as s:
            row = s.scalar(select(Round).where(Round.job_id == job_id, Round.number == number))
            if row is None:
                return
            merged = {**json.loads(row.metrics), **metrics}
            merged.update({k: v for k, v in defaults.items() if merged.get(k) is None})
            row.metrics = json.dumps(merged)

    def rounds(self, job_id: str, after: int = 0) -> list[dict[str, Any]]:
        """The job's closed rounds numbered above ``after`` (0: all), oldest first."""
        with self.session() as s:
            return self._rounds(s, job_id, after)

    def _rounds(self, s: Session, job_id: str, after: int) -> list[dict[str, Any]]:
        query = select(Round).where(Round.job_id == job_id, Round.number > after)
        return [
            {
                "round": r.number,
                **json.loads(r.metrics),
                "participants": json.loads(r.participants),
            }
            for r in s.scalars(query.order_by(Round.number))
        ]

    def job_view(
        self, job_id: str, rounds_after: int = 0
    ) -> tuple[Job, dict[str, str], list[dict[str, Any]]] | None:
        """The job, the members that declined it (as :meth:`declined`) and its rounds above
        ``rounds_after`` (as :meth:`rounds`), read in one transaction: what a job's status
        shows, consistent, for one round trip to the database instead of three."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                return None
            declined = dict(_parse_extra(job.extra).get("declined", {}))
            return job, declined, self._rounds(s, job_id, rounds_after)

    def job_progress(self, job_id: str) -> tuple[int, str] | None:
        """The job's last committed round and its status (what a long-poll waits on)."""
        with self.session() as s:
            row = s.execute(select(Job.round, Job.status).where(Job.id == job_id)).first()
            return None if row is None else (row[0], row[1])

    def updates_for(self, job_id: str, number: int) -> list[Update]:
        with self.session() as s:
            query = select(Update).where(Update.job_id == job_id, Update.round == number)
            return list(s.scalars(query))


def _parse_extra(text: str | None) -> dict[str, Any]:
    return json.loads(text or "{}")
