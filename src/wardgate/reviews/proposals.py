"""Judging a proposed change set before it is filed, for every surface that takes one
(the REST API, MCP): each statement through the gate as the proposer."""

from __future__ import annotations

from typing import TYPE_CHECKING

from wardgate.actions import Action, Decision, Verdict
from wardgate.identity.principals import Principal
from wardgate.proxy.pg_proposal import proposal_refusal
from wardgate.reviews.model import ReviewError

if TYPE_CHECKING:
    from wardgate.proxy.services import Services


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
    refused = proposal_refusal(statements)
    if refused is not None:
        raise ReviewError(f"{refused[2]}; the proposal was not filed", 422)
    runtime = services.reviews
    granted = runtime.granted(principal.name, connection) if runtime else frozenset()
    reviewing: list[Verdict] = []
    for i, sql in enumerate(statements):
        action = Action(principal, connection, protocol, "sql", sql.strip())
        verdict = services.gate.check(action, granted)
        if verdict.decision is Decision.BLOCK and verdict.enforced:
            raise ReviewError(
                f"statement {i + 1} is blocked by {', '.join(verdict.rules)}: {verdict.reason}; "
                "the proposal was not filed",
                403,
            )
        if verdict.decision is Decision.REVIEW:
            reviewing.append(verdict)
    if not reviewing:
        return Verdict(Decision.ALLOW, "proposal", "a proposed change set")
    rules = tuple(dict.fromkeys(r for v in reviewing for r in v.rules))
    return Verdict(Decision.REVIEW, reviewing[0].rule, reviewing[0].reason, rules=rules)
