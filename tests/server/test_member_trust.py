"""The coordinator's side of trust with its members (issue 9, items 1 and 9), real processes.

- a spec naming code the coordinator's operator did not allow (``--allow-code``) is refused at
  submission (422, with the reason) and nothing of it is imported; allowed code is built;
- a member's token downloads only the models of jobs it takes or took part in;
- a revoked member can be given a new token (``fedaas enroll --renew``);
- a member's decline reason is shown literally by ``fedaas job status`` (no rich markup);
- a coordinator on a non-loopback address over plain HTTP warns loudly at start.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedaas.cli import app as fedaas_app
from fedaas.sim.cluster import LocalCluster
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

PLUGINS = Path(__file__).resolve().parents[1] / "models"  # plugin_model.py


@pytest.fixture(scope="module")
def fed(start_federation: StartFederation) -> Iterator[Federation]:
    """Round 1 open: alpha and beta sampled, gamma enrolled but never polling."""
    with start_federation(make_spec("trust", rounds=3, clients=2, timeout=300)) as fed:
        yield fed


def test_code_the_coordinator_did_not_allow_is_refused_at_submission(
    tmp_path: Path, fed: Federation
) -> None:
    owned = tmp_path / "owned.log"
    attacks = {
        "torch.hub:load": {"repo_or_dir": str(tmp_path), "model": "x", "source": "local"},
        "logging:basicConfig": {"filename": str(owned), "filemode": "w"},
        "plugin_model:tiny": {"width": 3},  # not allowed on this coordinator either
    }
    for name, options in attacks.items():
        spec = make_spec("code") | {"model": {"name": name, "options": options}}
        response = fed.request("POST", "/v1/jobs", fed.cluster.admin_token, json={"spec": spec})
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert "has not allowed" in detail and "--allow-code" in detail, detail
    assert not owned.exists()
    assert fed.jobs() == [fed.job_id]


def test_allowed_code_is_built_and_options_it_does_not_name_are_refused(tmp_path: Path) -> None:
    with LocalCluster(tmp_path) as cluster:
        cluster.start_server(
            extra_args=["--allow-code", "plugin_model"], env={"PYTHONPATH": str(PLUGINS)}
        )
        spec = make_spec("plugin") | {
            "model": {"name": "plugin_model:tiny", "options": {"width": 3}}
        }
        assert cluster.admin.submit(spec).status == "queued"
        spec["model"]["options"] = {"width": 3, "repo_or_dir": "/tmp"}
        with pytest.raises(Exception, match="takes no option repo_or_dir"):
            cluster.admin.submit(spec)
        spec["model"] = {"name": "plugin_model:reexported", "options": {}}
        with pytest.raises(Exception, match="not defined in an allowed package"):
            cluster.admin.submit(spec)


def test_a_member_downloads_only_models_of_jobs_it_takes_part_in(fed: Federation) -> None:
    path = f"/v1/jobs/{fed.job_id}/model"
    assert fed.request("GET", path, fed.tokens["alpha"]).status_code == 200  # sampled
    assert fed.request("GET", path, fed.cluster.admin_token).status_code == 200
    never = fed.request("GET", path, fed.tokens["gamma"])  # enrolled, never took part
    assert never.status_code == 403 and never.json()["error"] == "not_a_participant"
    assert "takes no part" in never.json()["detail"]


def test_a_declined_member_cannot_download_the_model(start_federation: StartFederation) -> None:
    with start_federation(make_spec("declined", rounds=3, clients=2, timeout=300)) as fed:
        path = f"/v1/jobs/{fed.job_id}/model"
        assert fed.request("GET", path, fed.tokens["beta"]).status_code == 200
        reason = "not [bold]today[/] [/] \\"
        declined = fed.request(
            "POST", f"/v1/jobs/{fed.job_id}/decline", fed.tokens["beta"], json={"reason": reason}
        )
        assert declined.status_code == 200
        refused = fed.request("GET", path, fed.tokens["beta"])
        assert refused.status_code == 403 and "declined" in refused.json()["detail"]

        # the reason is shown as it was written: no markup, no crash
        env = {"FEDAAS_ADMIN_TOKEN": fed.cluster.admin_token, "COLUMNS": "300"}
        result = CliRunner().invoke(
            fedaas_app, ["job", "status", fed.job_id, "--server", fed.cluster.url], env=env
        )
        assert result.exit_code == 0, result.output
        assert f"member beta declined: {reason}" in result.stdout, result.stdout
        # an error detail from the coordinator with markup in it: one literal line, status 2
        bad = subprocess.run(
            [
                sys.executable,
                "-m",
                "fedaas",
                "job",
                "status",
                "job-[bold]x",
                "--server",
                fed.cluster.url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
        assert "job-[bold]x" in bad.stderr, bad.stderr


def test_a_revoked_member_can_be_given_a_new_token(start_federation: StartFederation) -> None:
    with start_federation(make_spec("renew", rounds=3, clients=2, timeout=300)) as fed:
        admin = fed.cluster.admin
        old = fed.tokens["gamma"]
        admin.revoke("gamma")
        poll = {"timeout": 0}
        assert fed.request("GET", "/v1/tasks/next", old, params=poll).status_code == 401
        env = {"FEDAAS_ADMIN_TOKEN": fed.cluster.admin_token}
        result = CliRunner().invoke(
            fedaas_app, ["enroll", "gamma", "--renew", "--server", fed.cluster.url], env=env
        )
        assert result.exit_code == 0, result.output
        new = result.stdout.strip()
        assert new.startswith("fdm_") and new != old
        assert fed.request("GET", "/v1/tasks/next", new, params=poll).status_code in (200, 204)
        assert fed.request("GET", "/v1/tasks/next", old, params=poll).status_code == 401
        assert fed.member_names()["gamma"] is False
        # renewing an active member's token retires the old one at once
        again = admin.renew("gamma").token
        assert fed.request("GET", "/v1/tasks/next", new, params=poll).status_code == 401
        assert fed.request("GET", "/v1/tasks/next", again, params=poll).status_code in (200, 204)
        missing = fed.request("POST", "/v1/members/nobody/token", fed.cluster.admin_token)
        assert missing.status_code == 404
        member = fed.request("POST", "/v1/members/gamma/token", again)
        assert member.status_code == 403


def test_plain_http_on_a_public_interface_warns_loudly(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "public") as cluster:
        cluster.start_server(extra_args=["--host", "0.0.0.0"])
    log = (tmp_path / "public" / "logs" / "server.log").read_text()
    assert "over PLAIN HTTP" in log and "--tls-cert" in log, log
    with LocalCluster(tmp_path / "loopback") as cluster:
        cluster.start_server()
    assert "PLAIN HTTP" not in (tmp_path / "loopback" / "logs" / "server.log").read_text()
