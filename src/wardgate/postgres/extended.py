"""The extended query protocol: Parse is judged on its SQL; Bind remembers portal ->
(statement SQL, parameters rendered for the record); Execute is judged again with them;
Close updates the name maps. A block poisons the batch and discards until Sync, as the
server in its error state does."""

from __future__ import annotations

from wardgate.actions import Decision, Verdict
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.params import describe_params
from wardgate.postgres.relay_state import BIND, CLOSE, EXECUTE, PARSE, POISON_PARSE, Pending
from wardgate.postgres.review_hold import ReviewHold, block_error
from wardgate.reviews.messages import approved_verdict, needs_review
from wardgate.reviews.settle import Settled


class ExtendedProtocol(ReviewHold):
    def _on_parse(self, msg: m.Parse, raw: bytes, out: list[bytes]) -> None:
        verdict = self._judge(self._action(msg.sql, ()), params_later=True)
        # A statement needing review is held at Execute, once its parameters are known.
        if not verdict.lets_through and not needs_review(verdict):
            self._block_extended(msg.sql, (), verdict, out)
            return
        self._statements[msg.name] = (msg.sql, msg.param_types)
        if self.masking is not None:
            self.masking.parsed(msg.name)
        self._pending.append(Pending(PARSE))
        out.append(raw)

    def _on_bind(self, msg: m.Bind, raw: bytes, out: list[bytes]) -> None:
        sql, types = self._statements.get(msg.statement, (None, ()))
        if sql is None:
            # A name this session never prepared (in a Parse or in SQL): the server
            # will refuse it, or it holds something we cannot see; judged as EXECUTE.
            sql = 'EXECUTE "' + msg.statement.replace('"', '""') + '"'
        self._portals[msg.portal] = (sql, describe_params(msg.params, msg.param_formats, types))
        if self.masking is not None:
            self.masking.bound(msg.portal, msg.statement, msg.result_formats)
        self._pending.append(Pending(BIND))
        out.append(raw)

    def _on_execute(self, msg: m.Execute, raw: bytes, out: list[bytes]) -> None:
        sql, params = self._portals.get(msg.portal, (None, ()))
        if sql is None:
            # Not bound in this session: a cursor made by SQL DECLARE (judged then), or
            # nothing. Judged as what running it is, a FETCH from that cursor.
            sql = 'FETCH FORWARD ALL FROM "' + msg.portal.replace('"', '""') + '"'
        action = self._action(sql, params)
        verdict = self._judge(action)
        if needs_review(verdict):
            self._hold_for_review(action, verdict, out, self._after_execute_review, msg, raw)
            return
        if not verdict.lets_through:
            self._block_extended(sql, params, verdict, out)
            return
        self._pending.append(
            Pending(EXECUTE, [self._act(action, verdict)], target=("P", msg.portal))
        )
        out.append(raw)

    def _on_close(self, msg: m.Close, raw: bytes, out: list[bytes]) -> None:
        if msg.target == "S":
            self._statements.pop(msg.name, None)
        else:
            self._portals.pop(msg.name, None)
        self._pending.append(Pending(CLOSE))
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
        sql, params = self._portals.get(msg.portal, (None, ()))
        if sql is None:
            sql = 'FETCH FORWARD ALL FROM "' + msg.portal.replace('"', '""') + '"'
        action = self._action(sql, params)
        if result.runs and result.review is not None:
            now = self._judge(action)  # the policy of this moment still applies
            if now.decision is Decision.BLOCK and now.enforced:
                self._block_extended(sql, params, now, out)
                return
            act = self._act(
                action, approved_verdict(now, result.review) if needs_review(now) else now
            )
            act.review = result.review
            self._pending.append(Pending(EXECUTE, [act], target=("P", msg.portal)))
            out.append(raw)
            return
        self._pending.append(Pending(PARSE, None, self._refused(action, result)))
        out.append(POISON_PARSE)
        self._discarding = True
