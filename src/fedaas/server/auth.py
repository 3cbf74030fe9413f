"""Bearer tokens and roles.

Two roles: ``admin`` (the operator; one token, from ``FEDAAS_ADMIN_TOKEN`` or
a generated 0600 file in the state folder) and ``client`` (one token per
enrolled member). Tokens carry 256 bits from :mod:`secrets`; only their
SHA-256 digests are kept (a slow hash adds nothing for tokens this long).
A member's token can be renewed (:meth:`Authenticator.renew`): the old one
stops working at once, and a revoked member is let back in with the new one.
With mutual TLS, a member's requests must also come with a certificate that
names it (:meth:`Authenticator.check_certificate`): member b's token with
member a's certificate is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from fedaas.server.db import Member, Store
from fedaas.server.errors import Conflict, Forbidden, NotFound, Unauthenticated

ADMIN_TOKEN_ENV = "FEDAAS_ADMIN_TOKEN"
ADMIN_TOKEN_FILE = "admin.token"


@dataclass(frozen=True)
class Principal:
    role: str  # "admin" or "client"
    member_id: int | None = None
    name: str = "admin"


def new_token(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def load_admin_token(state: Path) -> tuple[str, str]:
    """The admin token and where it came from (the env var, or the token file)."""
    from_env = os.environ.get(ADMIN_TOKEN_ENV)
    if from_env:
        if len(from_env) < 16:
            raise ValueError(f"{ADMIN_TOKEN_ENV} must be at least 16 characters")
        return from_env, ADMIN_TOKEN_ENV
    path = state / ADMIN_TOKEN_FILE
    if path.exists():
        return path.read_text().strip(), str(path)
    token = new_token("fda")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, str(path)


class Authenticator:
    """Maps bearer tokens to principals; member tokens are cached by digest."""

    def __init__(self, store: Store, admin_token: str) -> None:
        self._store = store
        self._admin_hash = token_hash(admin_token)
        self._members: dict[str, Principal] = {}
        self._changing = threading.Lock()  # enroll, revoke, renew: one at a time (threads)
        for member in store.members():
            if member.revoked_at is None:
                self._members[member.token_hash] = Principal("client", member.id, member.name)

    def enroll(self, name: str) -> tuple[Principal, str]:
        with self._changing:
            if self._store.member_by_name(name) is not None:
                raise Conflict(f"a member named {name!r} is already enrolled", "exists")
            token = new_token("fdm")
            member = self._store.add_member(name, token_hash(token))
            principal = Principal("client", member.id, member.name)
            self._members[member.token_hash] = principal
            return principal, token

    def revoke(self, name: str) -> int:
        """Refuse the member's token from now on (and after restarts); returns its id."""
        with self._changing:
            member = self._store.member_by_name(name)
            if member is None:
                raise NotFound(f"no member named {name!r}")
            self._members.pop(member.token_hash, None)  # first: no request gets in after this
            self._store.revoke_member(member.id)
            return member.id

    def renew(self, name: str) -> tuple[Principal, str]:
        """A new token for an enrolled member (revoked or not); the old token stops now."""
        with self._changing:
            member = self._store.member_by_name(name)
            if member is None:
                raise NotFound(f"no member named {name!r}")
            self._members.pop(member.token_hash, None)
            token = new_token("fdm")
            with self._store.session() as s:  # the new digest, and the revocation lifted
                row = s.get(Member, member.id)
                if row is not None:
                    row.token_hash, row.revoked_at = token_hash(token), None
            principal = Principal("client", member.id, member.name)
            self._members[token_hash(token)] = principal
            return principal, token

    @staticmethod
    def check_certificate(who: Principal, certificate_name: str | None) -> None:
        """Under mutual TLS: a member's certificate must name it (subject CN = member name)."""
        if who.role == "client" and certificate_name != who.name:
            raise Forbidden(
                f"this client certificate (CN={certificate_name!r}) does not belong to member "
                f"{who.name!r}: each member presents its own certificate",
                "certificate_mismatch",
            )

    def identify(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("missing bearer token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("expected 'Authorization: Bearer <token>'")
        digest = token_hash(token.strip())
        if hmac.compare_digest(digest, self._admin_hash):
            return Principal("admin")
        principal = self._members.get(digest)
        if principal is None:
            raise Unauthenticated("unknown or revoked token")
        return principal
