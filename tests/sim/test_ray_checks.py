"""Asking Ray for what it cannot give fails in seconds with the reason, never a hang.

Ray retries an address where nothing listens for minutes, and an actor that
reserves more GPUs or CPUs than the cluster has waits forever. The Ray
backend checks both first (:mod:`fedaas.sim.simulate.ray_pool`); the real
cluster's side is in ``test_backends.py``.
"""

from __future__ import annotations

import socket
import time

import pytest

from fedaas.sim.simulate.ray_pool import RayUnavailable, _check_resources, _probe


def test_an_address_where_nothing_listens_fails_in_seconds() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    for address in (f"127.0.0.1:{closed}", f"ray://127.0.0.1:{closed}"):
        began = time.monotonic()
        with pytest.raises(RayUnavailable, match=f"no Ray cluster answers at {address}"):
            _probe(address)
        assert time.monotonic() - began < 6


def test_a_listening_address_and_rays_own_lookup_pass() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        _probe(f"127.0.0.1:{s.getsockname()[1]}")
    _probe("auto")  # left to Ray


@pytest.mark.parametrize("address", ["nonsense", "127.0.0.1", "http://127.0.0.1:6379", ":6379"])
def test_an_address_that_is_not_host_port_is_refused_by_name(address: str) -> None:
    with pytest.raises(RayUnavailable, match="is not HOST:PORT"):
        _probe(address)


def test_a_member_reserving_more_than_the_cluster_has_is_refused() -> None:
    cluster = {"CPU": 2.0, "memory": 1e9}
    _check_resources(cluster, 2.0, 0.0)
    _check_resources({**cluster, "GPU": 1.0}, 0.5, 0.25)
    with pytest.raises(RayUnavailable, match=r"reserves 1 GPU\(s\) but the Ray cluster has 0"):
        _check_resources(cluster, 1.0, 1.0)
    with pytest.raises(RayUnavailable, match=r"reserves 4 CPU\(s\) but the Ray cluster has 2"):
        _check_resources(cluster, 4.0, 0.0)
