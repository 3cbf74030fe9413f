"""The command line without surprises, tried as a new operator would, against a real coordinator.

- ``fedaas --version``; the same connection options on every command that
  talks to a coordinator; ``--json`` on every listing and status command;
  ``member`` is the command's name and ``client`` still works;
- every command is listed with a one-line summary; a bad member name is
  refused before anything is sent; a coordinator or a member that
  cannot start (port taken, state path a file, admin token too short, a
  storage option that is not key=value, code allowed from a package that is
  not installed, a second coordinator or member agent on the same state) says
  why in one message;
- a job id is one path segment (``job status ../members`` is "no such
  job", not a request to another route);
- ``enroll`` against a wrong URL fails in seconds; a member started on a
  missing file says so within seconds, before going online;
- the unedited example (``examples/digits.toml``, min_clients 10) submitted
  to three members is flagged before it runs, and ``--strict`` refuses it;
  a job without evaluation says so; ``--mlflow`` sets its tracking.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from fedaas.cli import app
from fedaas.sim.cluster import LocalCluster
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits.toml"
CONNECTION = {"--server", "--token", "--ca-cert", "--client-cert", "--client-key"}
LISTINGS = {"members", "job list", "job status"}


def fedaas(
    *args: str, token: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAAS_")}
    if token:
        env["FEDAAS_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "fedaas", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path_factory.mktemp("cli")) as cluster:
        cluster.start_server()
        for name in ("ana", "bo", "cy"):
            cluster.admin.enroll(name)
        yield cluster


def _commands() -> dict[str, object]:
    root = typer.main.get_command(app)
    found: dict[str, object] = {}
    for name, command in root.commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        if subs:
            found.update({f"{name} {sub}": c for sub, c in subs.items()})
        else:
            found[name] = command
    return found


def _options(command: object) -> set[str]:
    return {opt for p in command.params for opt in p.opts}  # type: ignore[attr-defined]


def test_version_and_one_set_of_connection_options_everywhere() -> None:
    shown = fedaas("--version")
    assert shown.returncode == 0 and shown.stdout.strip() == "fedaas 0.1.0"
    commands = _commands()
    talking = {name for name, c in commands.items() if "--server" in _options(c)}
    assert talking >= {"enroll", "member", "members", "revoke"} | {
        f"job {n}" for n in ("submit", "list", "status", "cancel", "download")
    }
    for name in talking:
        assert _options(commands[name]) >= CONNECTION, name
    for name in LISTINGS | {"job submit", "job cancel"}:
        assert "--json" in _options(commands[name]), name
    assert commands["client"].hidden and not commands["member"].hidden  # type: ignore[attr-defined]


def test_every_command_is_listed_with_a_one_line_summary() -> None:
    for name, command in _commands().items():
        summary = (command.help or "").strip().split("\n\n")[0]  # type: ignore[attr-defined]
        assert summary, f"{name} has no help"
        # a first paragraph broken over lines is printed broken in `fedaas --help`
        assert "\n" not in summary, f"{name}: its summary spans lines: {summary!r}"


def test_every_help_fits_an_80_column_terminal() -> None:
    """Rich cuts what does not fit its columns with an ellipsis: an option's name, or a token
    of its help without a space (a URL, a generator's syntax), would be unreadable."""
    runner = CliRunner()
    for name, command in _commands().items():
        shown = runner.invoke(app, [*name.split(), "--help"], env={"COLUMNS": "80"})
        assert shown.exit_code == 0, (name, shown.output)
        assert "…" not in shown.output, f"fedaas {name} --help:\n{shown.output}"
        for option in _options(command):
            assert option in shown.output, (name, option)


def _unboxed(text: str) -> str:
    """A usage error as one line: the box around it and its line breaks taken out."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def _closed_url() -> str:
    """A coordinator URL nobody listens on: a request there retries, then fails."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_a_bad_member_name_is_refused_before_anything_is_sent() -> None:
    closed = _closed_url()
    for command, bad in [
        *((c, b) for c in ("enroll", "revoke") for b in ("bad name!", ".leading-dot", "a" * 101)),
        ("revoke", "../jobs"),
    ]:
        refused = fedaas(command, bad, "--server", closed, token="t" * 16)
        assert refused.returncode == 2, refused.stderr
        assert "Traceback" not in refused.stderr and "cannot reach" not in refused.stderr
        assert "Invalid value for 'name'" in _unboxed(refused.stderr)


def test_a_member_that_cannot_start_says_why_in_one_message(tmp_path: Path) -> None:
    data, a_file = tmp_path / "train.npz", tmp_path / "notes.txt"
    np.savez(data, x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    a_file.write_text("keep me")
    closed = _closed_url()
    binary = tmp_path / "token"
    binary.write_bytes(b"\xff\xfe")
    tries = {
        "--token-file": ["--token-file", str(binary)],
        "--state": ["--state", str(a_file)],
        "--storage-option": ["--storage-option", "no-equals-sign"],
    }
    for option, args in tries.items():
        result = fedaas("member", "--data", str(data), "--token", "t", *args, "--server", closed)
        assert result.returncode == 2, (option, result.stderr)
        assert "Traceback" not in result.stderr, (option, result.stderr)
        assert re.search(f"Invalid value for '?{option}'?:", _unboxed(result.stderr)), result.stderr
    assert a_file.read_text() == "keep me"


def test_a_second_member_agent_on_the_same_state_is_refused(tmp_path: Path) -> None:
    """Two agents on one state folder would spend, and write, one privacy ledger."""
    from fedaas.folder_lock import lock_folder

    data, state = tmp_path / "train.npz", tmp_path / "state"
    np.savez(data, x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.int64))
    state.mkdir()
    held = lock_folder(state, "member.lock")  # as the first agent holds it
    try:
        args = ("--data", str(data), "--state", str(state), "--server", _closed_url())
        second = fedaas("member", *args, "--token", "t")
    finally:
        held.close()
    assert second.returncode == 2, second.stderr
    said = _unboxed(second.stderr)
    assert f"another member agent (pid {os.getpid()}) is using the state" in said, said
    assert "Invalid value for --state" in said


def test_a_coordinator_that_cannot_start_says_why_in_one_message(tmp_path: Path) -> None:
    (tmp_path / "a-file").touch()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        tries = {
            "port in use": (["--state", str(tmp_path / "s1"), "--port", port], "a" * 16),
            "state is a file": (["--state", str(tmp_path / "a-file"), "--port", "0"], "a" * 16),
            "short token": (["--state", str(tmp_path / "s2"), "--port", "0"], "short"),
            "no such package": (
                [
                    "--state",
                    str(tmp_path / "s3"),
                    "--port",
                    "0",
                    "--allow-code",
                    "nosuchpkg.models",
                ],
                "a" * 16,
            ),
        }
        results = {what: fedaas("server", *args, token=t) for what, (args, t) in tries.items()}
    said = {}
    for what, result in results.items():
        assert result.returncode == 2, (what, result.stderr)
        assert "Traceback" not in result.stderr, (what, result.stderr)
        said[what] = _unboxed(result.stderr)
    assert "Invalid value for --port" in said["port in use"]
    assert "another coordinator" in said["port in use"]
    assert "Invalid value for --state" in said["state is a file"]
    assert "is a file" in said["state is a file"]
    assert "at least 16 characters" in said["short token"]
    assert "no package 'nosuchpkg' is installed" in said["no such package"]
    assert not (tmp_path / "s2" / "admin.token").exists()


def test_a_second_coordinator_on_the_same_state_is_refused(cluster: LocalCluster) -> None:
    """Two coordinators on one folder would both run its jobs (rounds twice, one ledger
    counted by both); the second refuses to start, naming the first, which goes on."""
    assert cluster.server is not None
    second = fedaas("server", "--state", str(cluster.state), "--port", "0", token="a" * 16)
    assert second.returncode == 2, second.stderr
    said = _unboxed(second.stderr)
    assert f"another coordinator (pid {cluster.server.pid}) is using the state" in said
    assert "Invalid value for --state" in said
    assert len(cluster.admin.members()) == 3  # the first one still answers


def test_wrong_url_and_missing_data_fail_in_seconds(tmp_path: Path) -> None:
    closed = _closed_url()
    started = time.monotonic()
    enrolled = fedaas("enroll", "ana", "--server", closed, token="t")
    assert enrolled.returncode == 2, enrolled.stderr
    assert time.monotonic() - started < 10
    assert enrolled.stderr.strip().splitlines()[-1].startswith("error: cannot reach")
    for command in ("member", "client"):
        started = time.monotonic()
        missing = str(tmp_path / "nowhere" / "train.npz")
        member = fedaas(command, "--data", missing, "--token", "t", "--server", closed)
        assert member.returncode == 2, member.stderr
        assert time.monotonic() - started < 15
        assert "no such file or folder" in member.stderr and "Traceback" not in member.stderr


def test_listings_answer_json(cluster: LocalCluster, tmp_path: Path) -> None:
    token, url = cluster.admin_token, cluster.url
    members = json.loads(fedaas("members", "--server", url, "--json", token=token).stdout)
    assert sorted(m["name"] for m in members) == ["ana", "bo", "cy"]
    spec = tmp_path / "job.toml"
    spec.write_text(_toml(make_spec("listed", min_clients=1)))
    submitted = fedaas("job", "submit", str(spec), "--server", url, "--json", token=token)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    listed = json.loads(fedaas("job", "list", "--server", url, "--json", token=token).stdout)
    assert job["id"] in [j["id"] for j in listed]
    status = fedaas("job", "status", job["id"], "--server", url, "--json", token=token)
    assert json.loads(status.stdout)["spec"]["job"]["name"] == "listed"
    cancelled = fedaas("job", "cancel", job["id"], "--server", url, "--json", token=token)
    assert json.loads(cancelled.stdout)["status"] == "cancelled"


def test_a_job_id_is_one_path_segment_never_another_route(cluster: LocalCluster) -> None:
    """``job status ../members`` once asked for ``/v1/members`` (httpx resolves ``..``) and
    died on its answer; ``job cancel ../../v1/jobs`` posted to the jobs list."""
    token, url = cluster.admin_token, cluster.url
    for args in (("status", "../members"), ("cancel", "../../v1/jobs"), ("status", "x?y=1")):
        done = fedaas("job", *args, "--server", url, token=token)
        assert done.returncode == 2, done.stderr
        assert "404" in done.stderr and "Traceback" not in done.stderr
    assert len(cluster.admin.members()) == 3  # nothing else was touched


def test_the_unedited_example_is_flagged_before_it_runs(cluster: LocalCluster) -> None:
    token, url = cluster.admin_token, cluster.url
    before = len(cluster.admin.jobs())
    strict = fedaas("job", "submit", str(EXAMPLE), "--server", url, "--strict", token=token)
    assert strict.returncode == 2
    assert "min_clients is 10 but only 3 member(s) are enrolled" in strict.stderr
    assert "not submitted (--strict)" in strict.stderr
    assert len(cluster.admin.jobs()) == before  # nothing reached the queue
    plain = fedaas("job", "submit", str(EXAMPLE), "--server", url, token=token)
    assert plain.returncode == 0, plain.stderr
    assert "warning: federation.min_clients is 10" in plain.stderr
    assert "no evaluation" not in plain.stderr  # the example evaluates (issue 11)
    cluster.admin.cancel(plain.stdout.strip().splitlines()[-1])


def test_mlflow_option_sets_the_jobs_tracking(cluster: LocalCluster, tmp_path: Path) -> None:
    token, url = cluster.admin_token, cluster.url
    spec = tmp_path / "job.toml"
    spec.write_text(
        _toml(make_spec("tracked", min_clients=1, evaluation={"validation_split": 0.2}))
    )
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = fedaas("job", "submit", str(spec), "--server", url, "--mlflow", store, token=token)
    assert done.returncode == 0, done.stderr
    assert "note:" not in done.stderr  # it has an evaluation, and enough members
    job_id = done.stdout.strip().splitlines()[-1]
    job = cluster.admin.job(job_id)
    assert job.spec.tracking is not None and job.spec.tracking.mlflow == store
    cluster.admin.cancel(job_id)
    bad = fedaas(
        "job", "submit", str(spec), "--server", url, "--mlflow", "http://u:pw@h", token=token
    )
    assert bad.returncode == 2 and "credentials do not belong in the URI" in bad.stderr
    shown = _unboxed(fedaas("job", "submit", "--help").stdout)
    assert "(sets [tracking] mlflow)" in shown  # not eaten as rich markup


def _toml(spec: dict[str, object]) -> str:
    lines = []
    for section, values in spec.items():
        lines.append(f"[{section}]")
        for key, value in values.items():  # type: ignore[attr-defined]
            lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
