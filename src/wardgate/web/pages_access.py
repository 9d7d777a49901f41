"""Connections with their effective policy (read-only), time-boxed grants (request,
list, revoke) and the audit chain's status. Every answer comes from the API's
handlers, called with the signed-in human; no page reads a credential."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from wardgate.api import resources
from wardgate.api import reviews as review_api
from wardgate.api.schemas import Text
from wardgate.web.auth import SignedIn, UiPost, UiUser
from wardgate.web.render import plain, render, ui_errors

router = APIRouter()

PAST_SHOWN = 50
DONE = {"revoked": "The grant is revoked: it no longer applies from the next statement on."}


# -- connections ----------------------------------------------------------------------


@router.get("/connections")
@ui_errors
async def connections_page(request: Request, me: UiUser) -> Response:
    found = plain(await resources.list_connections(request=request, who=me.caller))
    context = {"connections": found["connections"], "nav": "connections"}
    return render(request, "connections.html", context, me=me)


@router.get("/connections/{name}")
@ui_errors
async def connection_page(request: Request, name: Text, me: UiUser) -> Response:
    found = plain(await resources.get_connection(request=request, name=name, who=me.caller))
    return render(request, "connection.html", {"c": found, "nav": "connections"}, me=me)


# -- grants ---------------------------------------------------------------------------


async def _grants_page(
    request: Request,
    me: SignedIn,
    *,
    error: str | None = None,
    status: int = 200,
    form: dict[str, str] | None = None,
) -> Response:
    active = plain(await review_api.list_grants(request=request, who=me.caller, active=True))
    every = plain(await review_api.list_grants(request=request, who=me.caller, active=False))
    active_ids = {g["id"] for g in active["grants"]}
    past = [g for g in every["grants"] if g["id"] not in active_ids][:PAST_SHOWN]
    conns = plain(await resources.list_connections(request=request, who=me.caller))
    grantable = [
        {"name": c["name"], "roles": c["grantable_roles"]}
        for c in conns["connections"]
        if c["grantable_roles"]
    ]
    done = request.query_params.get("done")
    context = {
        "active": sorted(active["grants"], key=lambda g: g["approved_until"] or 0),
        "past": past,
        "revocable": {g["id"] for g in active["grants"] if g["can_revoke"]},
        "grantable": grantable,
        "roles": sorted({r for c in grantable for r in c["roles"]}),
        "form": form or {"connection": "", "role": "", "duration": "1h", "reason": ""},
        "error": error,
        "flash": DONE.get(done or "") if error is None else None,
        "nav": "grants",
    }
    return render(request, "grants.html", context, me=me, status=status)


@router.get("/grants")
@ui_errors
async def grants_page(request: Request, me: UiUser) -> Response:
    return await _grants_page(request, me)


Field = Annotated[str, Form(max_length=2000)]


@router.post("/grants/request")
@ui_errors
async def request_grant(
    request: Request,
    me: UiPost,
    connection: Field = "",
    role: Field = "",
    duration: Field = "",
    reason: Field = "",
) -> Response:
    form = {"connection": connection, "role": role, "duration": duration, "reason": reason}
    try:
        body = review_api.GrantBody.model_validate(form)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()
        )
        return await _grants_page(request, me, error=problems, status=422, form=form)
    try:
        review = plain(await review_api.request_grant(request=request, body=body, who=me.caller))
    except HTTPException as exc:
        return await _grants_page(
            request, me, error=str(exc.detail), status=exc.status_code, form=form
        )
    return RedirectResponse(f"/ui/reviews/{review['id']}?done=requested", status_code=303)


@router.post("/grants/{review_id}/revoke")
@ui_errors
async def revoke_grant(
    request: Request, review_id: Text, me: UiPost, reason: Field = ""
) -> Response:
    try:
        body = review_api.DecisionBody(reason=reason)
        await review_api.revoke_grant(
            request=request, review_id=review_id, who=me.caller, body=body
        )
    except ValidationError as exc:
        error = f"reason: {exc.errors()[0]['msg']}"
        return await _grants_page(request, me, error=error, status=422)
    except HTTPException as exc:
        return await _grants_page(request, me, error=str(exc.detail), status=exc.status_code)
    return RedirectResponse("/ui/grants?done=revoked", status_code=303)


# -- audit ----------------------------------------------------------------------------


@router.get("/audit")
@ui_errors
async def audit_page(request: Request, me: UiUser) -> Response:
    result = plain(await resources.audit_verify(request=request, who=me.caller))
    return render(request, "audit.html", {"result": result, "nav": "audit"}, me=me)
