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
READ_S = 2.0


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
    stop = threading.Event()
    arrived = [0]

    def arrive() -> None:
        while not stop.is_set():
            member = arrived[0]
            presence.seen(member)
            with presence.waiting(member):
                pass
            arrived[0] = member + 1

    thread = threading.Thread(target=arrive)
    thread.start()
    reads, end = 0, time.monotonic() + READ_S
    try:
        while time.monotonic() < end:
            presence.online()  # raised "dictionary changed size during iteration" before
            reads += 1
    finally:
        stop.set()
        thread.join()
    assert reads > 0 and arrived[0] > 0
    assert presence.online() == set(range(arrived[0]))
