"""Start a coordinator and member agents as separate processes on loopback.

Used by ``fedaas demo``, the integration tests and the benchmarks. Every
process is started with its PID kept and stopped by PID (terminate, then
kill); logs go to ``<workdir>/logs``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from fedaas.client.admin import AdminClient
from fedaas.client.transport import (
    CA_CERT_ENV,
    CLIENT_CERT_ENV,
    CLIENT_KEY_ENV,
    TlsOptions,
    Transport,
)


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    """A coordinator process plus member processes; a context manager.

    ``tls``: how the admin client, the start-up health check and the member
    processes check the coordinator's certificate (and which client
    certificate they present); start the coordinator with ``--tls-cert`` etc.
    in ``start_server(extra_args=...)``.
    """

    def __init__(
        self, workdir: Path, *, threads_per_client: int = 1, tls: TlsOptions | None = None
    ) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.state = workdir / "state"
        self.admin_token = "fda_" + secrets.token_urlsafe(32)
        self.threads = threads_per_client
        self.server: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}
        self._client_args: dict[str, tuple[str, str, dict[str, str]]] = {}
        self.url = ""
        self.tls = tls or TlsOptions()
        self._admin: AdminClient | None = None

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()

    def _env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            OMP_NUM_THREADS=str(self.threads),
            MKL_NUM_THREADS=str(self.threads),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def _spawn(self, args: list[str], log_name: str, env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{log_name}.log").open("ab")
        return subprocess.Popen(
            [sys.executable, "-m", "fedaas", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )

    def start_server(
        self,
        *,
        timeout: float = 60.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> str:
        """Start the coordinator on a free port (a restart reuses it); returns its URL."""
        endpoint = self.state / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        port = self.url.rsplit(":", 1)[1] if self.url else "0"  # a restart keeps its port
        args = ["server", "--state", str(self.state), "--port", port, *(extra_args or [])]
        self._server_env = {**getattr(self, "_server_env", {}), **(env or {})}
        server_env = self._env(FEDAAS_ADMIN_TOKEN=self.admin_token, **self._server_env)
        self.server = self._spawn(args, "server", server_env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                raise ClusterError(
                    f"coordinator exited with {self.server.returncode}; see {self.logs / 'server.log'}"
                )
            if endpoint.exists():
                info = json.loads(endpoint.read_text())
                if info.get("pid") == self.server.pid:
                    self.url = info["url"]
                    try:
                        if self._healthy():
                            self._admin = None
                            return self.url
                    except httpx.TransportError:
                        pass
            time.sleep(0.05)
        raise ClusterError(f"coordinator did not start within {timeout:.0f} s")

    def _healthy(self) -> bool:
        verify = self.tls.context() if self.url.startswith("https://") else True
        return httpx.get(f"{self.url}/v1/health", timeout=2, verify=verify).status_code == 200

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            transport = Transport(self.url, self.admin_token, give_up_after=120.0, tls=self.tls)
            self._admin = AdminClient(transport)
        return self._admin

    def _tls_env(self) -> dict[str, str]:
        pairs = (
            (CA_CERT_ENV, self.tls.ca_cert),
            (CLIENT_CERT_ENV, self.tls.client_cert),
            (CLIENT_KEY_ENV, self.tls.client_key),
        )
        return {name: str(path) for name, path in pairs if path is not None}

    def start_client(
        self, name: str, data: str, token: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """Start a member agent (enrolling it first unless a token is given).

        ``env`` adds environment variables, e.g. the storage credentials of
        this member's cloud (kept out of the command line).
        """
        token = token or self.admin.enroll(name).token
        self._client_args[name] = (data, token, dict(env or {}))
        state = self.workdir / "members" / name
        args = [
            "client",
            "--server",
            self.url,
            "--data",
            data,
            "--threads",
            str(self.threads),
            "--state",
            str(state),
        ]
        env = {**self._tls_env(), **(env or {})}
        proc = self._spawn(args, f"client-{name}", self._env(FEDAAS_TOKEN=token, **env))
        self.clients[name] = proc
        return proc

    def wait_online(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``count`` members are polling the coordinator."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            online = sum(1 for m in self.admin.members() if m.online)
            if online >= count:
                return
            dead = [n for n, p in self.clients.items() if p.poll() is not None]
            if dead:
                raise ClusterError(f"member(s) {', '.join(dead)} exited; see {self.logs}")
            time.sleep(0.1)
        raise ClusterError(f"only {online} of {count} members came online within {timeout:.0f} s")

    @staticmethod
    def _halt(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill_client(self, name: str) -> None:
        """SIGKILL one member agent (for fault tests)."""
        self._halt(self.clients[name], signal.SIGKILL)

    def restart_client(self, name: str) -> subprocess.Popen:
        """Start a killed member again with its own token, data and state folder."""
        data, token, env = self._client_args[name]
        return self.start_client(name, data, token=token, env=env)

    def kill_server(self) -> None:
        """SIGKILL the coordinator (for crash tests)."""
        self._halt(self.server, signal.SIGKILL)

    def stop(self) -> None:
        for proc in self.clients.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.clients.values():
            self._halt(proc)
        self._halt(self.server)
        if self._admin is not None:
            self._admin.t.close()
