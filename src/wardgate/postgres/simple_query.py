"""The simple query protocol: a Query string is split into its statements and each is
judged; if any part is blocked none of it runs. SQL PREPARE, EXECUTE and DEALLOCATE keep
the session's statement names true; the legacy FunctionCall is blocked like a Query."""

from __future__ import annotations

import dataclasses

from wardgate.actions import Action, Decision, Verdict
from wardgate.policy.sql import (
    PREPARED_STATEMENT_KINDS,
    classify,
    executed_statement,
    prepared_statement_changes,
)
from wardgate.postgres.codec import messages as m
from wardgate.postgres.relay_state import POISON_QUERY, QUERY, Act, Pending
from wardgate.postgres.review_hold import ReviewHold, block_error
from wardgate.reviews.messages import approved_verdict, merged_review, needs_review
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.settle import Settled


class SimpleQuery(ReviewHold):
    def _on_query(
        self, msg: m.Query, raw: bytes, out: list[bytes], approval: ReviewInfo | None = None
    ) -> None:
        statements = classify(msg.sql)
        texts = [s.text for s in statements] if len(statements) > 1 else [msg.sql]
        judged: list[tuple[Action, Verdict]] = []
        for i, text in enumerate(texts):
            action = self._action(text, ())
            if i < len(statements) and "execute" in statements[i].kinds:
                action = self._resolve_execute(action)
            judged.append((action, self._judge(action)))
        held = [v for _, v in judged if needs_review(v)]
        if held and not any(v.decision is Decision.BLOCK and v.enforced for _, v in judged):
            if approval is None:
                # The whole query string is what a human approves, and what runs once.
                whole = self._action(msg.sql, ())
                if len(judged) == 1:
                    whole = judged[0][0]
                self._hold_for_review(
                    whole, merged_review(held), out, self._after_query_review, msg, raw
                )
                return
            judged = [
                (a, approved_verdict(v, approval) if needs_review(v) else v) for a, v in judged
            ]
        acts: list[Act] = []
        blocked: Act | None = None
        for action, verdict in judged:
            act = self._act(action, verdict)
            if approval is not None and verdict.rule == f"review:{approval.id}":
                act.review = approval
            acts.append(act)
            if blocked is None and not verdict.lets_through:
                blocked = act
        if blocked is not None:
            # Nothing of a multi-statement string runs if any part of it is blocked.
            for act in acts:
                self._record(act, "blocked" if act is blocked else "not_executed")
            self._pending.append(Pending(QUERY, [], block_error(blocked.verdict, self.connection)))
            out.append(POISON_QUERY)
            return
        self._pending.append(Pending(QUERY, acts))
        out.append(raw)
        if any(PREPARED_STATEMENT_KINDS.intersection(s.kinds) for s in statements):
            self._track_sql_prepared(msg.sql)

    def _resolve_execute(self, action: Action) -> Action:
        """SQL ``EXECUTE name``: judged by what this session prepared under that name."""
        name = executed_statement(action.text)
        prepared = self._statements.get(name) if name is not None else None
        if prepared is None:
            return action  # unknown here: judged as EXECUTE itself, a write
        return dataclasses.replace(action, resolved=prepared[0])

    def _track_sql_prepared(self, sql: str) -> None:
        # Statements made and dropped in SQL share the names of protocol-level ones; a
        # Bind to such a name is judged (and recorded) by what that name now prepares.
        for name, text in prepared_statement_changes(sql):
            if name is None:
                self._statements.clear()
            elif text is None:
                self._statements.pop(name, None)
            else:
                self._statements[name] = (text, ())

    def _after_query_review(
        self, msg: m.Query, raw: bytes, result: Settled, out: list[bytes]
    ) -> None:
        if result.runs:
            self._on_query(msg, raw, out, approval=result.review)
            return
        self._pending.append(Pending(QUERY, [], self._refused(self._action(msg.sql, ()), result)))
        out.append(POISON_QUERY)

    def _on_function_call(self, msg: m.FunctionCall, out: list[bytes]) -> None:
        verdict = Verdict(
            Decision.BLOCK,
            "function-call-protocol",
            "the legacy fast-path function call message is not allowed; call the function in SQL",
        )
        # A FunctionCall is answered like a simple Query (result, then ReadyForQuery),
        # and no Sync follows it: block it the way a Query is blocked.
        act = self._act(self._action(f"-- fast-path call of function oid {msg.oid}", ()), verdict)
        self._record(act, "blocked")
        self._pending.append(Pending(QUERY, [], block_error(verdict, self.connection)))
        out.append(POISON_QUERY)
