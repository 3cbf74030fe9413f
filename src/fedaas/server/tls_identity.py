"""Who a mutual-TLS client's certificate says it is, handed to the request handlers.

Uvicorn checks that a client certificate was signed by the ``--tls-client-ca``
but passes nothing about it to the application, so a member's token could be
used with any other member's certificate. :class:`CertificateProtocol` (the
httptools protocol, one line more) reads the verified peer certificate of
each connection and puts its subject common name into every request's scope
(the ASGI TLS extension, ``scope["extensions"]["tls"]``);
:func:`certificate_name` reads it back, and the authenticator binds it to the
member's enrolled name (:meth:`fedaas.server.auth.Authenticator.check_certificate`).
"""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_KEY = "client_cert_common_name"


def _common_name(peercert: dict[str, Any] | None) -> str | None:
    """The subject CN of a certificate as :meth:`ssl.SSLSocket.getpeercert` returns it."""
    for rdn in (peercert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


class CertificateProtocol(HttpToolsProtocol):
    """Uvicorn's httptools protocol, plus the client certificate's CN in each request scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._client_cn = _common_name(transport.get_extra_info("peercert"))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        tls = {"client_cert_name": None, _KEY: self._client_cn}
        self.scope.setdefault("extensions", {})["tls"] = tls  # type: ignore[typeddict-item]


def certificate_name(scope: MutableMapping[str, Any]) -> str | None:
    """The CN of the request's verified client certificate (``None``: none or no mutual TLS)."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    name = tls.get(_KEY)
    return name if isinstance(name, str) else None
