"""How long a call waits on an object store that stopped answering: :func:`with_timeouts`.

A store that accepts connections but never answers (a frozen server, a load
balancer with nothing healthy behind it) held one small read for minutes
with the backends' own defaults, because each retries a timed-out request at
two layers with long timeouts: measured against the emulators frozen with
SIGSTOP (``bench/bench_frozen_store.py``), Azure gave up after 320 s, S3
after 407 s, GCS not within 10 minutes. A member agent waiting that long
sits out rounds without saying why, and a coordinator's abandoned calls pile
up in threads.

So every cloud filesystem gets the same two limits unless its options say
otherwise: :data:`CONNECT_TIMEOUT_S` to open a connection and
:data:`READ_TIMEOUT_S` of silence while waiting for (more of) an answer. A
transfer that keeps moving is never cut, whatever its size. The backends'
retries stay, botocore's cut to one: a frozen store then fails a call in
about two minutes (S3 104 s, GCS 94 s, Azure 121 s in the same run), as a
transient ``StorageError`` of kind ``timeout``, and the caller's outage
handling takes over (the member misses the round and stays in the job; the
coordinator's dependency waits it out).
"""

from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 10.0
S3_ATTEMPTS = 2
"""botocore's attempts per request (s3fs retries each failed one up to 5 times on top)."""


def _defaults(protocol: str) -> dict[str, Any]:
    if protocol == "s3":
        return {
            "config_kwargs": {
                "connect_timeout": CONNECT_TIMEOUT_S,
                "read_timeout": READ_TIMEOUT_S,
                "retries": {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"},
            }
        }
    if protocol == "gs":
        from aiohttp import ClientTimeout  # gcsfs's HTTP client, imported with it anyway

        # no total: a large object that keeps arriving may take as long as it needs
        timeout = ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S
        )
        return {"requests_timeout": timeout}
    if protocol == "az":
        return {"connection_timeout": int(CONNECT_TIMEOUT_S), "read_timeout": int(READ_TIMEOUT_S)}
    return {}


def _under(defaults: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in explicit.items():
        below = merged.get(key)
        merged[key] = (
            _under(below, value) if isinstance(below, dict) and isinstance(value, dict) else value
        )
    return merged


def with_timeouts(protocol: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for a ``protocol`` filesystem with the default limits below them.

    An option the caller gives wins, key by key (``config_kwargs.read_timeout=60``
    keeps the other S3 defaults). Local filesystems get nothing added.
    """
    return _under(_defaults(protocol), options)
