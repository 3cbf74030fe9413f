"""Local object-storage emulators for tests and demos (real servers on loopback).

- S3: ``moto_server`` (PyPI ``moto[server]``); with ``auth=True`` it checks
  signatures against an IAM user it creates, so wrong credentials fail.
- GCS: ``gcp-storage-emulator`` (PyPI); no authentication.
- Azure Blob: Azurite (npm ``azurite@3.35.0`` in ``node_modules/``), started
  as ``node_modules/.bin/azurite-blob`` so that the PID is the server's.

Each runs as a subprocess on a free 127.0.0.1 port with its own temporary
folder. Its PID is kept and it is stopped by that PID only (SIGTERM, then
SIGKILL), by :meth:`Emulator.stop`, the context manager, at interpreter exit,
or by the kernel if this process dies (``PR_SET_PDEATHSIG`` on Linux).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedaas import storage

EmulatorKind = Literal["s3", "gs", "az"]
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (  # Azurite's published development key, not a secret
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_RUNNING: dict[int, Emulator] = {}


class EmulatorError(RuntimeError):
    """An emulator that is not installed or did not start."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Emulator:
    """A running emulator: its process, endpoint, and how to talk to it."""

    kind: EmulatorKind
    process: subprocess.Popen[bytes]
    endpoint: str
    workdir: Path
    storage_options: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables that point the cloud's SDKs (and fedaas) at this emulator."""

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, bucket: str, *parts: str) -> str:
        """``kind://bucket/parts...``."""
        return storage.join(f"{self.kind}://{bucket}", *parts)

    def make_bucket(self, bucket: str) -> str:
        """Create a bucket (container); returns its URL."""
        url = self.url(bucket)
        storage.make_bucket(url, self.storage_options)
        return url

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the process by its PID (SIGTERM, then SIGKILL) and remove its folder."""
        _RUNNING.pop(self.pid, None)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@atexit.register
def _stop_all() -> None:
    for emulator in list(_RUNNING.values()):
        emulator.stop()


def _log_tail(path: Path, limit: int = 1500) -> str:
    try:
        return storage.redact_text(path.read_text(errors="replace")[-limit:])
    except OSError:
        return ""


def _launch(
    kind: EmulatorKind, argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None
) -> Emulator:
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=workdir,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    emulator = Emulator(kind, process, f"http://127.0.0.1:{port}", workdir)
    _RUNNING[process.pid] = emulator
    return emulator


def _wait_ready(emulator: Emulator, path: str = "/", timeout: float = 30.0) -> None:
    """Wait until the server answers HTTP at all (any status), or fail with its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if emulator.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(emulator.endpoint + path, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.1)
    code = emulator.process.poll()
    emulator.stop()
    state = f"exited with status {code}" if code is not None else f"not ready in {timeout:.0f} s"
    raise EmulatorError(
        f"{emulator.kind} emulator {state}; log: {_log_tail(emulator.workdir / 'server.log')}"
    )


def _workdir(kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"fedaas-{kind}-emulator-"))


# moto_server with buckets made in-process before it listens: a client that reconnects
# to a restarted emulator never sees it without them.
_S3_MAIN = (
    "import json, pathlib, sys; from moto.core import DEFAULT_ACCOUNT_ID; "
    "from moto.s3.models import s3_backends; "
    "backend = s3_backends[DEFAULT_ACCOUNT_ID]['aws']; "
    "[backend.create_bucket(name, 'us-east-1') for name in sys.argv[1].split(',') if name]; "
    "[backend.put_object(*where.split('/', 1), pathlib.Path(path).read_bytes()) "
    "for where, path in json.loads(sys.argv[2]).items()]; "
    "from moto.server import main; main(sys.argv[3:])"
)


def start_s3(
    auth: bool = False,
    timeout: float = 30.0,
    port: int | None = None,
    buckets: tuple[str, ...] = (),
    objects: dict[str, Path] | None = None,
) -> Emulator:
    """Start moto_server; with ``auth`` every request must be signed by the IAM key it makes.

    ``port``: a given port (to bring a stopped emulator back where clients expect it; its
    buckets are gone, moto keeps them in memory). ``buckets``, and ``objects`` (``bucket/key``
    -> a local file with its bytes), exist from the first request it answers, so a client that
    retries into the restarted emulator finds them.
    """
    port, workdir = port or free_port(), _workdir("s3")
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "3"} if auth else {}
    objects = objects or {}
    buckets = tuple(dict.fromkeys([*buckets, *(where.split("/", 1)[0] for where in objects)]))
    preload = json.dumps({where: str(path) for where, path in objects.items()})
    argv = [sys.executable, "-c", _S3_MAIN, ",".join(buckets), preload]
    argv += ["-H", "127.0.0.1", "-p", str(port)]
    emu = _launch("s3", argv, port, workdir, env)
    _wait_ready(emu, "/moto-api/", timeout)
    key, secret = "testing", "testing"
    if auth:
        key, secret = _make_iam_key(emu.endpoint)
    emu.storage_options = {"key": key, "secret": secret, "endpoint_url": emu.endpoint}
    emu.env = {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_ENDPOINT_URL": emu.endpoint,
    }
    return emu


def _make_iam_key(endpoint: str) -> tuple[str, str]:
    """An IAM user allowed everything and its access key (the 3 unauthenticated calls)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=endpoint,
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
        region_name="us-east-1",
    )
    iam.create_user(UserName="fedaas")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
    }
    iam.put_user_policy(UserName="fedaas", PolicyName="all", PolicyDocument=json.dumps(policy))
    made = iam.create_access_key(UserName="fedaas")["AccessKey"]
    return made["AccessKeyId"], made["SecretAccessKey"]


# The emulator serves one request at a time from a listen backlog of 5: gcsfs's
# concurrent requests overflow it and each dropped connection costs seconds of
# retries. The same program with a deep backlog (the PID is still the server's):
_GCS_MAIN = (
    "import sys, http.server; http.server.HTTPServer.request_queue_size = 1024; "
    "from gcp_storage_emulator.__main__ import main; sys.argv[0] = 'gcp-storage-emulator'; main()"
)


def start_gcs(timeout: float = 30.0) -> Emulator:
    """Start gcp-storage-emulator (data in its temporary folder)."""
    port, workdir = free_port(), _workdir("gs")
    data = workdir / "data"
    args = [
        "-d",
        str(data.resolve()),
        "start",
        "-M",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-q",
    ]
    argv = [sys.executable, "-c", _GCS_MAIN, *args]
    emu = _launch("gs", argv, port, workdir)
    _wait_ready(emu, "/storage/v1/b", timeout)
    emu.storage_options = {"endpoint_url": emu.endpoint, "token": "anon"}
    emu.env = {"STORAGE_EMULATOR_HOST": emu.endpoint}
    return emu


def azurite_path() -> Path | None:
    """``node_modules/.bin/azurite-blob`` from ``$FEDAAS_AZURITE``, the cwd or the repository."""
    if os.environ.get("FEDAAS_AZURITE"):
        given = Path(os.environ["FEDAAS_AZURITE"])
        return given if given.exists() else None
    for base in [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]:
        candidate = base / "node_modules" / ".bin" / "azurite-blob"
        if candidate.exists():
            return candidate
    return None


def azurite_connection_string(endpoint: str) -> str:
    """The connection string of Azurite's development account at ``endpoint``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint={endpoint}/{AZURITE_ACCOUNT};"
    )


def start_azure(timeout: float = 30.0) -> Emulator:
    """Start Azurite's blob service (needs ``npm ci`` at the repository root)."""
    binary = azurite_path()
    if binary is None or shutil.which("node") is None:
        raise EmulatorError("Azurite is not installed: run `npm ci` at the repository root")
    port, workdir = free_port(), _workdir("az")
    argv = [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port)]
    argv += ["--location", str(workdir / "data"), "--skipApiVersionCheck", "--disableTelemetry"]
    argv += ["--silent"]
    emu = _launch("az", argv, port, workdir)
    _wait_ready(emu, f"/{AZURITE_ACCOUNT}?comp=list", timeout)
    conn = azurite_connection_string(emu.endpoint)
    emu.storage_options = {"connection_string": conn}
    emu.env = {"AZURE_STORAGE_CONNECTION_STRING": conn}
    return emu


STARTERS = {"s3": start_s3, "gs": start_gcs, "az": start_azure}


def start(kind: EmulatorKind, **kwargs: Any) -> Emulator:
    """Start the emulator for ``kind`` (``s3``, ``gs`` or ``az``)."""
    return STARTERS[kind](**kwargs)  # type: ignore[operator]


@contextlib.contextmanager
def running(kind: EmulatorKind, **kwargs: Any) -> Iterator[Emulator]:
    """``with running("s3") as emu:`` ... the emulator is stopped on exit."""
    emulator = start(kind, **kwargs)
    try:
        yield emulator
    finally:
        emulator.stop()
