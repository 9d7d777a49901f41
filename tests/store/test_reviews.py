"""The review service on a real store (SQLite and PostgreSQL): binding to the exact
action, single use, expiry, cancel, deny, grants, and the audit trail of it all."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.chain import verify_chain
from wardgate.config import Config, parse_config
from wardgate.reviews.model import ReviewError
from wardgate.reviews.rules import VoteRefused
from wardgate.reviews.service import ReviewService
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent

CONFIG = """
groups: {agents: {}, engineers: {}, approvers: {}, security: {}}
principals:
  agent: {kind: agent, groups: [agents], sponsor: dev}
  dev: {kind: user, groups: [engineers, approvers]}
  reviewer: {kind: user, groups: [engineers, approvers]}
  sam: {kind: user, groups: [security]}
  helper: {kind: agent, groups: [approvers], sponsor: reviewer}
connections:
  demo:
    type: postgres
    upstream: {database: demo, user: app}
    roles: {agents: proposer, engineers: engineer}
    grants: {roles: [engineer], max_duration: 1h}
  other:
    type: postgres
    upstream: {database: other, user: app}
    roles: {agents: proposer}
roles:
  proposer: {read: allow, write: review}
  engineer: {read: allow, write: allow}
guardrails:
  - {name: secrets-two-keys, match: {tables: [secrets]}, verdict: review, approvers: [security]}
reviews: {approvers: [approvers], expires: EXPIRES, approval_valid: VALID}
"""

REVIEW = Verdict(Decision.REVIEW, "role:proposer", "writes need a review", rules=("role:proposer",))


def make_config(expires: str = "1h", valid: str = "1h") -> Config:
    text = CONFIG.replace("EXPIRES", expires).replace("VALID", valid)
    return parse_config(text, Path("wardgate.yaml"))


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
def service(store: Store, config: Config) -> ReviewService:
    return ReviewService(store, lambda: config)


def action(
    config: Config,
    text: str = "UPDATE orders SET status = 'paid' WHERE id = 1",
    *,
    principal: str = "agent",
    connection: str = "demo",
    params: tuple[str | None, ...] = (),
) -> Action:
    who = config.principal(principal)
    assert who is not None
    return Action(who, connection, "postgres", "sql", text, params, session_id="s1")


def who(config: Config, name: str):  # type: ignore[no-untyped-def]
    p = config.principal(name)
    assert p is not None
    return p


def test_same_action_shares_one_review_and_runs_once(
    service: ReviewService, config: Config
) -> None:
    first = service.request_action(action(config), REVIEW)
    assert first.status == "pending" and first.sponsor == "dev"
    # the same statement again, spelled differently, with a justification: same review
    again = service.request_action(
        action(config, "/* wardgate: reason=fix #42 */ update ORDERS set status='paid' where id=1"),
        REVIEW,
    )
    assert again.id == first.id
    approved = service.vote(first.id, who(config, "reviewer"), "approve", "ok")
    assert approved.status == "approved" and approved.approved_until is not None
    assert service.request_action(action(config), REVIEW).status == "approved"
    assert service.consume(first.id) is True
    assert service.consume(first.id) is False  # single use
    third = service.request_action(action(config), REVIEW)
    assert third.id != first.id and third.status == "pending"


@pytest.mark.parametrize(
    "other",
    [
        {"text": "UPDATE orders SET status = 'paid' WHERE id = 2"},
        {"params": ("1",)},
        {"connection": "other"},
    ],
)
def test_anything_different_needs_its_own_review(
    service: ReviewService, config: Config, other: dict[str, object]
) -> None:
    first = service.request_action(action(config), REVIEW)
    service.vote(first.id, who(config, "reviewer"), "approve")
    different = service.request_action(action(config, **other), REVIEW)  # type: ignore[arg-type]
    assert different.id != first.id and different.status == "pending"


def test_another_principal_does_not_match(service: ReviewService, config: Config) -> None:
    first = service.request_action(action(config), REVIEW)
    service.vote(first.id, who(config, "reviewer"), "approve")
    mine = service.request_action(action(config, principal="dev"), REVIEW)
    assert mine.id != first.id


def test_justification_is_kept(service: ReviewService, config: Config) -> None:
    review = service.request_action(
        action(config, "/* wardgate: reason=customer asked,\n ticket 42 */ UPDATE t SET a = 1"),
        REVIEW,
    )
    assert review.justification == "customer asked, ticket 42"


def test_separation_of_duties_is_enforced_by_the_service(
    service: ReviewService, config: Config
) -> None:
    review = service.request_action(action(config), REVIEW)
    with pytest.raises(VoteRefused, match="agents never"):
        service.vote(review.id, who(config, "helper"), "approve")
    with pytest.raises(VoteRefused, match="sponsors the agent"):
        service.vote(review.id, who(config, "dev"), "approve")
    with pytest.raises(VoteRefused, match="none of this review's approver groups"):
        service.vote(review.id, who(config, "sam"), "approve")
    own = service.request_action(action(config, principal="dev"), REVIEW)
    with pytest.raises(VoteRefused, match="you requested this review"):
        service.vote(own.id, who(config, "dev"), "approve")
    assert service.get(review.id).status == "pending"  # type: ignore[union-attr]


def test_per_rule_approvers(service: ReviewService, config: Config) -> None:
    verdict = Verdict(
        Decision.REVIEW,
        "guardrail:secrets-two-keys",
        "secrets",
        rules=("guardrail:secrets-two-keys",),
    )
    review = service.request_action(
        action(config, "UPDATE secrets SET v = 1 WHERE id = 1"), verdict
    )
    with pytest.raises(VoteRefused, match="security"):
        service.vote(review.id, who(config, "reviewer"), "approve")
    assert service.vote(review.id, who(config, "sam"), "approve").status == "approved"


def test_deny_ends_the_review(service: ReviewService, config: Config) -> None:
    review = service.request_action(action(config), REVIEW)
    denied = service.vote(review.id, who(config, "reviewer"), "deny", "not today")
    assert denied.status == "denied"
    with pytest.raises(ReviewError, match="denied"):
        service.vote(review.id, who(config, "sam"), "approve")
    assert service.consume(review.id) is False


def test_double_vote_refused(store: Store) -> None:
    config = make_config()
    text = CONFIG.replace(
        "reviews: {approvers: [approvers]", "reviews: {quorum: 2, approvers: [approvers]"
    )
    config = parse_config(text.replace("EXPIRES", "1h").replace("VALID", "1h"), Path("w.yaml"))
    service = ReviewService(store, lambda: config)
    review = service.request_action(action(config), REVIEW)
    after_one = service.vote(review.id, who(config, "reviewer"), "approve")
    assert after_one.status == "pending"
    with pytest.raises(ReviewError, match="already voted"):
        service.vote(review.id, who(config, "reviewer"), "approve")


def test_pending_and_unused_approvals_expire(store: Store) -> None:
    config = make_config(expires="200ms", valid="200ms")
    service = ReviewService(store, lambda: config)
    pending = service.request_action(action(config), REVIEW)
    approved = service.request_action(action(config, "UPDATE t SET a = 2 WHERE id = 2"), REVIEW)
    service.vote(approved.id, who(config, "reviewer"), "approve")
    time.sleep(0.3)
    assert service.get(pending.id).status == "expired"  # type: ignore[union-attr]
    assert service.consume(approved.id) is False
    with pytest.raises(ReviewError, match="expired"):
        service.vote(pending.id, who(config, "reviewer"), "approve")
    assert service.expire_due() == 2
    assert service.expire_due() == 0
    # a re-run after expiry files a new review
    assert service.request_action(action(config), REVIEW).id != pending.id


def test_requester_cancels(service: ReviewService, config: Config) -> None:
    review = service.request_action(action(config), REVIEW)
    with pytest.raises(ReviewError, match="only the requester"):
        service.cancel(review.id, who(config, "reviewer"))
    assert service.cancel(review.id, who(config, "agent")).status == "cancelled"


def test_grants(service: ReviewService, config: Config) -> None:
    agent = who(config, "agent")
    with pytest.raises(ReviewError, match="grantable roles: engineer"):
        service.request_grant(agent, "demo", "proposer", 60, "why")
    with pytest.raises(ReviewError, match="at most 3600"):
        service.request_grant(agent, "demo", "engineer", 7200, "why")
    grant = service.request_grant(agent, "demo", "engineer", 1800, "hotfix")
    assert service.active_grants() == []
    service.vote(grant.id, who(config, "reviewer"), "approve")
    (active,) = service.active_grants()
    assert active.detail["role"] == "engineer" and active.approved_until is not None
    assert active.approved_until - time.time() == pytest.approx(1800, abs=5)
    assert service.consume(grant.id) is False  # a grant is held, not used up
    with pytest.raises(ReviewError, match="grantee or one of the grant's approvers"):
        service.revoke_grant(grant.id, who(config, "sam"))
    service.revoke_grant(grant.id, who(config, "reviewer"), "done")
    assert service.active_grants() == []


def test_every_step_is_in_the_audit_chain(
    service: ReviewService, config: Config, store: Store
) -> None:
    review = service.request_action(action(config), REVIEW)
    service.vote(review.id, who(config, "reviewer"), "approve", "looks right")
    service.consume(review.id)
    with store.session(write=False) as session:
        events = session.execute(
            select(AuditEvent.type, AuditEvent.principal, AuditEvent.payload).order_by(
                AuditEvent.id
            )
        ).all()
    mine = [(t, p) for t, p, payload in events if json.loads(payload).get("review") == review.id]
    assert mine == [
        ("review.requested", "agent"),
        ("review.vote.approve", "reviewer"),
        ("review.approved", "reviewer"),
        ("review.executed", "agent"),
    ]
    assert verify_chain(store).ok
