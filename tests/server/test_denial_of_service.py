"""Denial of service against a real coordinator on loopback: each attack bounded, each defended.

- connections that send half a header, or nothing, are closed after the header
  deadline, and while they are open the coordinator still answers;
- unauthenticated requests with 8 MiB bodies are refused before the body is
  read: the coordinator's resident memory does not grow;
- a member gets one upload in flight per round: a second, while its first is
  stalled, is refused;
- a member that polls but never uploads is benched after missing a deadline,
  so the next round does not wait for it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fedaas.server.connections import HEADER_TIMEOUT_S
from fixtures.federation import Federation, StartFederation
from fixtures.specs import make_spec

pytestmark = pytest.mark.slow


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise KeyError("VmRSS")


def address(fed: Federation) -> tuple[str, int]:
    host, port = fed.cluster.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.fixture(scope="module")
def fed(start_federation: StartFederation) -> Iterator[Federation]:
    with start_federation(make_spec("dos", rounds=2, clients=2, timeout=300)) as fed:
        yield fed


def test_half_sent_headers_and_idle_connections_are_closed(fed: Federation) -> None:
    sockets = []
    for i in range(120):
        sock = socket.create_connection(address(fed), timeout=5)
        if i % 2:  # slowloris: half a request, never finished
            sock.sendall(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sockets.append(sock)
    try:
        started = time.monotonic()
        health = fed.request("GET", "/v1/health", None)  # others are still served meanwhile
        assert health.status_code == 200 and time.monotonic() - started < 2
        time.sleep(HEADER_TIMEOUT_S)
        assert all(closed_by_peer(s, within=5) for s in sockets)
    finally:
        for sock in sockets:
            sock.close()


def _unauthenticated_upload(addr: tuple[str, int], size: int) -> bytes:
    head = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(head)
        try:
            chunk = b" " * (1 << 20)
            for _ in range(size >> 20):
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered and closed before the body was read: the point
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b"HTTP/1.1 401 (reset)"


def test_unauthenticated_bodies_are_never_read(fed: Federation) -> None:
    pid = fed.cluster.server.pid  # type: ignore[union-attr]
    before = rss_mb(pid)
    with ThreadPoolExecutor(12) as pool:
        answers = list(
            pool.map(lambda _: _unauthenticated_upload(address(fed), 8 << 20), range(60))
        )
    assert all(a.startswith(b"HTTP/1.1 401") for a in answers), {a[:40] for a in answers}
    assert rss_mb(pid) - before < 40  # 60 x 8 MiB read and parsed grew it by ~480 MB before


def test_one_upload_in_flight_per_member(fed: Federation) -> None:
    path = f"/v1/jobs/{fed.job_id}/rounds/1/update"
    head = (
        f"PUT {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {fed.tokens['alpha']}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {fed.limit - 1}\r\n\r\n"
    ).encode()
    stalled = socket.create_connection(address(fed), timeout=10)
    try:
        stalled.sendall(head + b"\x00" * 1000)  # and then nothing more
        time.sleep(0.5)
        second = fed.upload(fed.good_body(), member="alpha")
        assert second.status_code == 409, second.text
        assert second.json()["error"] == "upload_in_progress"
        other = fed.upload(fed.good_body(), member="beta")  # other members are not held up
        assert other.status_code == 200, other.text
    finally:
        stalled.close()
    for _ in range(50):  # the slot is freed once the stalled upload's connection is gone
        retry = fed.upload(fed.good_body(), member="alpha")
        if retry.status_code != 409:
            break
        time.sleep(0.1)
    assert retry.status_code == 200, retry.text


def test_a_member_that_never_uploads_is_benched(start_federation: StartFederation) -> None:
    timeout = 6.0
    spec = make_spec("straggler", rounds=3, clients=None, timeout=timeout)
    members = ("alpha", "beta", "lazy")
    with start_federation(spec, members=members, online=members) as fed:
        done = threading.Event()

        def honest(name: str) -> None:
            while not done.is_set():
                task = fed.request("GET", "/v1/tasks/next", fed.tokens[name], params={"timeout": 2})
                if task.status_code == 200 and task.json()["stage"] == "train":
                    fed.upload(fed.good_body(), member=name, number=task.json()["round"])

        def lazy() -> None:  # online, polling, never uploading
            while not done.is_set():
                fed.request("GET", "/v1/tasks/next", fed.tokens["lazy"], params={"timeout": 2})

        threads = [threading.Thread(target=honest, args=(n,)) for n in ("alpha", "beta")]
        threads.append(threading.Thread(target=lazy))
        for thread in threads:
            thread.start()
        try:
            job = fed.cluster.admin.wait(fed.job_id, timeout=60).model_dump()
        finally:
            done.set()
            for thread in threads:
                thread.join(timeout=10)
        assert job["status"] == "completed", job
        first, second, third = job["rounds"]
        assert first["participants"] == ["alpha", "beta"]
        assert first["seconds"] >= timeout - 0.5  # round 1 waited for lazy until its deadline
        assert second["seconds"] < timeout / 2  # round 2 did not sample lazy at all
        assert third["seconds"] >= timeout - 0.5  # lazy is back (and misses again)
