"""The simple query protocol: a Query string is split into its statements and each is
judged; if any part is blocked none of it runs. SQL PREPARE, EXECUTE, DEALLOCATE, DECLARE
and CLOSE propose changes to the session's names, confirmed by each statement's
CommandComplete; SQL EXECUTE is judged by every SQL its name may hold. The legacy
FunctionCall is blocked like a Query."""

from __future__ import annotations

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.policy.sql import (
    PREPARED_STATEMENT_KINDS,
    classify,
    cursor_changes,
    executed_statement,
    fetched_cursor,
    prepared_statement_changes,
)
from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.relay_state import (
    POISON_QUERY,
    QUERY,
    Act,
    Pending,
    may_change_session,
)
from wardgate.postgres.review_hold import _NAME_KINDS, ReviewHold, block_error
from wardgate.postgres.session_model import Prepared
from wardgate.reviews.messages import approved_verdict, merged_review, needs_review
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.settle import Settled


class SimpleQuery(ReviewHold):
    def _on_query(
        self, msg: m.Query, raw: bytes, out: list[bytes], approval: ReviewInfo | None = None
    ) -> None:
        statements = classify(msg.sql)
        masked = self.masking is not None  # the masking steps below cost nothing without
        if masked:
            self._mask_note(msg.sql)
        texts = [s.text for s in statements] if len(statements) > 1 else [msg.sql]
        # Names this string itself defines, statement by statement: a later statement of
        # the string only runs if the earlier ones succeeded.
        defined: dict[str, Prepared | None] = {}
        declared: set[str] = set()  # cursors this string DECLAREs before a FETCH
        judged: list[tuple[Action, Verdict]] = []
        try:
            self._judge_all(texts, statements, judged, defined, declared)
        finally:
            self._ddl_in_string = False
        if len(judged) > 1 and any(needs_review(v) for _, v in judged):
            judged = _refuse_stale_context(judged, self._called_as_fields())
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
        model = self.model
        if blocked is not None:
            # Nothing of a multi-statement string runs if any part of it is blocked.
            for act in acts:
                self._record(act, "blocked" if act is blocked else "not_executed")
            self._pending.append(
                Pending(QUERY, [], block_error(blocked.verdict, self.connection), batch=model.batch)
            )
            out.append(POISON_QUERY)
            self._next_batch()
            return
        rewritten = self._mask_rewrite(msg.sql) if masked else None
        if isinstance(rewritten, Verdict):
            for act in acts:
                act.verdict = rewritten
                self._record(act, "blocked")
            self._pending.append(
                Pending(QUERY, [], block_error(rewritten, self.connection), batch=model.batch)
            )
            out.append(POISON_QUERY)
            self._next_batch()
            return
        if rewritten is not None:
            raw = build.query(rewritten)
        changes = [
            [] if _NAME_KINDS.isdisjoint(info.kinds) else self._propose(text, info)
            for text, info in zip(texts, statements, strict=False)
        ]
        for _, verdict in judged:
            self._note_encoding(verdict.statements)
        self._forwarding(acts)
        pending = Pending(QUERY, acts, changes=changes, batch=model.batch)
        if rewritten is not None:
            pending.outputs = self._database_masks(rewritten.decode(self.client.decoder.encoding))
        self._pending.append(pending)
        out.append(raw)
        self._next_batch()

    def _judge_all(
        self,
        texts: list[str],
        statements: tuple[StatementInfo, ...],
        judged: list[tuple[Action, Verdict]],
        defined: dict[str, Prepared | None],
        declared: set[str],
    ) -> None:
        """Judge the statements of one Query string in order, each knowing the names the
        ones before it define; those after DDL as on a catalogue the gate has not read
        (PostgreSQL analyses each once the ones before it have run)."""
        for i, text in enumerate(texts):
            kinds = statements[i].kinds if i < len(statements) else ()
            judged.append(self._judge_statement(text, kinds, defined, declared))
            if i < len(statements) and self.services.gate.changes_catalogue(
                statements[i : i + 1], self.connection
            ):
                self._ddl_in_string = True
            for cursor, holdable in () if _NAME_KINDS.isdisjoint(kinds) else cursor_changes(text):
                if cursor is None:
                    declared.clear()
                elif holdable is None:
                    declared.discard(cursor)
                else:
                    declared.add(cursor)
            if not PREPARED_STATEMENT_KINDS.isdisjoint(kinds):
                for name, prepared in prepared_statement_changes(text):
                    if name is None:
                        defined.clear()
                        defined["\x00all"] = None  # every other name is gone too
                    else:
                        defined[name] = None if prepared is None else Prepared(prepared)

    def _judge_statement(
        self,
        text: str,
        kinds: tuple[str, ...],
        defined: dict[str, Prepared | None],
        declared: set[str],
    ) -> tuple[Action, Verdict]:
        action = self._action(text, ())
        if "fetch" in kinds:
            return self._judge_fetch(action, declared)
        if "execute" not in kinds:
            return action, self._judge(action)
        # SQL EXECUTE name: judged by every SQL the name may hold when it runs.
        name = executed_statement(text)
        if name is None:
            return action, self._judge(action)
        if name in defined or "\x00all" in defined:
            held: list[Prepared | None] = [defined.get(name)]
        else:
            held = self.model.statements.candidates(name, self.model.batch)
        return self._judge_execute(action, name, held)

    def _judge_fetch(self, action: Action, declared: set[str]) -> tuple[Action, Verdict]:
        """SQL FETCH or MOVE runs a portal: one bound through the protocol (Bind) runs
        its statement there and then (`_judge_fetch_of`). A cursor this very string
        DECLAREs was judged when declared."""
        name = fetched_cursor(action.text)
        if name is None or name in declared:
            return action, self._judge(action)
        return self._judge_fetch_of(action, self._judge(action), None, 0)

    def _after_query_review(
        self, msg: m.Query, raw: bytes, result: Settled, out: list[bytes]
    ) -> None:
        if result.runs:
            self._on_query(msg, raw, out, approval=result.review)
            return
        self._pending.append(
            Pending(
                QUERY,
                [],
                self._refused(self._action(msg.sql, ()), result),
                batch=self.model.batch,
            )
        )
        out.append(POISON_QUERY)
        self._next_batch()

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
        self._pending.append(
            Pending(QUERY, [], block_error(verdict, self.connection), batch=self.model.batch)
        )
        out.append(POISON_QUERY)
        self._next_batch()


def _refuse_stale_context(
    judged: list[tuple[Action, Verdict]], called: frozenset[str]
) -> list[tuple[Action, Verdict]]:
    """A review binds the session's state read just before the string is sent
    (postgres/probe.py): search_path, role, DateStyle... A statement earlier in the same
    string that may change it (SET, RESET, DISCARD, a transaction end undoing SETs, a
    routine) would make the server run the held statement in a state the reviewer never
    saw, and the approval match a session that reads it otherwise. Refused."""
    out: list[tuple[Action, Verdict]] = []
    changed = False
    for action, verdict in judged:
        if changed and needs_review(verdict):
            verdict = Verdict(
                Decision.BLOCK,
                "wardgate:review-context",
                "a statement that needs a review follows, in the same query string, a "
                "statement that may change the session's settings (search_path, role, "
                "DateStyle...): the review would show the settings before it; send that "
                "statement on its own first, then this one",
                verdict.statements,
            )
        out.append((action, verdict))
        changed = changed or any(may_change_session(i, called) for i in verdict.statements)
    return out
