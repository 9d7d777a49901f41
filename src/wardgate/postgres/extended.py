"""The extended query protocol: Parse is judged on its SQL; Bind binds a portal to every
SQL its statement name may hold, with the parameters (rendered, and their exact bytes as
a digest); Execute is judged with each, the strictest verdict winning. Names change in
the session model only when the server confirms (session_model.py). A block poisons the
batch and discards until Sync, as the server in its error state does."""

from __future__ import annotations

from wardgate.actions import Decision, Verdict
from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.params import ambiguous_params, binding_digest, describe_params
from wardgate.postgres.relay_state import BIND, CLOSE, EXECUTE, PARSE, POISON_PARSE, Act, Pending
from wardgate.postgres.review_hold import _NAME_KINDS, ReviewHold, block_error, quoted
from wardgate.postgres.session_model import Portal, Prepared
from wardgate.reviews.messages import approved_verdict, needs_review
from wardgate.reviews.settle import Settled


class ExtendedProtocol(ReviewHold):
    def _on_parse(self, msg: m.Parse, raw: bytes, out: list[bytes]) -> None:
        if msg.param_types and (
            declared := self.services.gate.facts.user_code(self.connection).declared_types(
                msg.param_types
            )
        ):
            # The server coerces each bound value to its declared type: a cast no text
            # shows, which may run a domain's CHECK or an input function that writes.
            verdict = Verdict(
                Decision.BLOCK,
                "wardgate:parameter-type",
                f"a parameter is declared as type {', '.join(declared)}, whose input or "
                "CHECK runs a user function when a value is bound; declare the parameter "
                f"without a type (0) and cast it in the SQL ($1::{declared[0]}), where the "
                "policy judges the cast",
            )
            self._block_extended(msg.sql, (), verdict, out)
            return
        verdict = self._before_execute(self._judge(self._action(msg.sql, ()), params_later=True))
        # A statement needing review is held at Execute, once its parameters are known.
        if not verdict.lets_through and not needs_review(verdict):
            self._block_extended(msg.sql, (), verdict, out)
            return
        rewritten = self._mask_rewrite(msg.sql)
        if isinstance(rewritten, Verdict):
            self._block_extended(msg.sql, (), rewritten, out)
            return
        if rewritten is not None:
            raw = build.parse(msg.name, rewritten, msg.param_types)
        model = self.model
        masked = self._mask_prepared(msg.sql, rewritten)
        prepared = Prepared(msg.sql, msg.param_types, masked)
        change = model.statements.propose(msg.name, prepared, model.batch)
        if self.masking is not None:
            self.masking.parsed(msg.name)
        self._pending.append(Pending(PARSE, changes=[[change]]))
        out.append(raw)

    def _before_execute(self, verdict: Verdict) -> Verdict:
        """``verdict`` of a statement that reaches the server before its Execute (a
        Parse; a Bind plans it). One held for a review that runs user code is refused:
        parse analysis converts a literal cast to a row or array type (its input, a
        domain's CHECK) and planning at Bind runs the IMMUTABLE and STABLE functions of
        constant arguments, before any approval."""
        if not needs_review(verdict) or not self.services.gate.runs_user_code(
            verdict.statements, self.connection
        ):
            return verdict
        return Verdict(
            Decision.BLOCK,
            "wardgate:review-before-parse",
            "this statement needs a review and runs user code, which PostgreSQL may "
            "already run when it is parsed or bound, before an approval "
            f"({verdict.reason}); send it as a simple Query with its values written in "
            "(no parameters), which the gateway holds whole until it is approved",
            verdict.statements,
        )

    def _on_bind(self, msg: m.Bind, raw: bytes, out: list[bytes]) -> None:
        model = self.model
        held = model.statements.candidates(msg.statement, model.batch)
        for p in held:
            if p is not None and p.by_sql:
                # SQL PREPARE (its review, if any, approved preparing it): the Bind plans it.
                verdict = self._before_execute(
                    self._judge(self._action(p.sql, ()), params_later=True)
                )
                if not verdict.lets_through and not needs_review(verdict):
                    self._block_extended(p.sql, (), verdict, out)
                    return
        if len(held) == 1 and held[0] is not None:  # one meaning, the common case
            sqls: tuple[str, ...] = (held[0].sql,)
            types = held[0].param_types
        else:
            # A name this session never prepared (in a Parse or in SQL) is judged as SQL
            # EXECUTE of it: the server refuses it, or it holds something we cannot see.
            sqls = tuple(
                dict.fromkeys(
                    p.sql if p is not None else f"EXECUTE {quoted(msg.statement)}" for p in held
                )
            )
            types = next((p.param_types for p in held if p is not None), ())
        for p in held:
            replanned = self._mask_replanned(p)
            if replanned is not None:
                self._block_extended(sqls[0], (), replanned, out)
                return
        # Only a binary-format parameter can be ambiguous.
        unclear = (
            ambiguous_params(msg.params, msg.param_formats, types)
            if 1 in msg.param_formats
            else None
        )
        if unclear:
            verdict = Verdict(
                Decision.BLOCK,
                "wardgate:ambiguous-parameter",
                "a parameter's bytes read differently for a human and for PostgreSQL ("
                + "; ".join(unclear)
                + "); send a binary bool as 0 or 1, or the value in text format",
            )
            self._block_extended(sqls[0], (), verdict, out)
            return
        encoding = self.client.decoder.encoding
        portal = Portal(
            sqls,
            describe_params(msg.params, msg.param_formats, types, encoding),
            binding_digest(msg.params, msg.param_formats, types),
            outputs=self._bound_outputs(held) if self.masking is not None else None,
        )
        change = model.portals.propose(msg.portal, portal, model.batch)
        if self.masking is not None:
            self.masking.bound(msg.portal, msg.statement, msg.result_formats)
        self._pending.append(Pending(BIND, changes=[[change]]))
        out.append(raw)

    def _on_execute(self, msg: m.Execute, raw: bytes, out: list[bytes]) -> None:
        action, verdict = self._judge_portal(msg.portal)
        if needs_review(verdict):
            self._hold_for_review(action, verdict, out, self._after_execute_review, msg, raw)
            return
        if not verdict.lets_through:
            self._block_extended(action.text, action.params, verdict, out)
            return
        self._note_encoding(verdict.statements)
        acts = [self._act(action, verdict)]
        self._forwarding(acts)
        self._pending.append(self._execute(acts, msg.portal))
        out.append(raw)

    def _execute(self, acts: list[Act], portal: str) -> Pending:
        """What an Execute of ``portal`` expects back; with masking, the result columns
        the text it runs has the database mask (read now: the portal's meaning when
        the server runs this Execute)."""
        # SQL PREPARE, DEALLOCATE, DECLARE and CLOSE run through a portal change the
        # session's names as in a Query (``close c`` then ``declare c cursor for ...``
        # would otherwise leave the model holding the portal bound before, and its
        # masked result columns): proposed now, confirmed by the CommandComplete.
        changes = [
            c
            for a in acts
            for i in a.verdict.statements
            if not _NAME_KINDS.isdisjoint(i.kinds)  # `_propose`'s own test, without the call
            for c in self._propose(a.action.text, i)
        ]
        # The batch: an Execute of COMMIT settles that batch's DDL mark, no later one's.
        pending = Pending(
            EXECUTE, acts, target=("P", portal), changes=[changes], batch=self.model.batch
        )
        if self.masking is not None:
            pending.outputs = self._portal_outputs(portal)
            pending.version = self.masking.version("P", portal)
        return pending

    def _on_close(self, msg: m.Close, raw: bytes, out: list[bytes]) -> None:
        model = self.model
        names = model.statements if msg.target == "S" else model.portals
        change = names.propose(msg.name, None, model.batch)
        self._pending.append(Pending(CLOSE, changes=[[change]]))
        out.append(raw)

    def _block_extended(
        self, sql: str, params: tuple[str | None, ...], verdict: Verdict, out: list[bytes]
    ) -> None:
        act = self._act(self._action(sql, params), verdict)
        self._record(act, "blocked")
        self._pending.append(Pending(PARSE, None, block_error(verdict, self.connection)))
        out.append(POISON_PARSE)
        self._discarding = True

    def _after_execute_review(
        self, msg: m.Execute, raw: bytes, result: Settled, out: list[bytes]
    ) -> None:
        action, now = self._judge_portal(msg.portal)  # the policy of this moment applies
        if result.runs and result.review is not None:
            if now.decision is Decision.BLOCK and now.enforced:
                self._block_extended(action.text, action.params, now, out)
                return
            act = self._act(
                action, approved_verdict(now, result.review) if needs_review(now) else now
            )
            act.review = result.review
            self._note_encoding(now.statements)
            self._forwarding([act])
            self._pending.append(self._execute([act], msg.portal))
            out.append(raw)
            return
        self._pending.append(Pending(PARSE, None, self._refused(action, result)))
        out.append(POISON_PARSE)
        self._discarding = True
