"""REST endpoints of the review service: reviews, access grants and proposals.

Every decision goes through ``ReviewService`` (one place for the segregation-of-duties
rules); these handlers only authenticate, translate and shape responses.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, BeforeValidator, Field

from wardgate.api.auth import Caller, caller, services_of
from wardgate.api.schemas import _problems as problems
from wardgate.config import parse_duration
from wardgate.proxy.services import Services
from wardgate.reviews.messages import review_url
from wardgate.reviews.model import ReviewError, ReviewInfo
from wardgate.reviews.proposals import judge_proposal
from wardgate.reviews.rules import missing, refusal
from wardgate.reviews.service import ReviewService
from wardgate.reviews.waiting import ReviewRuntime

# Every error is a problem-details document (see api/app.py).
router = APIRouter(prefix="/api/v1", responses=problems(400, 401, 403, 404, 409, 413, 422, 503))
Authenticated = Annotated[Caller, Depends(caller)]
MAX_STATEMENTS = 100


class DecisionBody(BaseModel):
    reason: str = Field(default="", max_length=2000)


class GrantBody(BaseModel):
    connection: str = Field(min_length=1)
    role: str = Field(min_length=1)
    duration: Annotated[float, BeforeValidator(parse_duration)] = Field(
        description="How long the grant lasts: 30m, 2h, or seconds"
    )
    reason: str = Field(min_length=1, max_length=2000)


class CodeBody(BaseModel):
    code: str = Field(min_length=1)
    justification: str = Field(default="", max_length=2000)
    context: str = Field(default="", max_length=200, description="e.g. the agent's name")


class ProposalBody(BaseModel):
    connection: str = Field(min_length=1)
    statements: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, max_length=MAX_STATEMENTS
    )
    justification: str = Field(min_length=1, max_length=2000)


def _runtime(request: Request) -> tuple[Services, ReviewRuntime, ReviewService]:
    services = services_of(request)
    if services.reviews is None:
        raise HTTPException(503, "reviews are not running on this gateway process")
    return services, services.reviews, services.reviews.service


def _shape(services: Services, review: ReviewInfo, who: Caller) -> dict[str, Any]:
    """A review as the API shows it: what the caller may do with it included."""
    config = services.config
    body = review.to_dict()
    approvers = [
        p
        for v in review.votes
        if v.decision == "approve" and (p := config.principal(v.voter)) is not None
    ]
    body["url"] = review_url(config.review_url, review.id)
    body["can_vote"] = (
        review.status == "pending"
        and refusal(review.parties, who.principal, "approve") is None
        and all(v.voter != who.principal.name for v in review.votes)
    )
    body["still_needed"] = missing(review.parties, approvers) if review.status == "pending" else []
    return body


async def _call(fn: Any, *args: Any) -> Any:
    try:
        return await asyncio.to_thread(fn, *args)
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _visible(review: ReviewInfo | None, who: Caller) -> ReviewInfo:
    # Agents see their own reviews only; humans see all (they are the reviewers).
    if review is None or (who.principal.is_agent and review.principal != who.principal.name):
        raise HTTPException(404, "no such review")
    return review


@router.get("/whoami")
async def whoami(who: Authenticated) -> dict[str, Any]:
    p = who.principal
    return {
        "principal": p.name,
        "kind": p.kind.value,
        "groups": sorted(p.groups),
        "sponsor": p.sponsor,
        "token_id": who.token_id,
    }


@router.get("/reviews")
async def list_reviews(
    request: Request,
    who: Authenticated,
    status: str | None = None,
    kind: Literal["action", "grant", "proposal", "code"] | None = None,
    principal: str | None = None,
    connection: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    services, _, service = _runtime(request)
    if who.principal.is_agent:
        principal = who.principal.name
    found = await asyncio.to_thread(
        lambda: service.search(
            status=None if status in (None, "all") else status,
            kind=kind,
            principal=principal,
            connection=connection,
            limit=limit,
        )
    )
    return {"reviews": [_shape(services, r, who) for r in found]}


@router.get("/reviews/{review_id}")
async def get_review(request: Request, review_id: str, who: Authenticated) -> dict[str, Any]:
    services, _, service = _runtime(request)
    review = _visible(await asyncio.to_thread(service.get, review_id), who)
    return _shape(services, review, who)


@router.post("/reviews/{review_id}/approve")
async def approve(
    request: Request, review_id: str, who: Authenticated, body: DecisionBody | None = None
) -> dict[str, Any]:
    return await _vote(request, review_id, who, "approve", body)


@router.post("/reviews/{review_id}/deny")
async def deny(
    request: Request, review_id: str, who: Authenticated, body: DecisionBody | None = None
) -> dict[str, Any]:
    return await _vote(request, review_id, who, "deny", body)


async def _vote(
    request: Request,
    review_id: str,
    who: Authenticated,
    decision: Literal["approve", "deny"],
    body: DecisionBody | None,
) -> dict[str, Any]:
    services, _, service = _runtime(request)
    _visible(await asyncio.to_thread(service.get, review_id), who)
    from wardgate.reviews.rules import VoteRefused

    try:
        review = await asyncio.to_thread(
            service.vote, review_id, who.principal, decision, body.reason if body else ""
        )
    except VoteRefused as exc:
        raise HTTPException(403, str(exc)) from None
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return _shape(services, review, who)


@router.post("/reviews", status_code=201)
async def request_code_review(
    request: Request, body: CodeBody, who: Authenticated
) -> dict[str, Any]:
    """File code the caller wants to run on its own side (an AutoGen code executor) for
    a human's approval; use it once with POST /reviews/{id}/use."""
    services, _, service = _runtime(request)
    review = await _call(
        service.request_code, who.principal, body.code, body.justification, body.context
    )
    return _shape(services, review, who)


@router.post("/reviews/{review_id}/use")
async def use_approval(request: Request, review_id: str, who: Authenticated) -> dict[str, Any]:
    """Use an approved code review, once, as its requester: 409 when it is not approved,
    already used or expired."""
    services, _, service = _runtime(request)
    review = _visible(await asyncio.to_thread(service.get, review_id), who)
    if review.kind != "code":
        raise HTTPException(
            409, "only code reviews are used through the API; statements run through their protocol"
        )
    used = await asyncio.to_thread(lambda: service.consume(review_id, principal=who.principal.name))
    if not used:
        raise HTTPException(
            409, f"review {review_id} is {review.status}, not an approval you can use"
        )
    return _shape(services, _visible(await asyncio.to_thread(service.get, review_id), who), who)


@router.post("/reviews/{review_id}/cancel")
async def cancel(request: Request, review_id: str, who: Authenticated) -> dict[str, Any]:
    services, _, service = _runtime(request)
    _visible(await asyncio.to_thread(service.get, review_id), who)
    review = await _call(service.cancel, review_id, who.principal)
    return _shape(services, review, who)


# -- grants -----------------------------------------------------------------------------


@router.post("/grants", status_code=201)
async def request_grant(request: Request, body: GrantBody, who: Authenticated) -> dict[str, Any]:
    services, _, service = _runtime(request)
    review = await _call(
        service.request_grant, who.principal, body.connection, body.role, body.duration, body.reason
    )
    return _shape(services, review, who)


@router.get("/grants")
async def list_grants(request: Request, who: Authenticated, active: bool = True) -> dict[str, Any]:
    services, _, service = _runtime(request)
    if active:
        found = await asyncio.to_thread(service.active_grants)
    else:
        found = await asyncio.to_thread(lambda: service.search(kind="grant", limit=1000))
    if who.principal.is_agent:
        found = [g for g in found if g.principal == who.principal.name]
    return {"grants": [_shape(services, g, who) for g in found]}


@router.post("/grants/{review_id}/revoke")
async def revoke_grant(
    request: Request, review_id: str, who: Authenticated, body: DecisionBody | None = None
) -> dict[str, Any]:
    services, _, service = _runtime(request)
    _visible(await asyncio.to_thread(service.get, review_id), who)
    review = await _call(
        service.revoke_grant, review_id, who.principal, body.reason if body else ""
    )
    return _shape(services, review, who)


# -- proposals --------------------------------------------------------------------------


@router.post("/proposals", status_code=201)
async def submit_proposal(
    request: Request, body: ProposalBody, who: Authenticated
) -> dict[str, Any]:
    services, runtime, service = _runtime(request)
    try:
        verdict = judge_proposal(services, who.principal, body.connection, body.statements)
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    review = await _call(
        lambda: service.request_proposal(
            who.principal,
            body.connection,
            body.statements,
            body.justification,
            verdict,
            client_addr=request.client.host if request.client else "",
        )
    )
    return _shape(services, review, who)


@router.get("/proposals/{review_id}")
async def get_proposal(request: Request, review_id: str, who: Authenticated) -> dict[str, Any]:
    services, _, service = _runtime(request)
    review = _visible(await asyncio.to_thread(service.get, review_id), who)
    if review.kind != "proposal":
        raise HTTPException(404, f"{review_id} is a review of kind {review.kind}, not a proposal")
    return _shape(services, review, who)
