"""The operator's web dashboard, served by the coordinator under ``/ui``.

Server-rendered pages (Jinja2 templates in ``templates/``), live updates
over server-sent events, and a small vendored charting library (uPlot
1.6.32, MIT, in ``static/``): every asset ships inside the package, nothing
is fetched from a CDN. Behind the admin token (a login page trades it for a
session cookie). :func:`mount` is the one call ``create_app`` makes.
"""

from __future__ import annotations

from fedaas.server.dashboard.routes import mount

__all__ = ["mount"]
