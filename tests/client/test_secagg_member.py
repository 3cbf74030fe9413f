"""The member's own guards in a secure round: its identity key, the sessions it took part in,
the peers' long-term keys it saw, and the downgrade to a plain upload it refuses."""

from __future__ import annotations

import stat
from pathlib import Path
from types import SimpleNamespace

import pytest

from fedaas.algorithms.secagg import IdentityKey
from fedaas.client.secagg import (
    SecureRefused,
    check_peers,
    load_identity,
    note_attempt,
    secure_train,
)
from fedaas.protocol import Task
from fedaas.protocol_secagg import RosterEntry, SecureRoster
from fedaas.spec import parse_spec
from fixtures.specs import make_spec


def test_the_identity_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key = load_identity(tmp_path)
    assert stat.S_IMODE((tmp_path / "secagg-identity.key").stat().st_mode) == 0o600
    assert load_identity(tmp_path).public_bytes() == key.public_bytes()


def test_a_member_never_takes_part_twice_in_the_same_session(tmp_path: Path) -> None:
    note_attempt(tmp_path, "job-1", 3, 77)
    note_attempt(tmp_path, "job-1", 3, 78)  # a rerun of the round: a new attempt
    note_attempt(tmp_path, "job-1", 4, 77)
    with pytest.raises(SecureRefused, match="reuses attempt 77"):
        note_attempt(tmp_path, "job-1", 3, 77)


def _roster(**identities: bytes) -> SecureRoster:
    entries = [
        RosterEntry(
            member=name, identity=key, c_public=bytes(32), s_public=bytes(32), signature=bytes(64)
        )
        for name, key in identities.items()
    ]
    return SecureRoster(job_id="job-1", round=1, attempt=1, members=entries)


def test_a_peer_whose_long_term_key_changes_is_refused(tmp_path: Path) -> None:
    a, b = IdentityKey.generate().public_bytes(), IdentityKey.generate().public_bytes()
    check_peers(tmp_path, _roster(alpha=a, beta=b))
    check_peers(tmp_path, _roster(alpha=a, beta=b, gamma=bytes(32)))  # a new peer: pinned
    with pytest.raises(SecureRefused, match="other long-term keys for beta"):
        check_peers(tmp_path, _roster(alpha=a, beta=IdentityKey.generate().public_bytes()))


def test_a_secure_job_is_never_downgraded_to_a_plain_upload() -> None:
    spec = parse_spec(make_spec(clients=3, min_clients=2, secure_aggregation={"enabled": True}))
    task = Task(
        job_id="job-1",
        round=1,
        stage="train",
        model_round=0,
        model_etag='"job-1-r0"',
        deadline_in=10,
        max_upload_bytes=1000,
        spec=spec,
    )
    called = []
    agent = SimpleNamespace(_train=lambda *args: called.append(args))
    with pytest.raises(SecureRefused, match="no secure session"):
        secure_train(agent, task, SimpleNamespace(spec=spec), {})
    assert called == []  # nothing was trained, nothing sent in the clear
    plain = parse_spec(make_spec(clients=3, min_clients=2))
    secure_train(agent, task, SimpleNamespace(spec=plain), {})
    assert len(called) == 1
