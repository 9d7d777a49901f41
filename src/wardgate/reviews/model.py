"""What a review is, as every part of wardgate sees it: a frozen snapshot of its row
and votes, and the one error type of the review service."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from wardgate.reviews.rules import Requirement, ReviewParties
from wardgate.store.models import ReviewRow


class ReviewError(Exception):
    """A request the review service refuses; the message is for the caller. ``status``
    is the HTTP status the API answers with."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Vote:
    voter: str
    decision: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class ReviewInfo:
    id: str
    kind: str
    status: str
    connection: str
    principal: str
    principal_kind: str
    sponsor: str | None
    protocol: str
    session_id: str
    client_addr: str
    text: str
    detail: dict[str, Any]
    rule: str
    rules: list[str]
    reason: str
    justification: str | None
    requirements: list[Requirement]
    sponsor_may_approve: bool
    created_at: float
    expires_at: float
    decided_at: float | None
    approved_until: float | None
    executed_at: float | None
    preview: dict[str, Any] | None
    result: dict[str, Any] | None
    votes: list[Vote] = field(default_factory=list)

    @property
    def parties(self) -> ReviewParties:
        return ReviewParties(
            self.principal, self.sponsor, tuple(self.requirements), self.sponsor_may_approve
        )

    def to_dict(self) -> dict[str, Any]:
        """As the API and notifications show it (plain JSON values)."""
        body = dataclasses.asdict(self)
        body["requirements"] = [
            {"groups": sorted(r.groups), "quorum": r.quorum} for r in self.requirements
        ]
        return body


def new_review_id() -> str:
    # 50 random bits, lowercase base32: short enough to read out, type and paste.
    return "r_" + base64.b32encode(secrets.token_bytes(5)).decode().lower().rstrip("=")


def effective_status(row: ReviewRow, now: float) -> str:
    if row.status == "pending" and row.expires_at <= now:
        return "expired"
    if row.status == "approved" and row.approved_until is not None and row.approved_until <= now:
        return "expired"
    return row.status


def review_info(row: ReviewRow, votes: list[Vote], now: float) -> ReviewInfo:
    return ReviewInfo(
        id=row.id,
        kind=row.kind,
        status=effective_status(row, now),
        connection=row.connection,
        principal=row.principal,
        principal_kind=row.principal_kind,
        sponsor=row.sponsor,
        protocol=row.protocol,
        session_id=row.session_id,
        client_addr=row.client_addr,
        text=row.text,
        detail=json.loads(row.detail),
        rule=row.rule,
        rules=json.loads(row.rules),
        reason=row.reason,
        justification=row.justification,
        requirements=[
            Requirement(frozenset(r["groups"]), int(r["quorum"]))
            for r in json.loads(row.requirements)
        ],
        sponsor_may_approve=row.sponsor_may_approve,
        created_at=row.created_at,
        expires_at=row.expires_at,
        decided_at=row.decided_at,
        approved_until=row.approved_until,
        executed_at=row.executed_at,
        preview=json.loads(row.preview) if row.preview else None,
        result=json.loads(row.result) if row.result else None,
        votes=votes,
    )
