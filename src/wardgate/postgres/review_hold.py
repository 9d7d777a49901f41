"""Holding a statement for a review: the client's stream waits (its reading paused)
while the review service files or finds the review and waits for a human; then the
statement runs once under the approval, or is refused with an ErrorResponse."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.policy.sql import (
    PREPARED_STATEMENT_KINDS,
    classify,
    cursor_changes,
    execute_arguments,
    executed_statement,
    fetched_cursor,
    prepared_statement_changes,
    syntax_error,
)
from wardgate.postgres.codec import build
from wardgate.postgres.probe import ContextUnknown, SessionProbe
from wardgate.postgres.relay_state import SessionLimit
from wardgate.postgres.session_model import Change, NamesFull, Portal, Prepared
from wardgate.reviews.messages import OutcomeText, needs_review
from wardgate.reviews.settle import Settled, blocked, settle

log = logging.getLogger("wardgate.postgres")

# SQLSTATEs of a statement that did not run. A block or a denial is a refusal: 42501.
# "Not yet" (pending, expired, cancelled reviews) is 55000, object_not_in_prerequisite_state:
# not a privilege error, and not one that drivers retry on their own (unlike 40001).
# A client's cancel of a statement waiting for a review is 57014, as for any cancel.
SQLSTATE_PENDING = "55000"
# unrecorded: 58000 system_error, "an error external to PostgreSQL itself" (the audit store).
_SQLSTATES = {
    "aborted": "25P02",  # in_failed_sql_transaction, as the server answers there
    "blocked": "42501",
    "denied": "42501",
    "interrupted": "57014",
    "unrecorded": "58000",
}


def quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def refusal_error(settled: Settled) -> bytes:
    """The ErrorResponse for a statement that does not run."""
    assert settled.refusal is not None
    sqlstate = _SQLSTATES.get(settled.status, SQLSTATE_PENDING)
    return build.error_response(sqlstate, settled.refusal.message, hint=settled.refusal.hint)


def block_error(verdict: Verdict, connection: str) -> bytes:
    if verdict.rule == "unparsed-statement" and verdict.decision is Decision.BLOCK:
        # Text PostgreSQL's grammar refuses: answer as the server would (42601 and its
        # message), so drivers raise their syntax-error class, not a privilege error.
        for stmt in verdict.statements:
            if (found := syntax_error(stmt)) is not None:
                message, position = found
                return build.error_response("42601", message, position=position)
    return refusal_error(blocked(verdict, connection))


# How many portals a FETCH of a portal whose statement is a FETCH of another (Bind c1 to
# "FETCH c2") is followed; a deeper chain is refused.
_PORTAL_CHAIN = 4

# Statement kinds that change the session's names (prepared statements, cursors).
_NAME_KINDS = PREPARED_STATEMENT_KINDS | {"declare_cursor", "close_cursor"}


class ReviewHold(SessionProbe):
    # relay.py: judge and forward what the client sent while the statement was held.
    _pump: Callable[[], None]

    def _hold_for_review(
        self,
        action: Action,
        verdict: Verdict,
        out: list[bytes],
        then: Callable[[Any, bytes, Settled, list[bytes]], None],
        msg: Any,
        raw: bytes,
    ) -> None:
        """Hold the client's stream while ``action`` waits for a human; ``then`` gets
        what became of it."""
        if self._batch_failed:
            self._skipped_while_held(action, verdict)
            return
        reviews = self.services.reviews
        if reviews is None:
            then(msg, raw, blocked(verdict, self.connection), out)
            return
        self._reviewing = True
        self.client.pause_reading("review")

        async def wait_then_resume() -> None:
            result: Settled | None = None
            try:
                # Bind what the server will read the statement with (search_path, role).
                # Waits for every answer before it: an earlier message may fail now.
                held = dataclasses.replace(action, context=await self._session_context())
                if self._batch_failed:
                    pass  # the server skips it: `_skipped_while_held`
                elif (
                    self.model.transaction == "E"
                    and not (self._batch_open and self._batch_ran)  # no ROLLBACK ran since
                    and not _exits_transaction(action.text)
                ):
                    result = _in_failed_transaction(verdict)
                else:
                    result = await settle(
                        reviews,
                        held,
                        verdict,
                        wait=self.review_wait,
                        base_url=self.services.config.review_url,
                    )
            except asyncio.CancelledError:
                if not self._review_cancelled:
                    raise  # the gateway is stopping
                reason = (
                    "the client cancelled the statement while it waited for a review; "
                    "the review stays open, run the statement again after approval"
                )
                result = _not_run(
                    verdict,
                    "cancelled",
                    reason,
                    OutcomeText(
                        "canceling statement due to user request "
                        "(wardgate: it was waiting for a review)",
                        reason,
                    ),
                    "interrupted",
                )
            except ContextUnknown as exc:
                result = blocked(
                    dataclasses.replace(
                        verdict,
                        decision=Decision.BLOCK,
                        reason=f"{verdict.reason}; the gateway could not read the session's "
                        f"search_path and role to bind them to a review ({exc.reason}); retry",
                    ),
                    self.connection,
                )
            except Exception as exc:  # noqa: BLE001 - fail closed, say why
                log.warning("session %s: review could not be filed: %s", self.session_id, exc)
                result = blocked(
                    dataclasses.replace(
                        verdict,
                        decision=Decision.BLOCK,
                        reason=f"{verdict.reason}; the review could not be filed ({exc})",
                    ),
                    self.connection,
                )
            self._review_task = None
            if self._finished:
                return
            out: list[bytes] = []
            sent, since = len(self._pending), time.monotonic_ns()
            self._reviewing = self._review_cancelled = False
            try:
                if result is None:
                    self._skipped_while_held(action, verdict)
                else:
                    then(msg, raw, result, out)
            except (NamesFull, SessionLimit) as exc:
                self._over_limit(exc)
                return
            self._send_judged(out, sent, since)
            self.client.resume_reading("review")
            if self._hold_for is None:
                self._pump()

        self._review_task = self.services.tasks.spawn(
            wait_then_resume(), name=f"review-wait-{self.session_id}"
        )

    def _skipped_while_held(self, action: Action, verdict: Verdict) -> None:
        """A statement that needs a review, in an extended batch the server already
        answered with an error: PostgreSQL skips every message up to the Sync, so it
        would never run. No review is filed (a human would be asked about nothing, and
        an approval already given is not used up), nothing is sent, the client is not
        held: it is recorded as not executed, and the client's answer is the Sync's
        ReadyForQuery, as without the gateway."""
        self._record(
            self._act(action, verdict),
            "not_executed",
            error="not executed: an earlier message of its batch failed, and PostgreSQL "
            "skips every message up to the Sync; no review was filed",
        )

    def cancel(self) -> bool:
        """A CancelRequest for this session: stop waiting for a review (the server is
        running nothing of it). False when no statement is held here."""
        if self._review_task is None or self._review_cancelled:
            return False
        self._review_cancelled = True
        self._review_task.cancel()
        return True

    def _refused(self, action: Action, result: Settled) -> bytes:
        """Record a held statement that does not run; its ErrorResponse."""
        assert result.refusal is not None
        self._record(self._act(action, result.verdict), "blocked", error=result.refusal.message)
        return refusal_error(result)

    def _portal_actions(self, name: str) -> list[Action]:
        """One action for every SQL the portal ``name`` may run when the server gets to it."""
        held = self.model.portals.candidates(name, self.model.batch)
        if len(held) == 1 and held[0] is not None and len(held[0].sqls) == 1:
            one = held[0]  # one meaning: the common case, without the merging below
            return [self._action(one.sqls[0], one.params, one.binding)]
        actions: dict[tuple[str, str], Action] = {}
        for portal in held:
            if portal is None:
                # Not bound in this session: a cursor made by SQL DECLARE (judged then), or
                # nothing. Judged as what running it is, a FETCH from that cursor.
                fetch = _fetch_all(name)
                actions.setdefault((fetch, ""), self._action(fetch, ()))
                continue
            for sql in portal.sqls:
                key = (sql, portal.binding)
                actions.setdefault(key, self._action(sql, portal.params, portal.binding))
        return list(actions.values())

    def _judge_execute(
        self, action: Action, name: str, held: list[Prepared | None]
    ) -> tuple[Action, Verdict]:
        """SQL ``EXECUTE name(args)``, alone or under ``EXPLAIN ANALYZE``, in a Query or
        through Parse/Bind/Execute: judged by every SQL ``name`` may hold (``held``) and
        by its arguments, which the server evaluates. The action carries what the name
        holds (``resolved``), so an approval binds it: the same text after the name was
        prepared again is another action."""
        text = action.text
        for p in held:
            replanned = self._mask_replanned(p)
            if replanned is not None:
                return action, replanned
        judged = [
            (resolved, self._judge(resolved))
            for resolved in (
                action if p is None else dataclasses.replace(action, resolved=p.sql)
                for p in dict.fromkeys(held)
            )
        ]
        meanings = len(judged)
        arguments = execute_arguments(text)
        if arguments is not None:
            # The arguments run too; their verdict is paired with what the name holds,
            # so an approval binds the whole EXECUTE (its text carries the arguments).
            judged.append((judged[0][0], self._judge(self._action(arguments, ()))))
        resolved, verdict = max(judged, key=lambda av: av[1].decision.severity)
        if None in held and needs_review(verdict):
            # Prepared where the gateway could not see it (or not at all): a review
            # could neither show nor bind what the server would run under this name.
            return resolved, Verdict(
                Decision.BLOCK,
                "wardgate:unknown-statement",
                f"prepared statement {name!r} was not prepared through the gateway in this "
                f"session, so a review could not show or bind what it runs ({verdict.reason}); "
                "prepare it in this session (PREPARE or Parse) and execute it again",
                verdict.statements,
            )
        if meanings > 1 and not verdict.allowed and verdict.enforced:
            verdict = Verdict(
                Decision.BLOCK,
                "wardgate:unconfirmed-name",
                f"prepared statement {name!r} was redefined by a statement the server has not "
                f"answered yet, and one of its possible meanings is not allowed "
                f"({verdict.reason}); wait for the result before executing it",
                verdict.statements,
            )
        return resolved, verdict

    def _judge_sql(
        self, action: Action, running: str | None = None, depth: int = 0
    ) -> tuple[Action, Verdict]:
        """One statement a portal (``running``; None: a Query's) runs; SQL EXECUTE and
        SQL FETCH or MOVE (sent through Parse) are judged by what their name holds, as
        in a Query. ``depth``: how many portals a chain of FETCHes followed to get here."""
        verdict = self._judge(action)
        for info in verdict.statements:  # a loop, not any(): once per Execute
            if "execute" in info.kinds:
                break
            if "fetch" in info.kinds:
                return self._judge_fetch_of(action, verdict, running, depth)
        else:
            return action, verdict
        name = executed_statement(action.text)
        if name is None:
            return action, verdict
        return self._judge_execute(
            action, name, self.model.statements.candidates(name, self.model.batch)
        )

    def _judge_fetch_of(
        self, action: Action, verdict: Verdict, running: str | None, depth: int
    ) -> tuple[Action, Verdict]:
        """SQL FETCH or MOVE (``verdict``: judged as written) runs the portal it names:
        one bound through the protocol (Bind) runs its statement there and then, e.g.
        an UPDATE ... RETURNING whose review waits for Execute, so it is judged by every
        SQL that portal may hold, through a chain of portals that FETCH from one another
        (Bind c1 to "FETCH c2"). A cursor made by SQL DECLARE was judged when declared
        (its portal holds a FETCH from itself, as does no portal at all), and a FETCH of
        the portal it runs in is refused by PostgreSQL: both are what they say."""
        name = fetched_cursor(action.text)
        if name is None or name == running:
            return action, verdict
        if depth >= _PORTAL_CHAIN:
            return action, Verdict(
                Decision.BLOCK,
                "wardgate:portal-chain",
                f"this FETCH runs portal {name!r}, which runs a FETCH of another portal, "
                f"more than {_PORTAL_CHAIN} portals deep; the gateway does not follow such a "
                "chain further, so it cannot tell what would run: FETCH from the portal "
                "that holds the query itself",
                verdict.statements,
            )
        resolved, held = self._judge_portal(name, depth + 1)
        if resolved.resolved is None and resolved.text == _fetch_all(name):
            # A DECLAREd cursor, or no such portal: the FETCH as written (or the
            # portal's verdict, were it stricter: a name not yet confirmed).
            return action, max((verdict, held), key=lambda v: v.decision.severity)
        return (
            dataclasses.replace(
                action,
                resolved=resolved.judged_text,
                params=resolved.params,
                binding=resolved.binding,
            ),
            held,
        )

    def _judge_portal(self, name: str, depth: int = 0) -> tuple[Action, Verdict]:
        """The strictest verdict over every meaning the portal may have; with more than
        one meaning, nothing can be approved (an approval binds one action)."""
        actions = self._portal_actions(name)
        if len(actions) == 1:
            return self._judge_sql(actions[0], name, depth)
        judged = [self._judge_sql(a, name, depth) for a in actions]
        action, verdict = max(judged, key=lambda av: av[1].decision.severity)
        if len(judged) > 1 and not verdict.allowed and verdict.enforced:
            verdict = Verdict(
                Decision.BLOCK,
                "wardgate:unconfirmed-name",
                f"portal {name!r} (or the statement it was bound to) was redefined in a batch "
                "the server has not answered yet, and one of its possible meanings is not "
                f"allowed ({verdict.reason}); send Sync and wait for the result before using it",
                verdict.statements,
            )
        return action, verdict

    def _propose(self, text: str, info: StatementInfo) -> list[Change[Any]]:
        """The name changes one statement of a forwarded Query makes, proposed now and
        confirmed by its CommandComplete."""
        if _NAME_KINDS.isdisjoint(info.kinds):
            return []
        model = self.model
        masking = self.masking
        out: list[Change[Any]] = []
        for name, prepared in prepared_statement_changes(text):
            value = None if prepared is None else self._prepared(prepared)
            out.append(model.statements.propose(name, value, model.batch))
            if masking is not None:
                masking.renamed("S", name)
        for cursor, holdable in cursor_changes(text):
            if masking is not None:
                masking.renamed("P", cursor)
            portal = None
            if cursor is not None and holdable is not None:
                # Running it through the protocol (Execute) is a FETCH from the cursor;
                # the DECLARE itself was judged.
                portal = Portal((_fetch_all(cursor),), holdable=holdable)
            out.append(model.portals.propose(cursor, portal, model.batch))
        return out

    def _prepared(self, sql: str) -> Prepared:
        """A statement SQL PREPARE makes: for a masked principal, with the rewrite of
        ``sql`` under the session's search_paths now (as the server prepared it)."""
        rewritten = self._mask_rewrite(sql)
        if isinstance(rewritten, Verdict):
            return Prepared(sql, masked="", by_sql=True)  # never the rewrite: EXECUTE refused
        return Prepared(sql, masked=self._mask_prepared(sql, rewritten), by_sql=True)


def _fetch_all(portal: str) -> str:
    """What running the portal of a cursor made by SQL DECLARE is judged as (the
    DECLARE was judged), and a portal this session never bound."""
    return f"FETCH FORWARD ALL FROM {quoted(portal)}"


def _exits_transaction(text: str) -> bool:
    """The statement PostgreSQL reads first in ``text`` is one it accepts in a failed
    transaction (COMMIT, ROLLBACK, ROLLBACK TO SAVEPOINT, PREPARE TRANSACTION: its
    IsTransactionExitStmt); every other statement is refused there, and with it the
    rest of a query string."""
    statements = classify(text)
    return bool(statements) and "transaction_end" in statements[0].kinds


def _in_failed_transaction(verdict: Verdict) -> Settled:
    """A statement that needs a review, sent while the session's transaction has failed
    (the server's last ReadyForQuery said so, and nothing is in flight): the server would
    refuse it whatever a human decided, so no review is filed (no one is asked about it,
    no approval is used up) and it is answered as the server would, 25P02."""
    reason = (
        "it needs a review, but the session's transaction has already failed, where "
        "PostgreSQL refuses every statement until ROLLBACK; no review was filed"
    )
    return _not_run(
        verdict,
        "wardgate:failed-transaction",
        reason,
        OutcomeText(
            "current transaction is aborted, commands ignored until end of transaction "
            f"block (wardgate: {reason})",
            "ROLLBACK (or ROLLBACK TO SAVEPOINT), then send the statement again",
        ),
        "aborted",
    )


def _not_run(verdict: Verdict, rule: str, reason: str, text: OutcomeText, status: str) -> Settled:
    """A held statement that does not run, by ``rule``, and what the client is told."""
    return Settled(
        dataclasses.replace(
            verdict, decision=Decision.BLOCK, rule=rule, rules=(rule,), reason=reason
        ),
        refusal=text,
        status=status,
    )
