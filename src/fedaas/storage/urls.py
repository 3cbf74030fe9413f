"""Storage URLs as strings: their protocol, their bucket, joining path segments.

Pure string work (fsspec's protocol parser aside): nothing here touches a
filesystem or imports a cloud backend.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fsspec.utils import get_protocol

LOCAL = frozenset({"file", "local"})
"""Protocols of the local filesystem."""
CLOUD_PROTOCOLS = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs", "az": "az", "abfs": "az"}
"""Every object-store protocol spelling, mapped to its canonical name."""


def protocol_of(url: str) -> str:
    """The fsspec protocol of ``url`` (``file`` for plain paths), canonical for clouds."""
    proto = get_protocol(str(url))
    return CLOUD_PROTOCOLS.get(proto, proto)


def is_local(url: str) -> bool:
    """Whether ``url`` is a plain path or a ``file://`` URL."""
    return protocol_of(url) in LOCAL


def join(base: str, *parts: str) -> str:
    """``base`` with ``parts`` appended as path segments (works for URLs and paths)."""
    out = str(base).rstrip("/")
    for part in parts:
        out += "/" + str(part).strip("/")
    return out


def bucket_of(path: str) -> str:
    """The bucket (container) of an in-filesystem object-store path: its first segment."""
    return path.strip("/").split("/", 1)[0]


def is_loopback(endpoint: str) -> bool:
    """Whether an endpoint (URL or ``host:port``) is on this machine (an emulator)."""
    host = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}").hostname or ""
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")
