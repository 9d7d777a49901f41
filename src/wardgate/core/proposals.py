"""Judging a proposed change set before it is filed, for every surface that takes one
(the REST API, MCP): each statement through the gate as the proposer.

Which statements can run together as one proposal is the business of the protocol that
runs them; it registers that check on Services at startup (``proposal_checks``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wardgate.actions import Action, Decision, Verdict
from wardgate.identity.principals import Principal
from wardgate.reviews.messages import merged_review
from wardgate.reviews.model import ReviewError

if TYPE_CHECKING:
    from wardgate.core.services import Services

# Why these statements cannot run as one proposal: (index, SQLSTATE, message), or None.
ProposalCheck = Callable[[list[str]], tuple[int | None, str, str] | None]


def judge_proposal(
    services: Services,
    principal: Principal,
    connection: str,
    statements: list[str],
    protocol: str = "api",
) -> Verdict:
    """A block refuses the whole proposal (ReviewError 403 naming the rule); review
    verdicts are merged into the one review the proposal gets."""
    if connection not in services.config.connections:
        raise ReviewError(f"connection {connection!r} is not configured", 404)
    check = services.proposal_checks.get("sql")
    if check is None:
        raise ReviewError(
            "this gateway process has no check for SQL proposals registered (a fault in how "
            "it was started); the proposal was not filed: tell the gateway's administrator",
            503,
        )
    refused = check(statements)
    if refused is not None:
        raise ReviewError(f"{refused[2]}; the proposal was not filed", 422)
    return proposal_verdict(
        statement_verdicts(services, principal, connection, statements, protocol)
    )


def proposal_verdict(verdicts: list[Verdict], what: str = "statement") -> Verdict:
    """The verdict on a whole proposal from its parts' (statements, manifests): a block
    refuses it (ReviewError 403 naming the rule); review verdicts are merged into the
    one review the proposal gets."""
    reviewing: list[Verdict] = []
    for i, verdict in enumerate(verdicts):
        if verdict.decision is Decision.BLOCK and verdict.enforced:
            raise ReviewError(
                f"{what} {i + 1} is blocked by {', '.join(verdict.rules)}: {verdict.reason}; "
                "the proposal was not filed",
                403,
            )
        if verdict.decision is Decision.REVIEW:
            reviewing.append(verdict)
    if not reviewing:
        return Verdict(Decision.ALLOW, "proposal", "a proposed change set")
    return merged_review(reviewing)


def statement_verdicts(
    services: Services,
    principal: Principal,
    connection: str,
    statements: list[str],
    protocol: str = "api",
) -> list[Verdict]:
    """The gate's verdict on each statement of a proposal, as its proposer (with the
    roles it holds through grants): when it is filed, and again before it runs."""
    runtime = services.reviews
    granted = runtime.granted(principal.name, connection) if runtime else frozenset()
    return [
        services.gate.check(Action(principal, connection, protocol, "sql", sql.strip()), granted)
        for sql in statements
    ]
