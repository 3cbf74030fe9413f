"""A member's training seed comes from the job seed and its identity, never from a path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fedaas.algorithms.seeds import identity_stream, member_seed
from fedaas.client.agent import Agent
from fedaas.client.transport import Transport


def test_seed_is_stable_and_tells_members_and_rounds_apart() -> None:
    assert member_seed(7, 3, "hospital-a") == member_seed(7, 3, "hospital-a")
    assert identity_stream("hospital-a") == int.from_bytes(
        hashlib.sha256(b"hospital-a").digest()[:8], "big"
    )  # the same in every process (no salted hash())
    seeds = {tuple(member_seed(7, r, m)) for r in (1, 2) for m in ("a", "b")}
    assert len(seeds) == 4
    with pytest.raises(ValueError):
        member_seed(7, 1, "")


def test_the_agent_seeds_from_its_token_not_its_data_path(tmp_path: Path) -> None:
    def agent(token: str, data: str) -> Agent:
        return Agent(Transport("http://127.0.0.1:9", token), data, state_dir=tmp_path / token)

    a, moved, other = (
        agent("fdm_x", "/data/a.npz"),
        agent("fdm_x", "/mnt/b.npz"),
        agent("fdm_y", "/data/a.npz"),
    )
    assert a.identity == moved.identity == hashlib.sha256(b"fdm_x").hexdigest()
    assert other.identity != a.identity
    for one in (a, moved, other):
        one.t.close()
