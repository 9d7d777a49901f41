"""What becomes of an action once the gate has judged it, for every protocol: it runs
(allowed, or approved in a review whose approval it now uses), or it does not (blocked,
pending, denied, expired...) and the refusal says why in words for the client."""

from __future__ import annotations

from dataclasses import dataclass

from wardgate.actions import Action, Verdict
from wardgate.audit.records import AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_HINT, AUDIT_UNAVAILABLE_RULE
from wardgate.reviews.messages import (
    OutcomeText,
    approved_verdict,
    blocked_text,
    needs_review,
    outcome_text,
    outcome_verdict,
)
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.waiting import ReviewRuntime


@dataclass(frozen=True, slots=True)
class Settled:
    verdict: Verdict  # what the action runs, or is recorded, under
    review: ReviewInfo | None = None  # the review that approved or holds it
    refusal: OutcomeText | None = None  # set when the action does not run
    # allowed | approved | blocked | pending | denied | expired | cancelled | interrupted
    # | unrecorded (the audit store is unavailable)
    status: str = "allowed"

    @property
    def runs(self) -> bool:
        return self.refusal is None


def blocked(verdict: Verdict, connection: str, what: str = "statement") -> Settled:
    if verdict.rule == AUDIT_UNAVAILABLE_RULE:
        return Settled(
            verdict,
            refusal=OutcomeText(AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_HINT),
            status="unrecorded",
        )
    return Settled(verdict, refusal=blocked_text(verdict, connection, what=what), status="blocked")


async def settle(
    runtime: ReviewRuntime | None,
    action: Action,
    verdict: Verdict,
    *,
    wait: float,
    base_url: str,
    what: str = "statement",
) -> Settled:
    """Hold ``action`` for a human when its verdict asks for one (up to ``wait``
    seconds); without a review runtime a review verdict is a block."""
    if needs_review(verdict) and runtime is not None:
        outcome = await runtime.obtain(action, verdict, wait)
        review = outcome.review
        if outcome.status == "approved":
            return Settled(approved_verdict(verdict, review), review, status="approved")
        said = outcome_text(outcome.status, review, base_url, what=what)
        return Settled(outcome_verdict(outcome), review, said, outcome.status)
    if not verdict.lets_through:
        return blocked(verdict, action.connection, what)
    return Settled(verdict)
