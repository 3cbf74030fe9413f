"""A member handed a task it cannot parse refuses it, says why when it can, and never crashes.

A real coordinator process and a real member agent (in a thread of the test process). The
agent's transport passes every request to the coordinator but spoils the first tasks the
coordinator sends, the way a coordinator of another version (or a broken proxy) would: the task
JSON then fails :class:`fedaas.protocol.Task` validation in the agent. A task that names its
job is declined with the validation problem as the reason; one whose job id is unusable
(``/`` in it) is only logged, and the agent takes the next, good task as if nothing happened;
so is a task bundle cut off inside its task (its length claims more bytes than it holds).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import httpx
import pytest

from fedaas.protocol import TASK_BUNDLE, JobStatus, decode_bundle, encode_bundle
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import AgentThreads, RecordingTransport, StartAgents
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

SPEC = make_spec(
    "malformed-task", clients=None, seed=0, features=4, classes=3, train={"batch_size": 8}
)


class SpoilingTransport(RecordingTransport):
    """Hands the agent the coordinator's first ``times`` tasks after ``spoil`` changed them."""

    def __init__(
        self,
        server: str,
        token: str,
        give_up_after: float | None,
        *,
        spoil: Callable[[dict[str, Any]], None],
        times: int,
        cut: bool = False,
    ) -> None:
        super().__init__(server, token, give_up_after)
        self.spoil, self.times, self.cut = spoil, times, cut
        self.spoiled: list[dict[str, Any]] = []

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = super().request(method, path, **kwargs)
        if path != "/v1/tasks/next" or response.status_code != 200:
            return response
        if len(self.spoiled) >= self.times:
            return response
        bundle = response.headers.get("content-type", "").startswith(TASK_BUNDLE)
        text, model = decode_bundle(response.content) if bundle else (response.content, b"")
        task = json.loads(text)
        self.spoil(task)
        self.spoiled.append(task)
        broken = json.dumps(task)
        if bundle:  # the same model, the spoiled task beside it
            headers = {"content-type": TASK_BUNDLE}
            body = encode_bundle(broken.encode(), model)
            if self.cut:  # the bundle ends inside its task: its length claims more than it has
                body = body[: 4 + len(broken) // 2]
        else:
            headers, body = {"content-type": "application/json"}, broken.encode()
        return httpx.Response(200, headers=headers, content=body, request=response.request)


def _unknown_privacy(task: dict[str, Any]) -> None:
    task["privacy"] = {"kind": "homomorphic"}


def _job_id_with_a_slash(task: dict[str, Any]) -> None:
    task["job_id"] = task["job_id"] + "/../../members"


def _unchanged(task: dict[str, Any]) -> None:
    pass


def _member(team: AgentThreads) -> SpoilingTransport:
    transport = team.transports["m"]
    assert isinstance(transport, SpoilingTransport)
    return transport


def _run_spoiled(
    cluster: LocalCluster, data: str, start_agents: StartAgents, **spoiling: Any
) -> tuple[str, JobStatus, SpoilingTransport]:
    """One member whose tasks are spoiled as ``spoiling`` says runs :data:`SPEC` to its end;
    the job, and the member's transport. The member's thread must survive (refused, not
    crashed) whatever it was sent."""
    with start_agents(
        cluster, {"m": data}, transport=partial(SpoilingTransport, **spoiling)
    ) as team:
        job_id = cluster.admin.submit(SPEC).id
        job = cluster.admin.wait(job_id, timeout=120)
        assert all(t.is_alive() for t in team.threads)
    return job_id, job, _member(team)


def test_a_task_with_an_unknown_privacy_kind_is_declined_naming_the_field(
    cluster: LocalCluster, data: str, start_agents: StartAgents
) -> None:
    job_id, job, transport = _run_spoiled(
        cluster, data, start_agents, spoil=_unknown_privacy, times=1_000
    )
    sent = transport.after_start
    assert job.status == "failed" and job.rounds == [], job
    (reason,) = job.declined.values()
    assert set(job.declined) == {"m"}
    assert "the task is not acceptable" in reason and "privacy" in reason, reason
    assert "'homomorphic'" in reason, reason  # the problem, named
    assert sent.count(("POST", f"/v1/jobs/{job_id}/decline")) == 1, sent
    assert not [s for s in sent if s[0] == "PUT" or s[1].endswith("/model")], sent


def _skipped_twice(
    cluster: LocalCluster,
    data: str,
    start_agents: StartAgents,
    caplog: pytest.LogCaptureFixture,
    **spoiling: Any,
) -> tuple[str, SpoilingTransport, list[str]]:
    """The member's first two tasks are spoiled as ``spoiling`` says: both are refused as
    malformed and skipped (no decline: nothing names a job to decline), and the third is
    done. The job id, the member's transport and the two refusals logged."""
    caplog.set_level(logging.ERROR, logger="fedaas.agent")
    job_id, job, transport = _run_spoiled(cluster, data, start_agents, times=2, **spoiling)
    assert len(transport.spoiled) == 2
    assert job.status == "completed" and job.declined == {}, job
    assert [r.participants for r in job.rounds] == [["m"]]
    assert not [s for s in transport.after_start if "/decline" in s[1]]
    refusals = [r.getMessage() for r in caplog.records if "malformed task" in r.getMessage()]
    assert len(refusals) == 2, refusals
    return job_id, transport, refusals


def test_a_task_whose_job_id_is_unusable_is_skipped_and_the_next_one_is_done(
    cluster: LocalCluster,
    data: str,
    start_agents: StartAgents,
    caplog: pytest.LogCaptureFixture,
) -> None:
    job_id, transport, refusals = _skipped_twice(
        cluster, data, start_agents, caplog, spoil=_job_id_with_a_slash
    )
    # nothing was sent about, or to a path built from, the spoiled job id
    assert not [s for s in transport.after_start if "members" in s[1]]
    assert [s for s in transport.after_start if s[0] == "PUT"] == [
        ("PUT", f"/v1/jobs/{job_id}/rounds/1/update")
    ]
    assert all("job_id" in r for r in refusals), refusals


def test_a_bundle_cut_inside_its_task_is_skipped_and_the_next_one_is_done(
    cluster: LocalCluster,
    data: str,
    start_agents: StartAgents,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, _, refusals = _skipped_twice(cluster, data, start_agents, caplog, spoil=_unchanged, cut=True)
    assert all("claims" in r for r in refusals), refusals
