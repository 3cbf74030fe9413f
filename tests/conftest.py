"""Fixtures shared by the whole suite (helpers in ``tests/fixtures``).

- ``spec_data``: the example job spec (``examples/digits.toml``) as a fresh dict.
- ``make_spec``: :func:`fixtures.specs.make_spec`, a factory of small valid job-spec dicts.
- ``start_federation``: ``start_federation(spec, **options)`` opens a live federation
  (:func:`fixtures.federation.open_federation`) in a fresh temporary folder; use it in a
  module-scoped fixture for tests that leave round 1 untouched, or in a function-scoped one
  for a test that changes the federation's state (so no test depends on another's leftovers).
- ``start_agents``: ``start_agents(cluster, datasets, **options)`` runs real member agents in
  threads (:func:`fixtures.agents.agent_threads`), their state in the test's temporary folder.
- ``s3_emulator``, ``gcs_emulator``, ``az_emulator``: one object-storage emulator per cloud for
  the session (skipped, saying why, where it cannot start); ``target`` (each URL kind: a local
  folder, s3://, gs://, az://) and ``cloud_target`` (the three clouds), from
  :mod:`fixtures.storage`. Tests that run against an emulator are marked ``emulator``, so the
  fast tier (``-m "not emulator"``) leaves them out.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from fedaas.sim import emulators
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import AgentThreads, StartAgents, agent_threads
from fixtures.federation import Federation, StartFederation, open_federation
from fixtures.specs import make_spec as _make_spec
from fixtures.storage import CLOUD_KINDS, KINDS, Target, make_target, needs_emulator, run_emulator

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits.toml"


@pytest.fixture
def spec_data() -> dict[str, Any]:
    """The example job spec (examples/digits.toml) as a fresh, mutable dict."""
    return tomllib.loads(EXAMPLE.read_text())


@pytest.fixture(scope="session")
def make_spec() -> Callable[..., dict[str, Any]]:
    return _make_spec


@pytest.fixture(scope="session")
def start_federation(tmp_path_factory: pytest.TempPathFactory) -> StartFederation:
    def start(spec: dict[str, Any], **options: Any) -> AbstractContextManager[Federation]:
        folder = tmp_path_factory.mktemp(str(spec["job"]["name"]))
        return open_federation(folder, spec, **options)

    return start


@pytest.fixture(scope="session")
def s3_emulator() -> Iterator[emulators.Emulator]:
    """moto_server with signature checks (wrong credentials are refused)."""
    yield from run_emulator("s3", auth=True)


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[emulators.Emulator]:
    yield from run_emulator("gs")


@pytest.fixture(scope="session")
def az_emulator() -> Iterator[emulators.Emulator]:
    yield from run_emulator("az")


@pytest.fixture(params=KINDS)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Each URL kind in turn: local folder, s3://, gs://, az:// (cloud ones marked emulator)."""
    return make_target(request.param, request, tmp_path)


@pytest.fixture(params=CLOUD_KINDS)
def cloud_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """Each object store in turn: s3://, gs://, az:// (a fresh bucket in its emulator)."""
    return make_target(request.param, request, tmp_path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_emulator(item):
            item.add_marker(pytest.mark.emulator)


@pytest.fixture
def start_agents(tmp_path: Path) -> StartAgents:
    def start(
        cluster: LocalCluster, datasets: dict[str, str], **options: Any
    ) -> AbstractContextManager[AgentThreads]:
        return agent_threads(cluster, datasets, tmp_path / "members", **options)

    return start
