"""The one review service: every protocol, the API and the CLI create and decide
reviews here, and every state change is written with its audit event in the same
store transaction, so the log and the reviews can never disagree.

Methods are synchronous store calls (run them with ``asyncio.to_thread`` from the
event loop). After each commit the service tells its listeners (the in-process
waiter, the notifier) what happened; on a PostgreSQL store it also sends
``NOTIFY wardgate_reviews`` so that other gateway processes wake their waiters.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, or_, select, text, true, update
from sqlalchemy.orm import Session

from wardgate.actions import Action, Verdict
from wardgate.audit.chain import NewEvent, append_events
from wardgate.config import Config
from wardgate.identity.principals import Principal
from wardgate.reviews.fingerprint import action_fingerprint, fingerprint_of, justification
from wardgate.reviews.model import (
    ReviewError,
    ReviewInfo,
    Vote,
    new_review_id,
    review_info,
)
from wardgate.reviews.rules import (
    Requirement,
    VoteDecision,
    cancel_refusal,
    check_vote,
    grant_requirements,
    missing,
    quorum_met,
    requirements_for,
    revoke_refusal,
)
from wardgate.store.db import Store
from wardgate.store.models import ReviewRow, ReviewVote

log = logging.getLogger("wardgate.reviews")

NOTIFY_CHANNEL = "wardgate_reviews"
MAX_TEXT = 100_000  # a reviewed statement longer than this is refused, not truncated
# Final states: nothing changes a review after these.
FINAL = frozenset(
    {"denied", "expired", "cancelled", "executed", "failed", "rolled_back", "revoked"}
)


Listener = Callable[[ReviewInfo, str], None]


class ReviewService:
    def __init__(self, store: Store, config: Callable[[], Config]) -> None:
        self._store = store
        self._config = config
        self.listeners: list[Listener] = []

    # -- reading ------------------------------------------------------------------------

    def get(self, review_id: str) -> ReviewInfo | None:
        with self._store.session(write=False) as session:
            row = session.get(ReviewRow, review_id)
            return None if row is None else self._load(session, row)

    def search(
        self,
        *,
        status: str | None = None,
        kind: str | None = None,
        principal: str | None = None,
        connection: str | None = None,
        limit: int = 100,
    ) -> list[ReviewInfo]:
        now = time.time()
        stmt = select(ReviewRow).order_by(ReviewRow.created_at.desc()).limit(max(1, limit))
        if status == "pending":
            stmt = stmt.where(ReviewRow.status == "pending", ReviewRow.expires_at > now)
        elif status == "approved":
            stmt = stmt.where(
                ReviewRow.status == "approved",
                or_(ReviewRow.approved_until.is_(None), ReviewRow.approved_until > now),
            )
        elif status == "expired":
            stmt = stmt.where(or_(ReviewRow.status == "expired", _time_ran_out(now)))
        elif status is not None:
            stmt = stmt.where(ReviewRow.status == status)
        if kind is not None:
            stmt = stmt.where(ReviewRow.kind == kind)
        if principal is not None:
            stmt = stmt.where(ReviewRow.principal == principal)
        if connection is not None:
            stmt = stmt.where(ReviewRow.connection == connection)
        with self._store.session(write=False) as session:
            return [self._load(session, row, now) for row in session.scalars(stmt)]

    def _load(self, session: Session, row: ReviewRow, now: float | None = None) -> ReviewInfo:
        votes = [
            Vote(v.voter, v.decision, v.reason, v.at)
            for v in session.scalars(
                select(ReviewVote).where(ReviewVote.review_id == row.id).order_by(ReviewVote.at)
            )
        ]
        return review_info(row, votes, time.time() if now is None else now)

    def active_grants(self) -> list[ReviewInfo]:
        now = time.time()
        with self._store.session(write=False) as session:
            rows = session.scalars(
                select(ReviewRow).where(
                    ReviewRow.kind == "grant",
                    ReviewRow.status == "approved",
                    ReviewRow.approved_until > now,
                )
            ).all()
            return [review_info(r, [], now) for r in rows]

    # -- requesting ---------------------------------------------------------------------

    def request_action(self, action: Action, verdict: Verdict) -> ReviewInfo:
        """The review for exactly this action: an approved one not yet used, else the
        pending one, else a new one."""
        if len(action.text) > MAX_TEXT:
            raise ReviewError(
                f"the statement is longer than {MAX_TEXT} characters and cannot be reviewed", 413
            )
        config = self._config()
        fp = action_fingerprint(action)
        detail: dict[str, Any] = {"params": list(action.params)}
        if action.resolved is not None:
            detail["resolved"] = action.resolved
        if action.context:
            # The session state the statement will run with, as the server reported it.
            detail["context"] = dict(action.context)
        return self._request(
            kind="action",
            fingerprint=fp,
            principal=action.principal,
            connection=action.connection,
            protocol=action.protocol,
            session_id=action.session_id,
            client_addr=action.client_addr,
            text_=action.text,
            detail=detail,
            verdict_rule=verdict.rule,
            verdict_rules=list(verdict.rules),
            reason=verdict.reason,
            justification=justification(action.text),
            requirements=requirements_for(config, verdict.rules),
            lifetime=config.reviews.expires,
        )

    def request_grant(
        self, principal: Principal, connection: str, role: str, duration: float, reason: str
    ) -> ReviewInfo:
        config = self._config()
        conn = config.connections.get(connection)
        if conn is None:
            raise ReviewError(f"connection {connection!r} is not configured", 404)
        if role not in conn.grants.roles:
            offered = ", ".join(conn.grants.roles) or "none"
            raise ReviewError(
                f"role {role!r} cannot be requested on connection {connection!r} "
                f"(grantable roles: {offered})",
                422,
            )
        if not 0 < duration <= conn.grants.max_duration:
            raise ReviewError(
                f"a grant on {connection!r} lasts at most {conn.grants.max_duration:g} seconds",
                422,
            )
        if not reason.strip():
            raise ReviewError("a grant request needs a reason for the approvers", 422)
        return self._request(
            kind="grant",
            fingerprint=fingerprint_of("grant", connection, principal.name, role, duration),
            principal=principal,
            connection=connection,
            protocol="api",
            session_id="",
            client_addr="",
            text_=f"grant role {role} on {connection} for {_human_duration(duration)}",
            detail={"role": role, "duration": duration},
            verdict_rule="grant-request",
            verdict_rules=["grant-request"],
            reason=f"{principal.name} asks for role {role!r} on {connection!r}",
            justification=reason.strip()[:2000],
            requirements=grant_requirements(config, connection),
            lifetime=config.reviews.expires,
        )

    def request_code(
        self, principal: Principal, code: str, justification_: str, context: str = ""
    ) -> ReviewInfo:
        """A review of code an agent wants to run on its own side (an AutoGen code
        executor): the same rules, approvers and audit trail as a statement."""
        config = self._config()
        if len(code) > MAX_TEXT:
            raise ReviewError(f"the code is longer than {MAX_TEXT} characters", 413)
        rules = ["code-execution"]
        return self._request(
            kind="code",
            fingerprint=fingerprint_of("code", principal.name, code),
            principal=principal,
            connection="",
            protocol="api",
            session_id="",
            client_addr="",
            text_=code,
            detail={"context": context[:200]},
            verdict_rule=rules[0],
            verdict_rules=rules,
            reason=f"{principal.name} wants to run code"
            + (f" ({context[:200]})" if context else ""),
            justification=justification_.strip()[:2000] or None,
            requirements=requirements_for(config, rules),
            lifetime=config.reviews.expires,
        )

    def request_proposal(
        self,
        principal: Principal,
        connection: str,
        statements: list[str],
        justification_: str,
        verdict: Verdict,
        *,
        client_addr: str = "",
        session_id: str = "",
        protocol: str = "api",
        requests: list[dict[str, Any]] | None = None,
    ) -> ReviewInfo:
        """``statements``: what the reviewer reads, one per part; ``requests``: what the
        gateway sends for each part when that is not the text itself (a Kubernetes
        manifest's server-side apply)."""
        config = self._config()
        if requests is None:
            joined = ";\n".join(s.strip().rstrip(";") for s in statements)
        else:
            joined = "\n---\n".join(s.strip() for s in statements)
        if len(joined) > MAX_TEXT:
            raise ReviewError(f"the proposal is longer than {MAX_TEXT} characters", 413)
        rules = list(verdict.rules) if verdict.decision == "review" else ["proposal"]
        return self._request(
            kind="proposal",
            # Never merged with another: each submission is its own proposal.
            fingerprint=fingerprint_of("proposal", connection, principal.name, new_review_id()),
            principal=principal,
            connection=connection,
            protocol=protocol,
            session_id=session_id,
            client_addr=client_addr,
            text_=joined,
            detail={"statements": statements}
            | ({"requests": requests} if requests is not None else {}),
            verdict_rule=rules[0],
            verdict_rules=rules,
            reason=verdict.reason if verdict.decision == "review" else "a proposed change set",
            justification=justification_.strip()[:2000] or None,
            requirements=requirements_for(config, rules),
            lifetime=config.reviews.expires,
        )

    def _request(
        self,
        *,
        kind: str,
        fingerprint: str,
        principal: Principal,
        connection: str,
        protocol: str,
        session_id: str,
        client_addr: str,
        text_: str,
        detail: dict[str, Any],
        verdict_rule: str,
        verdict_rules: list[str],
        reason: str,
        justification: str | None,
        requirements: tuple[Requirement, ...],
        lifetime: float,
    ) -> ReviewInfo:
        config = self._config()
        now = time.time()
        with self._store.session() as session:
            existing = session.scalars(
                select(ReviewRow)
                .where(
                    ReviewRow.fingerprint == fingerprint,
                    or_(
                        (ReviewRow.status == "approved") & (ReviewRow.approved_until > now),
                        (ReviewRow.status == "pending") & (ReviewRow.expires_at > now),
                    ),
                )
                .order_by(ReviewRow.status, ReviewRow.created_at)  # approved first
            ).first()
            if existing is not None:
                return self._load(session, existing, now)
            row = ReviewRow(
                id=new_review_id(),
                kind=kind,
                status="pending",
                fingerprint=fingerprint,
                connection=connection,
                principal=principal.name,
                principal_kind=principal.kind.value,
                sponsor=principal.sponsor,
                protocol=protocol,
                session_id=session_id,
                client_addr=client_addr,
                text=text_,
                detail=json.dumps(detail),
                rule=verdict_rule,
                rules=json.dumps(verdict_rules),
                reason=reason,
                justification=justification,
                requirements=json.dumps(
                    [{"groups": sorted(r.groups), "quorum": r.quorum} for r in requirements]
                ),
                sponsor_may_approve=config.reviews.sponsor_may_approve,
                created_at=now,
                expires_at=now + lifetime,
            )
            session.add(row)
            session.flush()
            info = review_info(row, [], now)
            self._event(
                session,
                info,
                "requested",
                principal.name,
                now,
                {
                    "kind": kind,
                    "text": text_,
                    "detail": detail,
                    "rule": verdict_rule,
                    "rules": verdict_rules,
                    "justification": justification,
                    "requirements": [r.describe() for r in requirements],
                    "sponsor": principal.sponsor,
                    "expires_at": row.expires_at,
                },
            )
        self._announce(info, "requested")
        return info

    # -- deciding -----------------------------------------------------------------------

    def vote(
        self, review_id: str, voter: Principal, decision: VoteDecision, reason: str = ""
    ) -> ReviewInfo:
        """Record one human's decision; a deny ends the review, enough approvals approve it."""
        config = self._config()
        now = time.time()
        events: list[str] = []
        with self._store.session() as session:
            row = self._locked(session, review_id)
            info = self._load(session, row, now)
            if info.status != "pending":
                raise ReviewError(f"review {review_id} is {info.status}; it takes no more votes")
            check_vote(info.parties, voter, decision)
            if any(v.voter == voter.name for v in info.votes):
                raise ReviewError(f"{voter.name!r} has already voted on review {review_id}")
            session.add(
                ReviewVote(
                    review_id=review_id,
                    voter=voter.name,
                    decision=decision,
                    reason=reason.strip()[:2000],
                    at=now,
                )
            )
            payload = {"decision": decision, "reason": reason.strip()[:2000]}
            if decision == "deny":
                row.status, row.decided_at = "denied", now
                events.append("denied")
            else:
                approvers = [voter] + [
                    p
                    for v in info.votes
                    if v.decision == "approve" and (p := config.principal(v.voter)) is not None
                ]
                if quorum_met(info.parties, approvers):
                    row.status, row.decided_at = "approved", now
                    if row.kind == "grant":
                        row.approved_until = now + float(json.loads(row.detail)["duration"])
                    else:
                        row.approved_until = now + config.reviews.approval_valid
                    events.append("approved")
                else:
                    payload["still_needed"] = "; ".join(missing(info.parties, approvers))
            session.flush()
            info = self._load(session, row, now)
            self._event(session, info, f"vote.{decision}", voter.name, now, payload)
            for event in events:
                self._event(
                    session,
                    info,
                    event,
                    voter.name,
                    now,
                    {"approved_until": row.approved_until, "voters": [v.voter for v in info.votes]},
                )
        for event in events or ["vote"]:
            self._announce(info, event)
        return info

    def cancel(self, review_id: str, by: Principal) -> ReviewInfo:
        now = time.time()
        with self._store.session() as session:
            row = self._locked(session, review_id)
            info = self._load(session, row, now)
            if (why := cancel_refusal(info.parties, row.kind, info.status, by)) is not None:
                status = 403 if by.name not in (row.principal, row.sponsor) else 409
                raise ReviewError(f"review {review_id}: {why}", status)
            row.status, row.decided_at = "cancelled", now
            session.flush()
            info = self._load(session, row, now)
            self._event(session, info, "cancelled", by.name, now, {})
        self._announce(info, "cancelled")
        return info

    def revoke_grant(self, review_id: str, by: Principal, reason: str = "") -> ReviewInfo:
        now = time.time()
        with self._store.session() as session:
            row = self._locked(session, review_id)
            info = self._load(session, row, now)
            if (why := revoke_refusal(info.parties, row.kind, info.status, by)) is not None:
                status = 404 if row.kind != "grant" else 409 if info.status != "approved" else 403
                raise ReviewError(f"{review_id}: {why}", status)
            row.status, row.decided_at = "revoked", now
            session.flush()
            info = self._load(session, row, now)
            self._event(session, info, "revoked", by.name, now, {"reason": reason[:2000]})
        self._announce(info, "revoked")
        return info

    # -- using an approval --------------------------------------------------------------

    def consume(
        self, review_id: str, *, executing: bool = False, principal: str | None = None
    ) -> bool:
        """Use an approved action (or start an approved proposal) exactly once: True for
        the one caller that gets it, on whatever gateway process. With ``principal``,
        only a review that principal requested."""
        now = time.time()
        with self._store.session() as session:
            result = session.execute(
                update(ReviewRow)
                .where(
                    ReviewRow.id == review_id,
                    ReviewRow.principal == principal if principal is not None else true(),
                    ReviewRow.status == "approved",
                    ReviewRow.kind != "grant",
                    ReviewRow.approved_until > now,
                )
                .values(status="executing" if executing else "executed", executed_at=now)
            )
            if not getattr(result, "rowcount", 0):
                return False
            row = session.get(ReviewRow, review_id)
            assert row is not None
            info = review_info(row, [], now)
            self._event(
                session, info, "executing" if executing else "executed", row.principal, now, {}
            )
        if not executing:
            self._announce(info, "executed")
        return True

    def record_result(self, review_id: str, ok: bool, result: dict[str, Any]) -> ReviewInfo:
        """What running an approved proposal did (status executed or failed)."""
        now = time.time()
        with self._store.session() as session:
            row = self._locked(session, review_id)
            row.status = "executed" if ok else "failed"
            row.result = json.dumps(result)
            session.flush()
            info = self._load(session, row, now)
            self._event(session, info, "result", row.principal, now, result)
        self._announce(info, info.status)
        return info

    def record_action_result(self, info: ReviewInfo, result: dict[str, Any]) -> None:
        """The outcome of an approved action that a protocol session ran: an action the
        target refused (or that never ran) turns the review from ``executed`` into
        ``failed``, one whose transaction the target rolled back (postgres/transaction.py)
        into ``rolled_back``, so no surface shows a green "executed" for a statement that
        failed or left nothing behind."""
        now = time.time()
        said = result.get("status")
        becomes = (
            None if said in (None, "ok") else "rolled_back" if said == "rolled_back" else "failed"
        )
        with self._store.session() as session:
            row = self._locked(session, info.id)
            if row.result is None:
                row.result = json.dumps(result)
            changed = False
            if becomes is not None and row.status == "executed":
                row.status, changed = becomes, True
                row.result = json.dumps(result)  # the outcome that decided the status
            session.flush()
            info = self._load(session, row, now)
            self._event(session, info, "result", info.principal, now, result)
        if changed and becomes is not None:
            self._announce(info, becomes)

    def set_preview(self, review_id: str, preview: dict[str, Any]) -> None:
        with self._store.session() as session:
            session.execute(
                update(ReviewRow)
                .where(ReviewRow.id == review_id)
                .values(preview=json.dumps(preview))
            )

    # -- housekeeping -------------------------------------------------------------------

    def expire_due(self) -> int:
        """Mark reviews whose time ran out as expired, with their audit events."""
        now = time.time()
        infos = []
        with self._store.session() as session:
            # Locked: gateway processes sharing a PostgreSQL store all sweep; a row
            # another one expired meanwhile no longer matches once the lock is ours.
            rows = session.scalars(
                select(ReviewRow).where(_time_ran_out(now)).with_for_update()
            ).all()
            for row in rows:
                was = row.status
                row.status = "expired"
                session.flush()
                info = review_info(row, [], now)
                infos.append(info)
                note = "approval unused" if was == "approved" else "no decision in time"
                if row.kind == "grant" and was == "approved":
                    note = "grant ended"
                self._event(session, info, "expired", "wardgate", now, {"note": note})
        for info in infos:
            self._announce(info, "expired")
        return len(infos)

    def unstarted_proposals(self, older_than: float) -> list[ReviewInfo]:
        """Approved proposals nobody started: the process that approved them stopped
        before it could (any process may start one; ``consume`` lets one win)."""
        now = time.time()
        with self._store.session(write=False) as session:
            rows = session.scalars(
                select(ReviewRow).where(
                    ReviewRow.kind == "proposal",
                    ReviewRow.status == "approved",
                    ReviewRow.decided_at < now - older_than,
                    ReviewRow.approved_until > now,
                )
            ).all()
            return [review_info(r, [], now) for r in rows]

    def fail_interrupted(self, older_than: float) -> int:
        """Proposals left ``executing`` by a gateway that stopped mid-run."""
        now = time.time()
        count = 0
        with self._store.session() as session:
            rows = session.scalars(
                select(ReviewRow).where(
                    ReviewRow.status == "executing", ReviewRow.executed_at < now - older_than
                )
            ).all()
            for row in rows:
                result = {
                    "ok": False,
                    "error": "the gateway stopped while running this proposal; whether its "
                    "transaction committed (or, on a Kubernetes cluster, which of its objects "
                    "were applied) is unknown, check the target before resubmitting",
                }
                row.status, row.result = "failed", json.dumps(result)
                session.flush()
                self._event(session, review_info(row, [], now), "result", "wardgate", now, result)
                count += 1
        return count

    # -- internals ----------------------------------------------------------------------

    def _locked(self, session: Session, review_id: str) -> ReviewRow:
        row = session.scalars(
            select(ReviewRow).where(ReviewRow.id == review_id).with_for_update()
        ).one_or_none()
        if row is None:
            raise ReviewError(f"no review {review_id!r}", 404)
        return row

    def _event(
        self,
        session: Session,
        info: ReviewInfo,
        event: str,
        actor: str,
        now: float,
        payload: dict[str, Any],
    ) -> None:
        append_events(
            session,
            [
                NewEvent(
                    ts=now,
                    type=f"review.{event}",
                    # Action reviews belong to the session that asked; the rest stand alone.
                    session_id=info.session_id or info.id,
                    principal=actor,
                    connection=info.connection,
                    payload={"review": info.id, "review_kind": info.kind, **payload},
                )
            ],
        )
        if self._store.dialect == "postgresql":
            # Delivered at commit, to every gateway process listening on this store.
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": info.id},
            )

    def _announce(self, info: ReviewInfo, event: str) -> None:
        note_review(info, event)
        for listener in list(self.listeners):
            try:
                listener(info, event)
            except Exception:  # a listener's failure never undoes a committed decision
                log.exception("review listener failed on %s %s", info.id, event)


def _time_ran_out(now: float) -> ColumnElement[bool]:
    """Reviews still marked pending or approved whose time is over: in SQL, what
    ``effective_status`` says of one row."""
    return or_(
        (ReviewRow.status == "pending") & (ReviewRow.expires_at <= now),
        (ReviewRow.status == "approved") & (ReviewRow.approved_until <= now),
    )


def _human_duration(seconds: float) -> str:
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


events_log = logging.getLogger("wardgate.events")  # what the operator reads (audit/oplog.py)


def note_review(info: ReviewInfo, event: str) -> None:
    """A review or grant filed, voted on, decided, used or ended."""
    fields = {
        "event": f"{'grant' if info.kind == 'grant' else 'review'}.{event}",
        "review": info.id,
        "principal": info.principal,
        "connection": info.connection,
        "rule": info.rule,
        "status": info.status,
    }
    what = "grant" if info.kind == "grant" else "review"
    events_log.info(
        "%s %s %s: %s on %s, rule %s, now %s",
        what,
        info.id,
        event,
        info.principal,
        info.connection,
        info.rule,
        info.status,
        extra={"fields": fields},
    )
