"""A member that hangs up during its long-poll is offline at once, not after the poll's timeout."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from fedaas.server.presence import Presence
from fedaas.sim.cluster import LocalCluster

pytestmark = pytest.mark.slow


def online(cluster: LocalCluster) -> dict[str, bool]:
    return {m.name: m.online for m in cluster.admin.members()}


def test_a_member_that_hangs_up_mid_poll_goes_offline(tmp_path: Path) -> None:
    with LocalCluster(tmp_path / "cluster") as cluster:
        cluster.start_server()
        token = cluster.admin.enroll("alpha").token
        host, port = cluster.url.removeprefix("http://").split(":")
        poll = socket.create_connection((host, int(port)))
        poll.sendall(
            f"GET /v1/tasks/next?timeout=50 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {token}\r\n\r\n".encode()
        )
        deadline = time.monotonic() + 10
        while not online(cluster)["alpha"]:
            assert time.monotonic() < deadline, "the polling member never showed as online"
            time.sleep(0.05)
        time.sleep(3)
        assert online(cluster)["alpha"], "a member waiting in its poll is online"
        poll.close()  # killed: the poll's 50 s are far from over
        started = time.monotonic()
        while online(cluster)["alpha"]:
            assert time.monotonic() - started < 10, "still online after hanging up"
            time.sleep(0.1)


def test_who_is_online_can_be_read_from_a_thread_while_members_arrive() -> None:
    """The operator's view reads presence in worker threads while the event loop records new
    members: reading must never trip over the table changing size under it."""
    presence = Presence()
    arriving = threading.Event()

    def arrive() -> None:
        for member in range(200_000):
            presence.seen(member)
            with presence.waiting(member):
                pass
        arriving.set()

    thread = threading.Thread(target=arrive)
    thread.start()
    reads = 0
    while not arriving.is_set():
        presence.online()  # raised "dictionary changed size during iteration" before
        reads += 1
    thread.join()
    assert reads > 0 and len(presence.online()) == 200_000
