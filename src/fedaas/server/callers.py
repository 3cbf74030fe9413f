"""Who is calling: FastAPI dependencies that authenticate a request and check its role.

``Admin`` (the coordinator's operator), ``Member`` (an enrolled member) and
``Anyone`` (either) resolve the bearer token through the app's
:class:`~fedaas.server.auth.Authenticator`; under mutual TLS a member's
certificate must name that member. A wrong role is :class:`Forbidden`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from fedaas.server.auth import Authenticator, Principal
from fedaas.server.errors import Forbidden
from fedaas.server.tls_identity import certificate_name


def _identify(request: Request, authorization: str | None) -> Principal:
    """The caller; under mutual TLS a member's certificate must name that member."""
    who: Principal = request.app.state.auth.identify(authorization)
    if request.app.state.bind_certificates:
        Authenticator.check_certificate(who, certificate_name(request.scope))
    return who


async def _principal(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return _identify(request, authorization)


async def _admin(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if who.role != "admin":
        raise Forbidden("this endpoint is for the coordinator's operator")
    return who


async def _member(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    # one flat dependency: members hit this on every poll, download and upload
    who = _identify(request, authorization)
    if who.role != "client" or who.member_id is None:
        raise Forbidden("this endpoint is for enrolled members")
    return who


Admin = Annotated[Principal, Depends(_admin)]
Member = Annotated[Principal, Depends(_member)]
Anyone = Annotated[Principal, Depends(_principal)]
