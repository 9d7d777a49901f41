"""How a blocked or held action's outcome is said to the client, in words an agent
understands without documentation. Protocols wrap these in their native error
(PostgreSQL ErrorResponse, SSH stderr + exit status, MCP tool result)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from wardgate.actions import Decision, Verdict
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.waiting import Outcome


@dataclass(frozen=True, slots=True)
class OutcomeText:
    message: str
    hint: str


def review_url(base: str, review_id: str) -> str:
    # The web UI page: where a human reads the action and approves it.
    return f"{base}/ui/reviews/{review_id}" if base else f"review {review_id}"


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def blocked_text(verdict: Verdict, connection: str, *, what: str = "statement") -> OutcomeText:
    """A policy block: every rule that gave it (the deciding one first) and the reason."""
    return OutcomeText(
        f"wardgate: blocked by {', '.join(verdict.rules)}: {verdict.reason}",
        f"This is a wardgate policy decision on connection {connection!r}, not an error of "
        f"the target: the {what} did not run, and running it again will be blocked again. "
        "Ask a wardgate administrator if you need this access.",
    )


def outcome_text(
    status: str, review: ReviewInfo, base_url: str, *, what: str = "statement"
) -> OutcomeText:
    rid = review.id
    url = review_url(base_url, rid)
    if status == "pending":
        needed = "; ".join(r.describe() for r in review.requirements)
        if review.kind == "proposal":
            after = (
                "After approval wardgate runs it itself, in one transaction, and stores the "
                "outcome: check it with review_status, GET /api/v1/proposals/"
                f"{rid} or `wardgate proposals show {rid}`; do not submit it again."
            )
        else:
            after = (
                f"After approval, run the same {what} again (same text and parameters): it "
                "will run once."
            )
        return OutcomeText(
            f"wardgate: approval pending: review {rid} ({review.rule}: {review.reason})",
            f"This {what} needs a human approval before it runs ({needed}); it was not run. "
            f"An approver can approve it at {url} or with `wardgate reviews approve {rid}`. "
            f"{after} The review expires at {_utc(review.expires_at)}.",
        )
    if status == "denied":
        deny = next((v for v in review.votes if v.decision == "deny"), None)
        by = f" by {deny.voter}" if deny else ""
        why = f": {deny.reason}" if deny and deny.reason else ""
        return OutcomeText(
            f"wardgate: denied: review {rid} was denied{by}{why}",
            f"A human reviewer refused this {what}; it was not run. Do not retry it as it "
            f"is: change the approach, or talk to the reviewer. Details: {url}",
        )
    if status == "cancelled":
        return OutcomeText(
            f"wardgate: review {rid} was cancelled; the {what} was not run",
            f"Run the {what} again to file a new review. Details: {url}",
        )
    return OutcomeText(
        f"wardgate: review {rid} {status}; the {what} was not run",
        f"Its approval time ran out. Run the same {what} again to file a new review. "
        f"Details: {url}",
    )


def needs_review(verdict: Verdict) -> bool:
    """Whether this verdict holds the action for a human (observe mode never holds)."""
    return verdict.decision is Decision.REVIEW and verdict.enforced


def merged_review(verdicts: list[Verdict]) -> Verdict:
    """One review verdict for an action with several statements that each need one."""
    first = verdicts[0]
    rules = tuple(dict.fromkeys(r for v in verdicts for r in v.rules))
    return Verdict(
        first.decision, first.rule, first.reason, first.statements, rules, first.enforced
    )


def approved_verdict(verdict: Verdict, review: ReviewInfo) -> Verdict:
    """The verdict an action runs under once its review is approved: recorded with the
    review's id first, then the rules that asked for it."""
    by = ", ".join(v.voter for v in review.votes if v.decision == "approve") or "approvers"
    return Verdict(
        Decision.ALLOW,
        f"review:{review.id}",
        f"approved by {by} in review {review.id} ({verdict.rule}: {verdict.reason})",
        verdict.statements,
        (f"review:{review.id}", *verdict.rules),
    )


def outcome_verdict(outcome: Outcome) -> Verdict:
    """The verdict recorded for an action that a review held and did not let run."""
    review = outcome.review
    decision = Decision.BLOCK if outcome.status == "denied" else Decision.REVIEW
    return Verdict(
        decision,
        f"review:{review.id}",
        f"review {review.id} {outcome.status} ({review.rule}: {review.reason})",
        rules=(f"review:{review.id}", *review.rules),
    )
