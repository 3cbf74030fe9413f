"""TLS and mutual TLS against a real coordinator process (certificates made at test time)."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import typer
from typer.testing import CliRunner

from fedaas.cli import app as fedaas_app
from fedaas.cli import members as members_cli
from fedaas.client.transport import ApiClientError, TlsOptions, Transport
from fedaas.server.run import TlsConfigError, server_ssl_context
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any FEDAAS_* variable; wide, so rich does not wrap errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEDAAS_")}
    return {**env, "COLUMNS": "1000", **extra}


def fedaas(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "fedaas", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(**(env or {})),
    )


def cli(*args: str, **env: str):  # type: ignore[no-untyped-def]
    """Run a ``fedaas`` command in this process (quicker than a subprocess)."""
    app = fedaas_app
    if args[0] in ("members", "revoke"):  # not registered in fedaas.cli (yet)
        app = typer.Typer()
        app.callback()(lambda: None)
        app.command("members")(members_cli.members)
        app.command("revoke")(members_cli.revoke)
    names = ("FEDAAS_ADMIN_TOKEN", "FEDAAS_CA_CERT", "FEDAAS_CLIENT_CERT", "FEDAAS_CLIENT_KEY")
    full_env: dict[str, str | None] = {name: None for name in names}
    return CliRunner().invoke(app, list(args), env={**full_env, **env})


def one_line_error(result: subprocess.CompletedProcess, logs: bool = False) -> str:
    """The command failed with status 2 and one error line on stderr, no traceback.

    With ``logs``, log lines may precede it (the member agent logs as it starts).
    """
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    if logs:
        lines = [line for line in lines if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def tls_cluster(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tls = TlsOptions(ca_cert=pki.ca_cert)
    with LocalCluster(tmp_path_factory.mktemp("tls"), tls=tls) as cluster:
        cluster.start_server(
            extra_args=["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)]
        )
        yield cluster


@pytest.fixture(scope="module")
def mtls_cluster(pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tls = TlsOptions(pki.ca_cert, pki.client_cert, pki.client_key)
    with LocalCluster(tmp_path_factory.mktemp("mtls"), tls=tls) as cluster:
        cluster.start_server(
            extra_args=[
                "--tls-cert",
                str(pki.server_cert),
                "--tls-key",
                str(pki.server_key),
                "--tls-client-ca",
                str(pki.ca_cert),
            ]
        )
        yield cluster


# one-way TLS ------------------------------------------------------------------------


def test_the_coordinator_announces_an_https_url(tls_cluster: LocalCluster) -> None:
    assert tls_cluster.url.startswith("https://127.0.0.1:")
    info = json.loads((tls_cluster.state / "endpoint.json").read_text())
    assert info["url"] == tls_cluster.url


def test_https_works_with_the_ca(tls_cluster: LocalCluster, pki) -> None:
    t = Transport(tls_cluster.url, tls_cluster.admin_token, tls=TlsOptions(ca_cert=pki.ca_cert))
    try:
        assert t.get_json("/v1/health")["status"] == "ok"
        assert t.get_json("/v1/members") == []
    finally:
        t.close()
    # the operator's commands read the CA from $FEDAAS_CA_CERT or --ca-cert
    env = {"FEDAAS_ADMIN_TOKEN": tls_cluster.admin_token, "FEDAAS_CA_CERT": str(pki.ca_cert)}
    enrolled = cli("enroll", "hospital-a", "--server", tls_cluster.url, **env)
    assert enrolled.exit_code == 0, enrolled.output
    assert enrolled.stdout.strip().startswith("fdm_")
    listed = cli("job", "list", "--server", tls_cluster.url, **env)
    assert listed.exit_code == 0, listed.output
    assert "Traceback" not in listed.output
    env.pop("FEDAAS_CA_CERT")
    listed = cli("members", "--server", tls_cluster.url, "--ca-cert", str(pki.ca_cert), **env)
    assert listed.exit_code == 0 and "hospital-a" in listed.stdout, listed.output


@pytest.mark.parametrize("trust", ["system", "other-ca"])
def test_a_client_without_the_ca_fails_at_once_with_one_clear_line(
    tls_cluster: LocalCluster, pki, trust: str
) -> None:
    tls = TlsOptions() if trust == "system" else TlsOptions(ca_cert=pki.other_ca_cert)
    t = Transport(tls_cluster.url, tls_cluster.admin_token, give_up_after=60, tls=tls)
    started = time.monotonic()
    with pytest.raises(ApiClientError) as info:
        t.get_json("/v1/members")
    t.close()
    assert time.monotonic() - started < 5, "a certificate that does not verify is not retried"
    message = str(info.value)
    assert info.value.code == "tls"
    assert "\n" not in message
    assert "TLS certificate" in message and "does not verify" in message, message
    assert "--ca-cert" in message and "FEDAAS_CA_CERT" in message, message

    if trust == "system":  # the command line says it in one line, status 2
        env = {"FEDAAS_ADMIN_TOKEN": tls_cluster.admin_token}
        line = one_line_error(fedaas("job", "list", "--server", tls_cluster.url, env=env))
        assert line.startswith("error: the coordinator's TLS certificate at https://"), line
        assert "unable to get local issuer certificate" in line, line


def test_plain_http_to_the_tls_port_fails(tls_cluster: LocalCluster, pki) -> None:
    plain = tls_cluster.url.replace("https://", "http://")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{plain}/v1/health", timeout=5)
    t = Transport(plain, tls_cluster.admin_token, give_up_after=1.0)
    with pytest.raises(ApiClientError) as info:
        t.get_json("/v1/members")
    t.close()
    assert info.value.code in ("unreachable", "tls")
    # the coordinator is unharmed
    ctx = TlsOptions(ca_cert=pki.ca_cert).context()
    assert httpx.get(f"{tls_cluster.url}/v1/health", verify=ctx, timeout=5).status_code == 200


def test_tls_to_a_plain_http_coordinator_says_so(tmp_path: Path, pki) -> None:
    """Wrong scheme the other way round: https:// to a plain server is one clear line too."""
    from fedaas.client.transport import tls_problem

    ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"  # type: ignore[misc]
    wrapped = httpx.ConnectError("boom")
    wrapped.__cause__ = exc
    assert "does not speak TLS" in (tls_problem(wrapped, "https://x") or "")
    assert ctx.verify_mode == ssl.CERT_REQUIRED


def test_bad_tls_files_are_refused_with_a_clear_error(pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="not found"):
        server_ssl_context(tmp_path / "missing.pem", pki.server_key)
    with pytest.raises(TlsConfigError, match="key values mismatch"):
        server_ssl_context(pki.server_cert, pki.client_key)
    with pytest.raises(TlsConfigError, match="client CA file not found"):
        server_ssl_context(pki.server_cert, pki.server_key, tmp_path / "nope.pem")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(TlsConfigError, match="cannot load"):
        server_ssl_context(garbage, pki.server_key)
    ctx = server_ssl_context(pki.server_cert, pki.server_key, pki.ca_cert)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    with pytest.raises(ApiClientError, match="cannot load the TLS files"):
        TlsOptions(ca_cert=garbage).context()
    with pytest.raises(ApiClientError, match="client key needs its certificate"):
        TlsOptions(client_key=pki.client_key).context()
    # the command line checks before it starts anything
    usage = cli("server", "--state", str(tmp_path / "s"), "--tls-cert", str(pki.server_cert))
    assert usage.exit_code == 2 and "--tls-cert needs --tls-key" in usage.output, usage.output
    assert not (tmp_path / "s").exists()
    usage = cli("server", "--state", str(tmp_path / "s"), "--tls-cert", str(tmp_path / "no.pem"))
    assert usage.exit_code == 2 and "no.pem" in usage.output, usage.output


# mutual TLS -------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["no-certificate", "stranger"])
def test_mutual_tls_rejects_a_client_without_a_good_certificate(
    mtls_cluster: LocalCluster, pki, who: str
) -> None:
    if who == "no-certificate":
        tls = TlsOptions(ca_cert=pki.ca_cert)
        expected = "requires a client certificate"
    else:
        tls = TlsOptions(pki.ca_cert, pki.stranger_cert, pki.stranger_key)
        expected = "refused this client's TLS certificate"
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{mtls_cluster.url}/v1/health", verify=tls.context(), timeout=5)
    t = Transport(mtls_cluster.url, mtls_cluster.admin_token, give_up_after=60, tls=tls)
    started = time.monotonic()
    with pytest.raises(ApiClientError) as info:
        t.get_json("/v1/members")
    t.close()
    assert time.monotonic() - started < 5
    assert info.value.code == "tls" and expected in str(info.value), str(info.value)


def test_mutual_tls_accepts_the_client_certificate(mtls_cluster: LocalCluster, pki) -> None:
    tls = TlsOptions(pki.ca_cert, pki.client_cert, pki.client_key)
    response = httpx.get(f"{mtls_cluster.url}/v1/health", verify=tls.context(), timeout=5)
    assert response.status_code == 200
    env = {"FEDAAS_ADMIN_TOKEN": mtls_cluster.admin_token, "FEDAAS_CA_CERT": str(pki.ca_cert)}
    args = ["--client-cert", str(pki.client_cert), "--client-key", str(pki.client_key)]
    enrolled = cli("enroll", "probe", "--server", mtls_cluster.url, *args, **env)
    assert enrolled.exit_code == 0, enrolled.output
    listed = cli("members", "--server", mtls_cluster.url, *args, **env)
    assert listed.exit_code == 0 and "probe" in listed.stdout, listed.output
    # the job commands take the client certificate from the environment
    env.update(FEDAAS_CLIENT_CERT=str(pki.client_cert), FEDAAS_CLIENT_KEY=str(pki.client_key))
    listed = cli("job", "list", "--server", mtls_cluster.url, **env)
    assert listed.exit_code == 0, listed.output
    token = mtls_cluster.admin_token
    without = cli(
        "members", "--server", mtls_cluster.url, "--ca-cert", str(pki.ca_cert), "--token", token
    )
    assert isinstance(without.exception, ApiClientError), without.output
    assert "requires a client certificate" in str(without.exception)


def test_a_member_agent_completes_a_job_over_mutual_tls(
    mtls_cluster: LocalCluster, member_data: list[Path], make_spec, pki
) -> None:
    cluster = mtls_cluster
    cluster.start_client("member-a", str(member_data[0]))  # the CN of pki.client_cert
    # a member without a client certificate is refused with one line and gives up at once
    token = cluster.admin.enroll("org-nocert").token
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedaas",
            "client",
            "--server",
            cluster.url,
            "--data",
            str(member_data[1]),
            "--state",
            str(cluster.workdir / "nocert"),
            "--ca-cert",
            str(pki.ca_cert),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(FEDAAS_TOKEN=token),
    )
    line = one_line_error(refused, logs=True)
    assert "requires a client certificate" in line, line
    cluster.admin.revoke("org-nocert")

    cluster.wait_online(1, timeout=60)
    job = cluster.admin.submit(make_spec("over-mtls", rounds=1))
    deadline = time.monotonic() + 90
    while True:
        current = cluster.admin.job(job.id, after_round=0, timeout=20)
        if current.status in ("completed", "failed", "cancelled"):
            break
        assert time.monotonic() < deadline, current
    assert current.status == "completed", current
    (first,) = current.rounds
    assert first.participants == ["member-a"]
    assert first.bytes_up > 0
    logs = "".join(p.read_text() for p in cluster.logs.glob("*.log"))
    assert "Traceback" not in logs
    assert token not in logs and cluster.admin_token not in logs and token not in refused.stderr


def test_a_members_token_works_only_with_its_own_certificate(
    mtls_cluster: LocalCluster, pki
) -> None:
    """Issue 9: member b's token with member a's certificate (CN=member-a) is refused."""
    token = mtls_cluster.admin.enroll("member-b").token
    tls = TlsOptions(pki.ca_cert, pki.client_cert, pki.client_key)  # member a's certificate
    t = Transport(mtls_cluster.url, token, give_up_after=5, tls=tls)
    try:
        for path in ("/v1/tasks/next?timeout=0", "/v1/jobs/job-x/model"):
            with pytest.raises(ApiClientError) as info:
                t.request("GET", path)
            assert info.value.status == 403 and info.value.code == "certificate_mismatch"
            assert "'member-a'" in str(info.value) and "'member-b'" in str(info.value)
    finally:
        t.close()
    mtls_cluster.admin.revoke("member-b")
