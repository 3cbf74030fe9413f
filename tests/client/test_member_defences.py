"""A member against a coordinator it does not fully trust (issue 9, items 1 to 4).

A real coordinator process and real member agents (threads of the test process). The
attacker is the coordinator: each member's transport passes every request to the real
coordinator but rewrites the tasks (and bundled models) it answers, the way a malicious or
compromised coordinator would. Every test asserts the member's defence: it declines with the
reason, sends no update it did not agree to, writes nothing outside its state folder, imports
no code its operator did not allow, and stays online (the thread is alive and a later, honest
job completes with it).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import safetensors.numpy

from fedaas import tensors
from fedaas.client.policy import MemberPolicy
from fedaas.protocol import TASK_BUNDLE, decode_bundle, encode_bundle
from fedaas.sim.cluster import LocalCluster
from fixtures.agents import AgentThreads, RecordingTransport, StartAgents
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

Tamper = Callable[[dict[str, Any], bytes], tuple[dict[str, Any], bytes]]


def spec(name: str, rounds: int = 1, **sections: Any) -> dict[str, Any]:
    return make_spec(
        name,
        rounds,
        clients=None,
        seed=0,
        features=4,
        classes=3,
        train={"batch_size": 8},
        **sections,
    )


class AttackerTransport(RecordingTransport):
    """Hands the agent the coordinator's tasks after ``tamper`` rewrote them (from task ``first``)."""

    def __init__(
        self, server: str, token: str, give_up_after: float | None, *, tamper: Tamper, first: int
    ) -> None:
        super().__init__(server, token, give_up_after)
        self.tamper, self.first, self.seen = tamper, first, 0

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = super().request(method, path, **kwargs)
        kind = response.headers.get("content-type", "")
        if response.status_code != 200 or not (
            path == "/v1/tasks/next" or kind.startswith(TASK_BUNDLE)
        ):
            return response
        self.seen += 1
        if self.seen < self.first:
            return response
        bundle = kind.startswith(TASK_BUNDLE)
        raw, model = decode_bundle(response.content) if bundle else (response.content, b"")
        task, content = self.tamper(json.loads(raw), model)
        text = json.dumps(task)
        if bundle:
            headers = {"content-type": TASK_BUNDLE}
            body = encode_bundle(text.encode(), content)
            return httpx.Response(200, headers=headers, content=body, request=response.request)
        return httpx.Response(
            200,
            headers={"content-type": "application/json"},
            content=text.encode(),
            request=response.request,
        )


def attacked(tamper: Tamper, first: int = 1) -> Any:
    return partial(AttackerTransport, tamper=tamper, first=first)


def only_declined(cluster: LocalCluster, team: AgentThreads, job_id: str) -> str:
    """The job failed because ``m`` declined it; ``m`` sent no update and is still running."""
    job = cluster.admin.wait(job_id, timeout=120)
    assert all(t.is_alive() for t in team.threads), team.failures
    assert set(job.declined) == {"m"}, job
    sent = team.transports["m"].sent
    assert not [s for s in sent if s[0] == "PUT" and job_id in s[1]], sent
    return job.declined["m"]


def still_online(cluster: LocalCluster, team: AgentThreads) -> None:
    """After the attack, an honest job completes with the same member."""
    job = cluster.admin.wait(cluster.admin.submit(spec("honest")).id, timeout=120)
    assert job.status == "completed", job
    assert [r.participants for r in job.rounds] == [["m"]]


# 1. code the member's operator did not allow ------------------------------------------


def test_a_member_never_imports_code_its_operator_did_not_allow(
    cluster: LocalCluster, data: str, start_agents: StartAgents, tmp_path: Path
) -> None:
    """``torch.hub:load`` (a local hubconf.py) and ``logging:basicConfig`` (a file of the
    attacker's choosing), slipped into the job's spec by the coordinator."""
    evil = tmp_path / "evil"
    evil.mkdir()
    marker, owned = tmp_path / "hubconf-ran", tmp_path / "owned.log"
    (evil / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    attacks = {
        "torch.hub:load": {"repo_or_dir": str(evil), "model": "x", "source": "local"},
        "logging:basicConfig": {"filename": str(owned), "filemode": "w"},
    }
    names = iter(attacks)

    def code(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
        name = next(names, "logging:basicConfig")
        task["spec"]["model"] = {"name": name, "options": attacks[name]}
        return task, content

    before = set(sys.modules)
    with start_agents(cluster, {"m": data}, transport=attacked(code)) as team:
        for _ in attacks:
            reason = only_declined(cluster, team, cluster.admin.submit(spec("code")).id)
            assert "has not allowed" in reason and "--allow-code" in reason, reason
    assert not marker.exists() and not owned.exists()
    assert "hubconf" not in sys.modules and not {m for m in set(sys.modules) - before if "hub" in m}


# 2. the member's policy and the spec it accepted -------------------------------------


LOCAL_DP = {
    "mechanism": "gaussian",
    "placement": "local",
    "noise_multiplier": 1.0,
    "clip_norm": 0.5,
}


def _no_privacy(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
    task["privacy"] = {"kind": "none"}
    return task, content


def _less_noise(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
    task["privacy"]["noise_std"] = task["privacy"]["noise_std"] / 100
    return task, content


def _other_spec(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
    task["spec"]["privacy"] = {"mechanism": "none"}
    task["privacy"] = {"kind": "none"}
    return task, content


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (_no_privacy, "asks for client-level DP, the task for 'none'"),
        (_less_noise, "noise_std"),
        (_other_spec, "departs from the spec this member accepted"),
    ],
    ids=["mechanism-none", "less-noise", "spec-changed"],
)
def test_a_task_that_departs_from_the_accepted_spec_gets_no_update(
    cluster: LocalCluster, data: str, start_agents: StartAgents, tamper: Tamper, expected: str
) -> None:
    """Round 1 is honest (a local-DP update goes up); round 2's task says less: no upload."""
    with start_agents(cluster, {"m": data}, transport=attacked(tamper, first=2)) as team:
        job_id = cluster.admin.submit(spec("downgrade", rounds=3, privacy=LOCAL_DP)).id
        job = cluster.admin.wait(job_id, timeout=120)
        assert all(t.is_alive() for t in team.threads)
    puts = [s for s in team.transports["m"].after_start if s[0] == "PUT"]
    assert puts == [("PUT", f"/v1/jobs/{job_id}/rounds/1/update")], puts
    assert [r.round for r in job.rounds] == [1]
    assert expected in job.declined["m"], job.declined


def test_a_member_declines_jobs_its_policy_refuses(
    cluster: LocalCluster, data: str, start_agents: StartAgents
) -> None:
    policy = MemberPolicy.model_validate(
        {"privacy": {"required": True, "min_noise_multiplier": 2.0}, "models": {"max_rounds": 5}}
    )
    with start_agents(cluster, {"m": data}, policy=policy) as team:
        reason = only_declined(cluster, team, cluster.admin.submit(spec("plain", rounds=9)).id)
        assert "policy refuses" in reason and "at most 5" in reason, reason
        assert "no differential privacy" in reason, reason
        weak = cluster.admin.submit(spec("weak", privacy=LOCAL_DP)).id
        assert "below this member's minimum 2" in only_declined(cluster, team, weak)


def test_a_new_job_id_does_not_reset_the_members_record_level_budget(
    cluster: LocalCluster, data: str, start_agents: StartAgents, tmp_path: Path
) -> None:
    """Two jobs on the same records: the member's ledger (per dataset) spans both."""
    dp_sgd = {"unit": "record", "noise_multiplier": 2.0, "clip_norm": 1.0}
    probe = MemberPolicy().privacy
    assert probe.max_epsilon is None
    from fedaas.algorithms.accounting import dp_sgd_schedule, record_epsilon_after

    q, steps = dp_sgd_schedule(40, 8, 1)
    one, two = (record_epsilon_after(n, steps, q, 2.0, 1e-5, accountant="pld") for n in (1, 2))
    policy = MemberPolicy.model_validate({"privacy": {"max_epsilon": (one + two) / 2}})
    with start_agents(cluster, {"m": data}, policy=policy) as team:
        first = cluster.admin.wait(cluster.admin.submit(spec("a", privacy=dp_sgd)).id, timeout=120)
        assert first.status == "completed", first
        second = cluster.admin.submit(spec("b", privacy=dp_sgd)).id  # a fresh job id
        reason = only_declined(cluster, team, second)
    assert "record-level privacy budget reached: after 1 round" in reason, reason
    (ledger,) = (tmp_path / "members" / "m").glob("dpsgd-*.json")
    assert first.id not in ledger.name and second not in ledger.name


def test_a_new_job_does_not_reset_the_members_client_level_budget(
    cluster: LocalCluster, data: str, start_agents: StartAgents, tmp_path: Path
) -> None:
    """Client-level jobs on the same data each commit their epsilon_budget: the policy's
    max_epsilon caps their sum, not each job alone (two jobs of 5 passed a cap of 8)."""
    dp = {"mechanism": "gaussian", "noise_multiplier": 2.0, "clip_norm": 1.0}
    policy = MemberPolicy.model_validate({"privacy": {"max_epsilon": 8.0}})
    with start_agents(cluster, {"m": data}, policy=policy) as team:
        first = spec("a", privacy={**dp, "epsilon_budget": 5.0})
        done = cluster.admin.wait(cluster.admin.submit(first).id, timeout=120)
        assert done.status == "completed", done
        second = cluster.admin.submit(spec("b", privacy={**dp, "epsilon_budget": 5.0})).id
        reason = only_declined(cluster, team, second)
        small = spec("c", privacy={**dp, "epsilon_budget": 3.0})  # 5 + 3 fits the cap
        assert cluster.admin.wait(cluster.admin.submit(small).id, timeout=120).status == (
            "completed"
        )
    assert "client-level privacy budget reached" in reason, reason
    assert "committed epsilon 5" in reason and "max_epsilon 8" in reason, reason
    (commitments,) = (tmp_path / "members" / "m").glob("client-budgets-*.json")
    assert sorted(json.loads(commitments.read_text())["jobs"].values()) == [3.0, 5.0]


# 3. coordinator-chosen names and the member's file system --------------------------


@pytest.mark.parametrize("job_id", ["x/../../../../elsewhere/NAME", "x\u00e9-elsewhere"])
def test_a_job_id_never_reaches_the_members_file_system(
    cluster: LocalCluster, data: str, start_agents: StartAgents, tmp_path: Path, job_id: str
) -> None:
    """A hostile job id (the second passes the wire's pattern: it is checked in the member)."""

    def rename(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
        task["job_id"] = job_id
        return task, content

    dp_sgd = {"unit": "record", "noise_multiplier": 2.0, "clip_norm": 1.0}
    before = {p for p in tmp_path.rglob("*") if "cluster" not in p.parts}
    with start_agents(cluster, {"m": data}, transport=attacked(rename)) as team:
        job = cluster.admin.submit(spec("names", privacy=dp_sgd))
        deadline = time.monotonic() + 20
        while team.transports["m"].seen < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # the member refused the task, polled again, and got it again
        assert team.transports["m"].seen >= 2 and all(t.is_alive() for t in team.threads)
        cluster.admin.cancel(job.id)
    sent = team.transports["m"].after_start
    assert not [s for s in sent if s[0] in ("PUT", "POST")], sent  # nothing sent about it
    after = {p for p in tmp_path.rglob("*") if "cluster" not in p.parts}
    created = sorted(str(p.relative_to(tmp_path)) for p in after - before)
    assert all(p.startswith("members") for p in created), created
    assert not list(tmp_path.parent.rglob("elsewhere*"))


# 4. decline, never crash ---------------------------------------------------------------


def test_a_model_too_large_is_declined_before_anything_is_allocated(
    cluster: LocalCluster, data: str, start_agents: StartAgents
) -> None:
    def huge(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
        task["spec"]["model"] = {"name": "mlp", "hidden": [65536, 65536]}
        return task, content

    with start_agents(cluster, {"m": data}, transport=attacked(huge)) as team:
        reason = only_declined(cluster, team, cluster.admin.submit(spec("huge")).id)
        assert "4,295," in reason and "parameters; this node accepts at most 250,000,000" in reason
        team.transports["m"].first = 10**9  # the attack is over
        still_online(cluster, team)


def test_a_global_model_holding_inf_is_a_failed_task_not_a_crash(
    cluster: LocalCluster, data: str, start_agents: StartAgents
) -> None:
    def poison(task: dict[str, Any], content: bytes) -> tuple[dict[str, Any], bytes]:
        state, _ = tensors.decode(content)
        name = sorted(state)[0]
        state[name] = state[name].copy()
        state[name].flat[0] = np.inf
        return task, safetensors.numpy.save(state)

    with start_agents(cluster, {"m": data}, transport=attacked(poison)) as team:
        reason = only_declined(cluster, team, cluster.admin.submit(spec("inf")).id)
        assert "global model of round 0 is not usable" in reason and "NaN or Inf" in reason
        team.transports["m"].first = 10**9
        still_online(cluster, team)
