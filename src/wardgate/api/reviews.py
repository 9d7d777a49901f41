"""REST endpoints of the review service: reviews, access grants and proposals.

Every decision goes through ``ReviewService`` (one place for the segregation-of-duties
rules); these handlers only authenticate, translate and shape responses. Every response
is a declared model (api/schemas.py) and every error status an operation can answer is
declared with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, BeforeValidator, Field, WithJsonSchema

from wardgate.api.auth import Caller, caller, services_of
from wardgate.api.schemas import (
    GrantList,
    ReviewKind,
    ReviewList,
    ReviewOut,
    ReviewStatus,
    Text,
    WhoAmI,
)
from wardgate.api.schemas import _problems as problems
from wardgate.config import _DURATION, parse_duration
from wardgate.core.proposals import judge_proposal
from wardgate.core.services import Services
from wardgate.reviews.messages import review_url
from wardgate.reviews.model import ReviewError, ReviewInfo
from wardgate.reviews.rules import (
    VoteRefused,
    cancel_refusal,
    missing,
    refusal,
    revoke_refusal,
)
from wardgate.reviews.service import MAX_TEXT, ReviewService
from wardgate.reviews.waiting import ReviewRuntime

# Every error is a problem-details document (see api/app.py). Every operation may
# answer 401 and 429 (authentication, see api/auth.py) and 503 (a process without the
# review service); 422 wherever there is a parameter or a body to validate, and 400 for
# a body that is not even JSON.
router = APIRouter(prefix="/api/v1")
Authenticated = Annotated[Caller, Depends(caller)]
MAX_STATEMENTS = 100
T = TypeVar("T")


def _answers(*codes: int) -> dict[int | str, dict[str, Any]]:
    return problems(401, 429, 503, *codes)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0},
                {"type": "string", "pattern": _DURATION.pattern},
            ]
        }
    ),
]


class DecisionBody(BaseModel):
    reason: Text = Field(default="", max_length=2000)


class GrantBody(BaseModel):
    connection: Text = Field(min_length=1)
    role: Text = Field(min_length=1)
    duration: Duration = Field(
        description="How long the grant lasts: 30m, 2h, 250ms, 1d, or seconds; at most the "
        "connection's grants.max_duration"
    )
    reason: Text = Field(min_length=1, max_length=2000)


class CodeBody(BaseModel):
    code: Text = Field(min_length=1)
    justification: Text = Field(default="", max_length=2000)
    context: Text = Field(default="", max_length=200, description="e.g. the agent's name")


class ProposalBody(BaseModel):
    connection: Text = Field(min_length=1)
    # No statement longer than the review service keeps (MAX_TEXT): it could never be
    # filed, and it is not parsed first to find that out.
    statements: list[Annotated[Text, Field(min_length=1, max_length=MAX_TEXT)]] = Field(
        min_length=1, max_length=MAX_STATEMENTS
    )
    justification: Text = Field(min_length=1, max_length=2000)


def _runtime(request: Request) -> tuple[Services, ReviewRuntime, ReviewService]:
    services = services_of(request)
    if services.reviews is None:
        raise HTTPException(503, "reviews are not running on this gateway process")
    return services, services.reviews, services.reviews.service


def _shape(services: Services, review: ReviewInfo, who: Caller) -> ReviewOut:
    """A review as the API shows it: what the caller may do with it included."""
    config = services.config
    approvers = [
        p
        for v in review.votes
        if v.decision == "approve" and (p := config.principal(v.voter)) is not None
    ]
    pending = review.status == "pending"
    return ReviewOut.model_validate(
        {
            **review.to_dict(),
            "url": review_url(config.review_url, review.id),
            "can_vote": pending
            and refusal(review.parties, who.principal, "approve") is None
            and all(v.voter != who.principal.name for v in review.votes),
            "still_needed": missing(review.parties, approvers) if pending else [],
            "can_cancel": cancel_refusal(review.parties, review.kind, review.status, who.principal)
            is None,
            "can_revoke": revoke_refusal(review.parties, review.kind, review.status, who.principal)
            is None,
        }
    )


async def _call(fn: Callable[..., T], *args: Any) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None


def _visible(review: ReviewInfo | None, who: Caller) -> ReviewInfo:
    # Agents see their own reviews only; humans see all (they are the reviewers).
    if review is None or (who.principal.is_agent and review.principal != who.principal.name):
        raise HTTPException(404, "no such review")
    return review


@router.get("/whoami", response_model=WhoAmI, responses=problems(401, 429))
async def whoami(who: Authenticated) -> WhoAmI:
    p = who.principal
    return WhoAmI(
        principal=p.name,
        kind=p.kind.value,
        groups=sorted(p.groups),
        sponsor=p.sponsor,
        token_id=who.token_id,
    )


@router.get("/reviews", response_model=ReviewList, responses=_answers(422))
async def list_reviews(
    request: Request,
    who: Authenticated,
    status: Annotated[
        ReviewStatus | Literal["all"] | None, Query(description="Default: every status")
    ] = None,
    kind: ReviewKind | None = None,
    principal: Text | None = None,
    connection: Text | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ReviewList:
    """Newest first. Agents see only their own reviews."""
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
    return ReviewList(reviews=[_shape(services, r, who) for r in found])


@router.get("/reviews/{review_id}", response_model=ReviewOut, responses=_answers(404, 422))
async def get_review(request: Request, review_id: Text, who: Authenticated) -> ReviewOut:
    services, _, service = _runtime(request)
    review = _visible(await asyncio.to_thread(service.get, review_id), who)
    return _shape(services, review, who)


# 403: segregation of duties refuses this voter; 409: not pending, or already voted.
_VOTE_ANSWERS = _answers(400, 403, 404, 409, 422)


@router.post("/reviews/{review_id}/approve", response_model=ReviewOut, responses=_VOTE_ANSWERS)
async def approve(
    request: Request, review_id: Text, who: Authenticated, body: DecisionBody | None = None
) -> ReviewOut:
    return await _vote(request, review_id, who, "approve", body)


@router.post("/reviews/{review_id}/deny", response_model=ReviewOut, responses=_VOTE_ANSWERS)
async def deny(
    request: Request, review_id: Text, who: Authenticated, body: DecisionBody | None = None
) -> ReviewOut:
    return await _vote(request, review_id, who, "deny", body)


async def _vote(
    request: Request,
    review_id: str,
    who: Authenticated,
    decision: Literal["approve", "deny"],
    body: DecisionBody | None,
) -> ReviewOut:
    services, _, service = _runtime(request)
    _visible(await asyncio.to_thread(service.get, review_id), who)
    try:
        review = await asyncio.to_thread(
            service.vote, review_id, who.principal, decision, body.reason if body else ""
        )
    except VoteRefused as exc:
        raise HTTPException(403, str(exc)) from None
    except ReviewError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return _shape(services, review, who)


@router.post(
    "/reviews", status_code=201, response_model=ReviewOut, responses=_answers(400, 413, 422)
)
async def request_code_review(request: Request, body: CodeBody, who: Authenticated) -> ReviewOut:
    """File code the caller wants to run on its own side (an AutoGen code executor) for
    a human's approval; use it once with POST /reviews/{id}/use."""
    services, _, service = _runtime(request)
    review = await _call(
        service.request_code, who.principal, body.code, body.justification, body.context
    )
    return _shape(services, review, who)


@router.post(
    "/reviews/{review_id}/use", response_model=ReviewOut, responses=_answers(404, 409, 422)
)
async def use_approval(request: Request, review_id: Text, who: Authenticated) -> ReviewOut:
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


@router.post(
    "/reviews/{review_id}/cancel", response_model=ReviewOut, responses=_answers(403, 404, 409, 422)
)
async def cancel(request: Request, review_id: Text, who: Authenticated) -> ReviewOut:
    """As the requester (or an agent's sponsor): a pending review, or an approval not
    yet used; 409 once it is decided otherwise."""
    services, _, service = _runtime(request)
    _visible(await asyncio.to_thread(service.get, review_id), who)
    review = await _call(service.cancel, review_id, who.principal)
    return _shape(services, review, who)


# -- grants -----------------------------------------------------------------------------


@router.post(
    "/grants", status_code=201, response_model=ReviewOut, responses=_answers(400, 404, 422)
)
async def request_grant(request: Request, body: GrantBody, who: Authenticated) -> ReviewOut:
    """A time-boxed role on a connection, for approval: a review of kind grant (the
    pending or active one when the same grant was already asked for)."""
    services, _, service = _runtime(request)
    review = await _call(
        service.request_grant, who.principal, body.connection, body.role, body.duration, body.reason
    )
    return _shape(services, review, who)


@router.get("/grants", response_model=GrantList, responses=_answers(422))
async def list_grants(
    request: Request,
    who: Authenticated,
    active: Annotated[
        bool, Query(description="Only grants in force (else every grant, newest 1000)")
    ] = True,
) -> GrantList:
    services, _, service = _runtime(request)
    if active:
        found = await asyncio.to_thread(service.active_grants)
    else:
        found = await asyncio.to_thread(lambda: service.search(kind="grant", limit=1000))
    if who.principal.is_agent:
        found = [g for g in found if g.principal == who.principal.name]
    return GrantList(grants=[_shape(services, g, who) for g in found])


@router.post(
    "/grants/{review_id}/revoke",
    response_model=ReviewOut,
    responses=_answers(400, 403, 404, 409, 422),
)
async def revoke_grant(
    request: Request, review_id: Text, who: Authenticated, body: DecisionBody | None = None
) -> ReviewOut:
    """As the grantee or one of the grant's approvers; 409 when it is not in force."""
    services, _, service = _runtime(request)
    _visible(await asyncio.to_thread(service.get, review_id), who)
    review = await _call(
        service.revoke_grant, review_id, who.principal, body.reason if body else ""
    )
    return _shape(services, review, who)


# -- proposals --------------------------------------------------------------------------


@router.post(
    "/proposals",
    status_code=201,
    response_model=ReviewOut,
    responses=_answers(400, 403, 404, 413, 422),
)
async def submit_proposal(request: Request, body: ProposalBody, who: Authenticated) -> ReviewOut:
    """A change set the gateway runs itself once approved; 403 when a statement is
    blocked (nothing is filed)."""
    services, _, service = _runtime(request)
    conn = services.config.connections.get(body.connection)
    if conn is not None and conn.type == "kubernetes":
        # On a cluster the statements are manifests: applied by the gateway once approved.
        from wardgate.kubernetes.proposals import propose

        try:
            review = await propose(
                services,
                who.principal,
                body.connection,
                body.statements,
                body.justification,
                session_id="",
                client_addr=request.client.host if request.client else "",
                protocol="api",
            )
        except ReviewError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        return _shape(services, review, who)
    # Parsing up to MAX_STATEMENTS statements is CPU work: off the event loop.
    verdict = await _call(judge_proposal, services, who.principal, body.connection, body.statements)
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


@router.get("/proposals/{review_id}", response_model=ReviewOut, responses=_answers(404, 422))
async def get_proposal(request: Request, review_id: Text, who: Authenticated) -> ReviewOut:
    services, _, service = _runtime(request)
    review = _visible(await asyncio.to_thread(service.get, review_id), who)
    if review.kind != "proposal":
        raise HTTPException(404, f"{review_id} is a review of kind {review.kind}, not a proposal")
    return _shape(services, review, who)
