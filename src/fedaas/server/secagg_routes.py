"""The HTTP routes of secure aggregation (mounted by :func:`fedaas.server.app.create_app`).

Thin like the rest of the API: authenticate, let FastAPI validate the body
against :mod:`fedaas.protocol_secagg`, hand over to the round's
:class:`~fedaas.server.secagg.SecureRound`. A stage's answer is held up to
``wait`` seconds (at most :data:`MAX_WAIT_S`) until the stage closes; 204
means "not yet, ask again with the same body" (it is accepted once).
The masked vector itself goes up on the ordinary update route
(``PUT /v1/jobs/{job}/rounds/{n}/update``; :meth:`Inbox.accept_update`); with
``next_timeout`` its answer is held for stage 4's question (:func:`unmask_after`).

The unmask answer, with ``next_timeout``, is held for the member's next
task like an upload's (a task bundle, the acceptance in a header).

``PUT /v1/members/me/identity`` registers the member's long-term Ed25519
key once (the agent does when it starts); a different key later is refused
(409): only the operator can clear it (``DELETE /v1/members/{name}/identity``),
e.g. for a member that lost its state folder.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response

from fedaas.protocol import RECEIPT_HEADER, Receipt
from fedaas.protocol_secagg import (
    IdentityCleared,
    IdentityRegistered,
    IdentityRegistration,
    InboundShares,
    SecureKeys,
    SecureRoster,
    SecureUnmaskRequest,
    ShareKeys,
    UnmaskAccepted,
    UnmaskShares,
)
from fedaas.server.auth import Principal
from fedaas.server.callers import Admin, Member
from fedaas.server.coordinator import Coordinator
from fedaas.server.errors import Conflict, CoordinatorError, NotFound
from fedaas.server.inbox import Inbox
from fedaas.server.secagg import SecureRound
from fedaas.server.secagg_setup import register_identity

MAX_WAIT_S = 60.0
Wait = Annotated[float, Query(ge=0, le=MAX_WAIT_S)]
NextBundle = Callable[[int, str, float, Request, dict[str, str]], Awaitable[Response | None]]
_HELD = {204: {"description": "the stage has not closed yet: ask again (same body)"}}


async def unmask_after(
    inbox: Inbox,
    job_id: str,
    number: int,
    member_id: int,
    wait: float | None,
    receipt: Receipt,
) -> Response | None:
    """A masked upload's answer held for stage 4's question (saves the member a request).

    ``None`` unless the round is secure; the question once the masked inputs
    are in, or the ``receipt`` after ``wait`` (the member then asks itself).
    """
    job = inbox.job
    state = None if job is None or job.id != job_id or not wait else job.round
    if state is None or state.number != number or state.secure is None:
        return None
    try:
        asked = await state.secure.unmask_request(member_id, wait)
    except CoordinatorError:
        asked = None
    if asked is None:
        return Response(receipt.model_dump_json(), media_type="application/json")
    return _held(asked, state.secure)


def _held(answer: Any, secure: SecureRound) -> Response:
    """A held stage's answer (counted as bytes down), or 204 when the stage is still open."""
    if answer is None:
        return Response(status_code=204)
    text = answer.model_dump_json()
    secure.bytes_down += len(text)
    return Response(text, media_type="application/json")


def mount(app: FastAPI, coordinator: Coordinator, next_bundle: NextBundle) -> None:
    """Add the secure aggregation routes to the coordinator's API (``next_bundle``: the
    app's hold for a member's next task bundle)."""
    store, inbox = coordinator.store, coordinator.inbox
    registering = threading.Lock()  # identity keys: registered and cleared in threads

    def secure_round(job_id: str, number: int) -> SecureRound:
        state = inbox.running(job_id).round
        if state is None or state.number != number or state.secure is None:
            raise Conflict(f"no secure round {number} of job {job_id} is open", "round_closed")
        return state.secure

    def registered(who: Principal, key: bytes) -> None:
        assert who.member_id is not None
        with registering:
            member = store.member_by_name(who.name)
            assert member is not None
            if member.signing_key and bytes.fromhex(member.signing_key) != key:
                raise Conflict(
                    "this member already registered another signing key; the operator can "
                    f"clear it with DELETE /v1/members/{who.name}/identity",
                    "identity_registered",
                )
            if not member.signing_key:
                register_identity(store, who.member_id, key)

    def cleared(name: str) -> IdentityCleared:
        with registering:
            member = store.member_by_name(name)
            if member is None:
                raise NotFound(f"no member named {name!r}")
            register_identity(store, member.id, None)
            return IdentityCleared(name=member.name)

    @app.put("/v1/members/me/identity", response_model=IdentityRegistered)
    async def register(body: IdentityRegistration, who: Member) -> IdentityRegistered:
        """Register this member's long-term signing key (once; the same key again is fine)."""
        await asyncio.to_thread(registered, who, body.signing_key)  # the database: in a thread
        return IdentityRegistered(name=who.name, signing_key=body.signing_key)

    @app.delete("/v1/members/{name}/identity", response_model=IdentityCleared)
    async def clear_identity(name: str, _: Admin) -> IdentityCleared:
        """Forget a member's signing key (e.g. it lost its state folder)."""
        return await asyncio.to_thread(cleared, name)

    @app.post(
        "/v1/jobs/{job_id}/rounds/{number}/secagg/keys",
        response_model=SecureRoster,
        responses=_HELD,
    )
    async def advertise(
        job_id: str, number: int, body: SecureKeys, who: Member, wait: Wait = 20.0
    ) -> Any:
        """Stage 1: this member's signed round keys; answered with the roster."""
        assert who.member_id is not None
        secure = secure_round(job_id, number)
        return _held(await secure.advertise(who.member_id, body, wait), secure)

    @app.post(
        "/v1/jobs/{job_id}/rounds/{number}/secagg/shares",
        response_model=InboundShares,
        responses=_HELD,
    )
    async def share(
        job_id: str, number: int, body: ShareKeys, who: Member, wait: Wait = 20.0
    ) -> Any:
        """Stage 2: encrypted shares for the neighbours; answered with those for this member."""
        assert who.member_id is not None
        secure = secure_round(job_id, number)
        return _held(await secure.share(who.member_id, body, wait), secure)

    @app.get(
        "/v1/jobs/{job_id}/rounds/{number}/secagg/unmask",
        response_model=SecureUnmaskRequest,
        responses=_HELD,
    )
    async def unmask_request(job_id: str, number: int, who: Member, wait: Wait = 20.0) -> Any:
        """Stage 4's question (who survived, who dropped), once the masked inputs are in."""
        assert who.member_id is not None
        secure = secure_round(job_id, number)
        return _held(await secure.unmask_request(who.member_id, wait), secure)

    @app.post("/v1/jobs/{job_id}/rounds/{number}/secagg/unmask", response_model=UnmaskAccepted)
    async def unmask(
        job_id: str,
        number: int,
        body: UnmaskShares,
        who: Member,
        request: Request,
        next_timeout: Annotated[float | None, Query(ge=0, le=MAX_WAIT_S)] = None,
    ) -> Any:
        """Stage 4's answer: seed shares of survivors, key shares of dropped members (and keys
        for the next round); with ``next_timeout``, answered with the next task bundle."""
        assert who.member_id is not None
        accepted = secure_round(job_id, number).unmask(who.member_id, body)
        if next_timeout:
            headers = {RECEIPT_HEADER: accepted.model_dump_json()}
            if answer := await next_bundle(who.member_id, who.name, next_timeout, request, headers):
                return answer
        return accepted
