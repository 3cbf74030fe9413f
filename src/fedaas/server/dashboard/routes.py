"""The dashboard's pages under ``/ui``: server-rendered (Jinja2), live over server-sent events.

- ``/ui/login``: the admin token, once, for a session (:mod:`.session`);
- ``/ui/jobs``: every job with status, round, progress, start, end, failure reason;
- ``/ui/jobs/{id}``: live curves (accuracy, loss, epsilon against the budget,
  round duration, bytes up and down, every other metric), updated over SSE
  (``/ui/jobs/{id}/events``) without reloading; cancel; download the model
  and the run folder (zip); an unknown job is a 404 page with a link back;
- ``/ui/members``: online, last seen, rounds contributed, declines, revoke;
- ``/ui/submit``: paste or upload a job's TOML; each validation error is
  shown next to the line of the key it names.

Every page reads the coordinator's operator view (``JobStatus``), like the
API does; no CDN: the charting library (uPlot, MIT) is vendored in
``static/`` at a pinned version.
"""

from __future__ import annotations

import asyncio
import json
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape

from fedaas import __version__
from fedaas.protocol import TERMINAL, JobStatus
from fedaas.server.dashboard import views
from fedaas.server.dashboard.session import COOKIE, SESSION_S, Sessions
from fedaas.server.errors import CoordinatorError, InvalidSpec, NotFound
from fedaas.server.observer import Observer
from fedaas.server.preflight import preflight
from fedaas.spec import SpecError, parse_spec

STATIC = Path(__file__).parent / "static"
MAX_FORM = 1_000_000
KEEPALIVE_S = 15.0


class _SignIn(Exception):
    """Not signed in: answered with a redirect to the login page."""


def mount(app: FastAPI, observer: Observer) -> None:
    coordinator, auth = app.state.coordinator, app.state.auth
    sessions = Sessions(auth)
    app.state.ui_signed_in = sessions.signed_in  # BodyLimit: signed-in forms get the full cap
    env = Environment(
        loader=PackageLoader("fedaas.server.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
    )
    notes: dict[str, list[str]] = {}  # job id -> preflight findings shown once after submit
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.exception_handler(_SignIn)
    async def _to_login(request: Request, _: _SignIn) -> Response:
        return RedirectResponse("/ui/login", status_code=303)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = sessions.valid(request)
        html = env.get_template(name).render(
            csrf=sessions.csrf(session) if session else "", version=__version__, **context
        )
        headers = {
            "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
            "frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        return HTMLResponse(html, status_code=status, headers=headers)

    def signed_in(request: Request) -> str:
        session = sessions.valid(request)
        if session is None:
            raise _SignIn()
        return session

    async def form(request: Request, session: str | None) -> dict[str, str]:
        body = await request.body()
        if len(body) > MAX_FORM:
            raise InvalidSpec("the form is too large")
        fields = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        if session is not None and not sessions.check_csrf(session, fields.get("csrf")):
            raise _SignIn()
        return fields

    # What reads the database runs in a thread: a hung database holds up these pages,
    # never the event loop (members' tasks and uploads, the health check).
    def job_view(job_id: str, rounds_after: int = 0) -> dict[str, Any]:
        return views.job_view(coordinator.describe(job_id, rounds_after))

    def job_rows() -> list[dict[str, Any]]:
        """The jobs list (refreshed every 5 s while a job runs) shows no round: none is read."""
        return [job_view(j.id, rounds_after=j.round) for j in coordinator.jobs()[:200]]

    def member_rows() -> list[dict[str, Any]]:
        listed = coordinator.members()
        recent = [j.id for j in coordinator.jobs()[: views.MAX_JOBS_SCANNED]]
        seen = {m.id: coordinator.presence.last_seen(m.id) for m in listed}
        store = coordinator.store
        return views.members_view(listed, store.contributions(recent), store.declines(recent), seen)

    def run_zip(job_id: str) -> bytes:
        status = coordinator.describe(job_id)
        try:
            path, _ = coordinator.model_file(job_id, None)
            model: bytes | None = path.read_bytes()
        except CoordinatorError:
            model = None
        return views.run_folder_zip(status, model)

    @app.get("/ui", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/ui/jobs", status_code=303)

    @app.get("/ui/login", include_in_schema=False)
    async def login_page(request: Request) -> Response:
        return page(request, "login.html", error=None)

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        fields = await form(request, None)
        session = sessions.login(fields.get("token", ""))
        if session is None:
            return page(
                request, "login.html", 401, error="That is not this coordinator's admin token."
            )
        response = RedirectResponse("/ui/jobs", status_code=303)
        response.set_cookie(
            COOKIE,
            session,
            max_age=int(SESSION_S),
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        session = signed_in(request)
        await form(request, session)
        sessions.logout(session)
        response = RedirectResponse("/ui/login", status_code=303)
        response.delete_cookie(COOKIE, path="/ui")
        return response

    @app.get("/ui/jobs", include_in_schema=False)
    async def jobs(request: Request) -> Response:
        signed_in(request)
        rows = await asyncio.to_thread(job_rows)
        return page(
            request, "jobs.html", jobs=rows, live=any(r["status"] not in TERMINAL for r in rows)
        )

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    async def job(request: Request, job_id: str) -> Response:
        signed_in(request)
        try:
            view = await asyncio.to_thread(job_view, job_id)
        except NotFound as exc:  # a stale link or a typo: a page, not the API's JSON
            return page(request, "missing.html", status=404, message=str(exc))
        return page(
            request, "job.html", job=view, notes=notes.pop(job_id, []), data=json.dumps(view)
        )

    @app.get("/ui/jobs/{job_id}/events", include_in_schema=False)
    async def events(request: Request, job_id: str) -> Response:
        """Server-sent events: the job's view each time it changes, until it ends."""
        signed_in(request)
        await asyncio.to_thread(coordinator.describe, job_id)  # 404 now, not inside the stream

        async def stream() -> AsyncIterator[str]:
            last = ""
            quiet = 0.0
            known: JobStatus | None = None
            while not await request.is_disconnected() and not coordinator.shutting_down:
                known = await asyncio.to_thread(
                    views.refreshed, coordinator.describe, job_id, known
                )
                view = views.job_view(known)
                text = json.dumps(view)
                if text != last:
                    last, quiet = text, 0.0
                    yield f"event: job\ndata: {text}\n\n"
                    if view["status"] in TERMINAL:
                        return
                elif quiet >= KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                await observer.changed.wait(1.0)
                quiet += 1.0

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
        )

    @app.post("/ui/jobs/{job_id}/cancel", include_in_schema=False)
    async def cancel(request: Request, job_id: str) -> Response:
        await form(request, signed_in(request))
        await coordinator.cancel(job_id)
        return RedirectResponse(f"/ui/jobs/{job_id}", status_code=303)

    @app.get("/ui/jobs/{job_id}/model", include_in_schema=False)
    async def model(request: Request, job_id: str) -> Response:
        signed_in(request)
        path, number = await asyncio.to_thread(coordinator.model_file, job_id, None)
        name = f"{job_id}-round{number}.safetensors"
        return Response(
            await asyncio.to_thread(path.read_bytes),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/ui/jobs/{job_id}/run.zip", include_in_schema=False)
    async def run_folder(request: Request, job_id: str) -> Response:
        signed_in(request)
        data = await asyncio.to_thread(run_zip, job_id)
        return Response(
            data,
            media_type="application/zip",
            headers={"Content-Disposition": f'attachment; filename="{job_id}.zip"'},
        )

    @app.get("/ui/members", include_in_schema=False)
    async def members(request: Request) -> Response:
        signed_in(request)
        return page(request, "members.html", members=await asyncio.to_thread(member_rows))

    @app.post("/ui/members/{name}/revoke", include_in_schema=False)
    async def revoke(request: Request, name: str) -> Response:
        await form(request, signed_in(request))
        coordinator.member_revoked(await asyncio.to_thread(auth.revoke, name))
        return RedirectResponse("/ui/members", status_code=303)

    @app.get("/ui/submit", include_in_schema=False)
    async def submit_page(request: Request) -> Response:
        signed_in(request)
        return page(request, "submit.html", source="", rows=None, unplaced=[])

    @app.post("/ui/submit", include_in_schema=False)
    async def submit(request: Request) -> Response:
        fields = await form(request, signed_in(request))
        source = fields.get("source", "").replace("\r\n", "\n")
        try:
            try:
                data = tomllib.loads(source)
            except tomllib.TOMLDecodeError as exc:
                raise SpecError([f"line {exc.lineno}: not valid TOML: {exc.msg}"]) from None
            spec = parse_spec(data)
            status = await asyncio.to_thread(coordinator.submit, data, source)
        except SpecError as exc:
            rows, unplaced = views.annotate(source, exc.problems)
            return page(request, "submit.html", 422, source=source, rows=rows, unplaced=unplaced)
        except InvalidSpec as exc:
            rows, unplaced = views.annotate(source, exc.detail.split("; "))
            return page(request, "submit.html", 422, source=source, rows=rows, unplaced=unplaced)
        notes[status.id] = preflight(spec, coordinator.members()).all
        while len(notes) > 100:  # shown once on the job's page; never-visited ones age out
            notes.pop(next(iter(notes)))
        return RedirectResponse(f"/ui/jobs/{status.id}", status_code=303)
