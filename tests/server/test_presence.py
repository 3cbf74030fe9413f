"""A member that hangs up during its long-poll is offline at once, not after the poll's timeout."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

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
