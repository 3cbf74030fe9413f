"""What can go wrong in the coordinator, in the coordinator's own terms.

The coordinator, its store and its auth raise these; they know nothing of
HTTP. The HTTP edge (:mod:`fedaas.server.http_errors`) maps each class to a
status code once, and answers ``{"error": code, "detail": text}``. ``code``
is the machine-readable reason a client can branch on (``round_closed``,
``not_sampled``, ``invalid_update``...); the message is for people.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """A request the coordinator refuses; ``code`` says why in one word."""

    default_code = "error"

    def __init__(self, detail: str, code: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.code = code or self.default_code


class InvalidRequest(CoordinatorError):
    """The request is malformed or its content is invalid (a spec, an update)."""

    default_code = "bad_request"


class InvalidSpec(InvalidRequest):
    """A job spec the coordinator cannot accept (well-formed request, unusable content)."""

    default_code = "invalid_spec"


class Unauthenticated(CoordinatorError):
    """No credentials, or credentials nobody issued (or since revoked)."""

    default_code = "unauthorized"


class Forbidden(CoordinatorError):
    """Known caller, but this is not theirs to do."""

    default_code = "forbidden"


class NotFound(CoordinatorError):
    default_code = "not_found"


class Conflict(CoordinatorError):
    """The request doesn't fit the current state (a closed round, a duplicate)."""

    default_code = "conflict"


class TooLarge(CoordinatorError):
    default_code = "too_large"


class Unavailable(CoordinatorError):
    """The coordinator can't serve this now (it is shutting down)."""

    default_code = "unavailable"


class JobFailed(Exception):
    """The running job cannot continue; the message is the reason shown to the operator."""
