"""Dashboard sign-in: the admin token, once, for a session cookie.

The operator pastes the coordinator's admin token on the login page; the
dashboard checks it like the API does (:class:`~fedaas.server.auth.Authenticator`)
and answers a random session id in an ``HttpOnly``, ``SameSite=Strict``
cookie scoped to ``/ui`` (``Secure`` over HTTPS). The token itself is never
stored in the browser. Sessions live in the coordinator's memory and end
after :data:`SESSION_S`, at logout, or when the coordinator restarts.

Every form that changes something carries a CSRF token derived from the
session (HMAC-SHA256), checked on POST, on top of ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from fastapi import Request

from fedaas.server.auth import Authenticator
from fedaas.server.errors import Unauthenticated

COOKIE = "fedaas_session"
SESSION_S = 12 * 3600.0
MAX_SESSIONS = 1000


class Sessions:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, float] = {}  # session id -> expiry (time.time())

    def login(self, token: str) -> str | None:
        """A new session id for the admin token, or ``None`` if it is not the admin token."""
        try:
            who = self.auth.identify(f"Bearer {token.strip()}")
        except Unauthenticated:
            return None
        if who.role != "admin":
            return None
        now = time.time()
        self._sessions = {s: t for s, t in self._sessions.items() if t > now}
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session = secrets.token_urlsafe(32)
        self._sessions[session] = now + SESSION_S
        return session

    def logout(self, session: str | None) -> None:
        if session:
            self._sessions.pop(session, None)

    def valid(self, request: Request) -> str | None:
        """The request's session id if it is signed in, else ``None``."""
        session = request.cookies.get(COOKIE)
        if not session:
            return None
        expiry = self._sessions.get(session)
        if expiry is None or expiry < time.time():
            self._sessions.pop(session, None)
            return None
        return session

    def signed_in(self, cookie_header: bytes | None) -> bool:
        """Whether a raw ``Cookie`` header carries a live session (for the body-size cap)."""
        for part in (cookie_header or b"").decode("latin-1").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and self._sessions.get(value, 0.0) > time.time():
                return True
        return False

    def csrf(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: str, value: str | None) -> bool:
        return value is not None and hmac.compare_digest(self.csrf(session), value)
