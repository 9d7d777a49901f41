"""Segregation of duties as a table: who may vote, and when approvals are enough."""

from __future__ import annotations

import pytest

from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.reviews.rules import (
    Requirement,
    ReviewParties,
    VoteRefused,
    check_vote,
    missing,
    quorum_met,
    refusal,
)


def user(name: str, *groups: str) -> Principal:
    return Principal(name, PrincipalKind.USER, frozenset(groups))


def agent(name: str, *groups: str, sponsor: str | None = "dev") -> Principal:
    return Principal(name, PrincipalKind.AGENT, frozenset(groups), sponsor)


DBA1 = Requirement(frozenset({"dba"}), 1)
AGENT_REVIEW = ReviewParties("bot", "dev", (DBA1,), sponsor_may_approve=False)
HUMAN_REVIEW = ReviewParties("ann", None, (DBA1,), sponsor_may_approve=False)
SPONSOR_OK = ReviewParties("bot", "dev", (DBA1,), sponsor_may_approve=True)

VOTES = [
    # (review, voter, decision, allowed, why)
    (AGENT_REVIEW, user("dora", "dba"), "approve", True, "a human approver"),
    (AGENT_REVIEW, user("dora", "dba"), "deny", True, "a human approver may deny"),
    (HUMAN_REVIEW, user("ann", "dba", "admins"), "approve", False, "requested this review"),
    (HUMAN_REVIEW, user("ann", "dba"), "deny", False, "requested this review"),
    (AGENT_REVIEW, agent("bot", "dba"), "approve", False, "agents never"),
    (AGENT_REVIEW, agent("helper", "dba"), "approve", False, "agents never"),
    (AGENT_REVIEW, agent("helper", "dba"), "deny", False, "agents never"),
    (AGENT_REVIEW, user("eve", "engineers"), "approve", False, "in none of this review's"),
    (AGENT_REVIEW, user("dev", "dba"), "approve", False, "sponsors the agent"),
    (AGENT_REVIEW, user("dev", "dba"), "deny", True, "a sponsor may still stop it"),
    (SPONSOR_OK, user("dev", "dba"), "approve", True, "sponsor_may_approve: true"),
]


@pytest.mark.parametrize(("parties", "voter", "decision", "allowed", "why"), VOTES)
def test_who_may_vote(
    parties: ReviewParties, voter: Principal, decision: str, allowed: bool, why: str
) -> None:
    reason = refusal(parties, voter, decision)  # type: ignore[arg-type]
    if allowed:
        assert reason is None, why
        check_vote(parties, voter, decision)  # type: ignore[arg-type]
    else:
        assert reason is not None and why in reason
        with pytest.raises(VoteRefused, match=why):
            check_vote(parties, voter, decision)  # type: ignore[arg-type]


TWO_FROM_DBA_OR_SEC = ReviewParties(
    "bot", "dev", (Requirement(frozenset({"dba", "security"}), 2),), sponsor_may_approve=False
)
DBA_AND_SEC = ReviewParties(
    "bot",
    "dev",
    (Requirement(frozenset({"dba"}), 1), Requirement(frozenset({"security"}), 1)),
    sponsor_may_approve=False,
)

QUORUMS = [
    # (review, approvers, met, still needed)
    (AGENT_REVIEW, [], False, ["1 more from dba"]),
    (AGENT_REVIEW, [user("dora", "dba")], True, []),
    # one person in both groups counts once
    (TWO_FROM_DBA_OR_SEC, [user("dora", "dba", "security")], False, ["1 more from dba, security"]),
    (TWO_FROM_DBA_OR_SEC, [user("dora", "dba", "security"), user("sam", "security")], True, []),
    # the same person listed twice is still one person
    (
        TWO_FROM_DBA_OR_SEC,
        [user("dora", "dba"), user("dora", "dba")],
        False,
        ["1 more from dba, security"],
    ),
    # approvals the rules refuse never count: the requester, an agent, the sponsor
    (
        TWO_FROM_DBA_OR_SEC,
        [user("bot", "dba"), agent("x", "dba"), user("dev", "dba")],
        False,
        ["2 more from dba, security"],
    ),
    # every requirement of every rule must be met
    (DBA_AND_SEC, [user("dora", "dba")], False, ["1 more from security"]),
    (DBA_AND_SEC, [user("dora", "dba"), user("sam", "security")], True, []),
    (DBA_AND_SEC, [user("both", "dba", "security")], True, []),
]


@pytest.mark.parametrize(("parties", "approvers", "met", "needed"), QUORUMS)
def test_quorum_counts_distinct_humans(
    parties: ReviewParties, approvers: list[Principal], met: bool, needed: list[str]
) -> None:
    assert quorum_met(parties, approvers) is met
    assert missing(parties, approvers) == needed
