"""No NUL in a request's URL: :func:`refuse_nul`, a dependency of every route.

PostgreSQL can neither store nor compare text holding a NUL character, so a
lookup of job ``a%00b`` or member ``x%00`` was a database error there (a
500, an ERROR line per request) where SQLite answered 404. No identifier or
query value fedaas accepts holds one, so such a request is refused before
any route reads the database. JSON bodies are checked by their models.
"""

from __future__ import annotations

from fastapi import Request

from fedaas.server.errors import InvalidRequest


def refuse_nul(request: Request) -> None:
    """400 for a path or query string that holds a NUL character (percent-encoded or not)."""
    query = request.query_params.multi_items()
    if "\x00" in request.url.path or any("\x00" in k + v for k, v in query):
        raise InvalidRequest("the URL holds a NUL character, which no name or value may hold")
