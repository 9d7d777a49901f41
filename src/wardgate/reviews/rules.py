"""Segregation of duties, decided in one place: who may vote on a review, and when
the approvals it has are enough. Pure functions over principals; no store, no I/O.

The rules:

* the requester never votes on their own review (admins included);
* agents never approve or deny anything, whatever group they are in;
* only humans in an approver group of the review vote;
* with ``sponsor_may_approve: false`` the human sponsor of an agent may not approve
  that agent's reviews (they may still deny);
* every requirement (groups + quorum) of the review must be met by *distinct* humans:
  one person in several approver groups counts once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from wardgate.config import Config
from wardgate.identity.principals import Principal

VoteDecision = Literal["approve", "deny"]


@dataclass(frozen=True, slots=True)
class Requirement:
    """``quorum`` distinct humans from any of ``groups`` must approve."""

    groups: frozenset[str]
    quorum: int

    def describe(self) -> str:
        who = ", ".join(sorted(self.groups))
        return f"{self.quorum} approval{'s' if self.quorum != 1 else ''} from {who}"


@dataclass(frozen=True, slots=True)
class ReviewParties:
    """Who asked, on whose behalf, and what approval the review needs."""

    requester: str
    sponsor: str | None
    requirements: tuple[Requirement, ...]
    sponsor_may_approve: bool


class VoteRefused(Exception):
    """This principal may not cast this vote; the message says why and what to do."""


def refusal(parties: ReviewParties, voter: Principal, decision: VoteDecision) -> str | None:
    """Why ``voter`` may not cast ``decision`` on this review, or None if they may."""
    if voter.is_agent:
        return (
            f"{voter.name!r} is an agent; agents never approve or deny reviews, "
            "a human approver must decide"
        )
    if voter.name == parties.requester:
        return (
            "you requested this review; segregation of duties means a different human "
            "must approve or deny it"
        )
    eligible = frozenset().union(*(r.groups for r in parties.requirements))
    if voter.groups.isdisjoint(eligible):
        return (
            f"{voter.name!r} is in none of this review's approver groups "
            f"({', '.join(sorted(eligible)) or 'none'})"
        )
    if decision == "approve" and voter.name == parties.sponsor and not parties.sponsor_may_approve:
        return (
            f"{voter.name!r} sponsors the agent {parties.requester!r}, and sponsors may not "
            "approve their own agent's actions here (sponsor_may_approve: false); another "
            "approver must decide"
        )
    return None


def cancel_refusal(parties: ReviewParties, kind: str, status: str, by: Principal) -> str | None:
    """Why ``by`` may not cancel this review now, or None if they may: only its
    requester or the agent's sponsor, while pending (or approved and unused, except a
    grant, which is revoked instead)."""
    if by.name not in (parties.requester, parties.sponsor):
        return "only the requester (or the agent's sponsor) can cancel a review"
    if status not in ("pending", "approved") or kind == "grant" and status != "pending":
        return f"it is {status}; it cannot be cancelled"
    return None


def revoke_refusal(parties: ReviewParties, kind: str, status: str, by: Principal) -> str | None:
    """Why ``by`` may not revoke this grant now, or None: the grantee, or a human who
    could have denied it, while it is active."""
    if kind != "grant":
        return "it is not a grant"
    if status != "approved":
        return f"the grant is {status}, not active"
    if by.name != parties.requester and refusal(parties, by, "deny") is not None:
        return "only the grantee or one of the grant's approvers can revoke it"
    return None


def check_vote(parties: ReviewParties, voter: Principal, decision: VoteDecision) -> None:
    reason = refusal(parties, voter, decision)
    if reason is not None:
        raise VoteRefused(reason)


def quorum_met(parties: ReviewParties, approvers: Iterable[Principal]) -> bool:
    """Whether these approvals satisfy every requirement. Approvals that the rules
    would refuse now (a voter since moved out of the group, turned into an agent...)
    do not count."""
    valid = {p.name: p for p in approvers if refusal(parties, p, "approve") is None}
    return all(
        sum(1 for p in valid.values() if not p.groups.isdisjoint(r.groups)) >= r.quorum
        for r in parties.requirements
    )


def missing(parties: ReviewParties, approvers: Iterable[Principal]) -> list[str]:
    """What is still needed, one line per unmet requirement, for status displays."""
    valid = {p.name: p for p in approvers if refusal(parties, p, "approve") is None}
    out = []
    for r in parties.requirements:
        have = sum(1 for p in valid.values() if not p.groups.isdisjoint(r.groups))
        if have < r.quorum:
            out.append(f"{r.quorum - have} more from {', '.join(sorted(r.groups))}")
    return out


def requirements_for(config: Config, rules: Iterable[str]) -> tuple[Requirement, ...]:
    """The approval a review needs, from the rules that asked for it: each rule's own
    approvers and quorum, or the reviews defaults. Every rule must be satisfied."""
    defaults = config.reviews
    found: dict[tuple[frozenset[str], int], None] = {}
    for rule in rules:
        groups: list[str] = []
        quorum: int | None = None
        kind, _, name = rule.partition(":")
        if kind == "role" and name in config.roles:
            groups, quorum = config.roles[name].approvers, config.roles[name].quorum
        elif kind == "guardrail":
            rail = next((g for g in config.guardrails if g.name == name), None)
            if rail is not None:
                groups, quorum = rail.approvers, rail.quorum
        req = (frozenset(groups or defaults.approvers), quorum or defaults.quorum)
        found[req] = None
    if not found:
        found[(frozenset(defaults.approvers), defaults.quorum)] = None
    return tuple(Requirement(g, q) for g, q in found)


def grant_requirements(config: Config, connection: str) -> tuple[Requirement, ...]:
    grants = config.connections[connection].grants
    return (
        Requirement(
            frozenset(grants.approvers or config.reviews.approvers),
            grants.quorum or config.reviews.quorum,
        ),
    )
