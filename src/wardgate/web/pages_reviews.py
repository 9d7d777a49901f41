"""The reviews inbox and one review's page: what to decide, and the forms to decide it.

Every rule comes from the API's handlers (``api/reviews.py``): who sees a review, who
may vote (``can_vote``), what a vote does. These pages call them with the signed-in
human as the caller and only turn the answers into HTML.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from wardgate.api import reviews as api
from wardgate.api.schemas import Text
from wardgate.web.auth import SignedIn, UiPost, UiUser
from wardgate.web.render import (
    error_page,
    fragment,
    live_fragment,
    plain,
    render,
    ui_errors,
    version_of,
)

router = APIRouter()

Kind = Literal["action", "grant", "proposal", "code"]
KINDS: tuple[Kind, ...] = ("action", "grant", "proposal", "code")
PENDING_SHOWN = 200
DECIDED_SHOWN = 25
DONE = {
    "approve": "Your approval is recorded.",
    "deny": "You denied this review.",
    "cancel": "The review is cancelled.",
    "requested": "Your request is filed: a different human approves or denies it.",
}


def _kind(value: str | None) -> Kind | None:
    for kind in KINDS:
        if value == kind:
            return kind
    return None


async def _inbox(request: Request, me: SignedIn, kind: Kind | None) -> dict[str, Any]:
    """Pending reviews (oldest deadline first), then the most recently decided ones."""
    pending = plain(
        await api.list_reviews(
            request=request,
            who=me.caller,
            status="pending",
            kind=kind,
            principal=None,
            connection=None,
            limit=PENDING_SHOWN,
        )  # fmt: skip
    )["reviews"]
    recent = plain(
        await api.list_reviews(
            request=request,
            who=me.caller,
            status="all",
            kind=kind,
            principal=None,
            connection=None,
            limit=DECIDED_SHOWN + len(pending),
        )  # fmt: skip
    )["reviews"]
    pending_ids = {r["id"] for r in pending}
    decided = [r for r in recent if r["id"] not in pending_ids and r["status"] != "pending"]
    pending.sort(key=lambda r: r["expires_at"])
    mine = sum(1 for r in pending if r["can_vote"])
    return {
        "pending": pending,
        "decided": decided[:DECIDED_SHOWN],
        "votable": mine,
        "kind": kind,
    }


def _inbox_html(request: Request, me: SignedIn, data: dict[str, Any]) -> Any:
    return fragment(request, "_inbox.html", data, me)


@router.get("/reviews")
@ui_errors
async def reviews_page(request: Request, me: UiUser, kind: str | None = None) -> Response:
    data = await _inbox(request, me, _kind(kind))
    inbox = _inbox_html(request, me, data)
    context = {
        **data,
        "kinds": KINDS,
        "inbox_html": inbox,
        "inbox_version": version_of(inbox),
        "live_src": "/ui/reviews/fragment" + (f"?kind={data['kind']}" if data["kind"] else ""),
        "nav": "reviews",
    }
    return render(request, "reviews.html", context, me=me)


@router.get("/reviews/fragment")
@ui_errors
async def reviews_fragment(request: Request, me: UiUser, kind: str | None = None) -> Response:
    data = await _inbox(request, me, _kind(kind))
    return live_fragment(_inbox_html(request, me, data))


async def _review(request: Request, me: SignedIn, review_id: Text) -> dict[str, Any]:
    return plain(await api.get_review(request=request, review_id=review_id, who=me.caller))


def _state_html(request: Request, me: SignedIn, review: dict[str, Any]) -> Any:
    return fragment(request, "_review_state.html", {"review": review}, me)


async def _review_page(
    request: Request,
    me: SignedIn,
    review_id: Text,
    *,
    error: str | None = None,
    status: int = 200,
    reason: str = "",
) -> Response:
    review = await _review(request, me, review_id)
    state = _state_html(request, me, review)
    done = request.query_params.get("done")
    context = {
        "review": review,
        "state_html": state,
        "state_version": version_of(state),
        "flash": DONE.get(done or "") if error is None else None,
        "error": error,
        "reason": reason,
        "may_cancel": review["can_cancel"],
        "nav": "reviews",
    }
    return render(request, "review.html", context, me=me, status=status)


@router.get("/reviews/{review_id}")
@ui_errors
async def review_page(request: Request, review_id: Text, me: UiUser) -> Response:
    return await _review_page(request, me, review_id)


@router.get("/reviews/{review_id}/fragment")
@ui_errors
async def review_fragment(request: Request, review_id: Text, me: UiUser) -> Response:
    review = await _review(request, me, review_id)
    return live_fragment(_state_html(request, me, review))


async def _decide(
    request: Request,
    me: SignedIn,
    review_id: Text,
    decision: Literal["approve", "deny", "cancel"],
    reason: str,
) -> Response:
    """Vote (or cancel) through the API's handler; its refusal re-renders the page with
    the API's message, success redirects back to the page (post/redirect/get)."""
    try:
        if decision == "deny" and not reason.strip():
            raise HTTPException(422, "say why you deny it: the requester reads your reason")
        try:
            body = api.DecisionBody(reason=reason)
        except ValidationError as exc:
            raise HTTPException(422, f"reason: {exc.errors()[0]['msg']}") from None
        if decision == "approve":
            await api.approve(request=request, review_id=review_id, who=me.caller, body=body)
        elif decision == "deny":
            await api.deny(request=request, review_id=review_id, who=me.caller, body=body)
        else:
            await api.cancel(request=request, review_id=review_id, who=me.caller)
    except HTTPException as exc:
        if exc.status_code == 404:
            return error_page(request, 404, str(exc.detail), me=me)
        return await _review_page(
            request, me, review_id, error=str(exc.detail), status=exc.status_code, reason=reason
        )
    return RedirectResponse(f"/ui/reviews/{review_id}?done={decision}", status_code=303)


Reason = Annotated[str, Form(max_length=2000)]


@router.post("/reviews/{review_id}/approve")
@ui_errors
async def approve(request: Request, review_id: Text, me: UiPost, reason: Reason = "") -> Response:
    return await _decide(request, me, review_id, "approve", reason)


@router.post("/reviews/{review_id}/deny")
@ui_errors
async def deny(request: Request, review_id: Text, me: UiPost, reason: Reason = "") -> Response:
    return await _decide(request, me, review_id, "deny", reason)


@router.post("/reviews/{review_id}/cancel")
@ui_errors
async def cancel(request: Request, review_id: Text, me: UiPost) -> Response:
    return await _decide(request, me, review_id, "cancel", "")
