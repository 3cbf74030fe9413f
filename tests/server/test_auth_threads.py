"""Enrolling, renewing and revoking run in worker threads (the database is read off the event
loop), so they must hold up when they race: one member per name, one live token per member.

Real databases: SQLite (WAL) and PostgreSQL.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fedaas.server.auth import Authenticator
from fedaas.server.db import Store
from fedaas.server.errors import Conflict, Unauthenticated

THREADS = 8


def _race(call: Callable[[], Any]) -> list[Any]:
    """``call`` from :data:`THREADS` threads at once; what each returned or raised."""
    start = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = call()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.fixture
def store(tmp_path: Path, db_url: str | None) -> Store:
    return Store(db_url or f"sqlite:///{tmp_path / 'fedaas.db'}")


@pytest.fixture
def auth(store: Store) -> Authenticator:
    return Authenticator(store, "admin-token")


def test_one_member_per_name_when_enrollments_race(auth: Authenticator) -> None:
    results = _race(lambda: auth.enroll("hospital-a"))
    enrolled = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, Conflict)]
    assert len(enrolled) == 1 and len(refused) == THREADS - 1, results
    who, token = enrolled[0]
    assert auth.identify(f"Bearer {token}") == who


def test_one_live_token_when_renewals_race(auth: Authenticator, store: Store) -> None:
    _, first = auth.enroll("hospital-a")
    tokens = [token for _, token in _race(lambda: auth.renew("hospital-a"))]
    live = []
    for token in [first, *tokens]:
        try:
            auth.identify(f"Bearer {token}")
            live.append(token)
        except Unauthenticated:
            pass
    assert len(live) == 1, f"{len(live)} tokens of one member still work"
    # and it is the one the database keeps: a restarted coordinator agrees
    again = Authenticator(store, "admin-token")
    assert again.identify(f"Bearer {live[0]}").name == "hospital-a"
