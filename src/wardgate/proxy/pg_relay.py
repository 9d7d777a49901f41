"""The steady state of a PostgreSQL session: gate every statement, relay, record.

Client messages are decoded (they carry the statements to judge); server bytes
are only scanned for message boundaries, and DataRow/CopyData pass through as
slices. Each forwarded request pushes what it expects back onto `_pending`, so
every server reply is matched to the statement it answers, even in pipelines.

A blocked statement is never sent. In its place the server gets a statement
that fails to parse, so it enters exactly the error state PostgreSQL itself
would (an open transaction is aborted, an extended-protocol batch is skipped
to Sync); its error reply is then replaced by wardgate's own ErrorResponse.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.records import ActionRecord, SessionEnd
from wardgate.identity.principals import Principal
from wardgate.policy.sql import (
    PREPARED_STATEMENT_KINDS,
    classify,
    executed_statement,
    prepared_statement_changes,
)
from wardgate.protocols.postgres import build
from wardgate.protocols.postgres import messages as m
from wardgate.protocols.postgres.backend import BULK_TYPES, BackendMessage, BackendScanner
from wardgate.protocols.postgres.decode import (
    Column,
    ErrorFields,
    parse_command_tag,
    parse_error_fields,
    parse_parameter_status,
    parse_row_description,
)
from wardgate.protocols.postgres.encodings import python_codec, reported_setting_problem
from wardgate.protocols.postgres.errors import ProtocolError
from wardgate.protocols.postgres.params import describe_params
from wardgate.proxy.pg_masking import (
    Plan,
    ResultMasking,
    mask_copy_data,
    mask_data_row,
    mask_error_fields,
)
from wardgate.proxy.pg_wire import ClientSide, UpstreamSide
from wardgate.reviews.messages import OutcomeText, approved_verdict, merged_review, needs_review
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.settle import Settled, blocked, settle

if TYPE_CHECKING:
    from collections.abc import Callable

    from wardgate.proxy.services import Services

log = logging.getLogger("wardgate.postgres")

# What a forwarded request expects back.
QUERY, PARSE, BIND, EXECUTE, DESCRIBE, CLOSE, SYNC = range(7)

# Sent upstream instead of a blocked statement: fails in the parser, before
# anything executes, and puts the server in the same error state a real failure would.
_POISON_SQL = "wardgate blocked statement"
_POISON_QUERY = build.query(_POISON_SQL)
_POISON_PARSE = build.parse("", _POISON_SQL)


class _Act:
    """One action in flight: what was asked, what the gate said, when it started."""

    __slots__ = ("action", "verdict", "seq", "started", "t0", "review")

    def __init__(self, action: Action, verdict: Verdict, seq: int) -> None:
        self.action = action
        self.verdict = verdict
        self.seq = seq
        self.review: ReviewInfo | None = None  # the approval it runs under
        self.started = time.time()
        self.t0 = time.perf_counter()


class _Pending:
    __slots__ = (
        "kind", "acts", "index", "block", "held", "commit_error", "target", "plan", "planned",
    )  # fmt: skip

    def __init__(
        self,
        kind: int,
        acts: list[_Act] | None = None,
        block: bytes | None = None,
        target: tuple[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.acts = acts
        self.index = 0
        self.block = block  # our ErrorResponse replacing the server's
        self.target = target  # DESCRIBE: ("S"|"P", name); EXECUTE: ("P", portal)
        self.plan: Plan | None = None  # EXECUTE with masking: what to do with its rows
        self.planned = False
        # SYNC only: records of Executes before it, held until its ReadyForQuery, because
        # the implicit transaction they ran in can still fail (and roll back) at Sync.
        self.held: list[ActionRecord] = []
        self.commit_error: ErrorFields | None = None


# SQLSTATEs of a statement that did not run. A block or a denial is a refusal: 42501.
# "Not yet" (pending, expired, cancelled reviews) is 55000, object_not_in_prerequisite_state:
# not a privilege error, and not one that drivers retry on their own (unlike 40001).
# A client's cancel of a statement waiting for a review is 57014, as for any cancel.
SQLSTATE_PENDING = "55000"
_SQLSTATES = {"blocked": "42501", "denied": "42501", "interrupted": "57014"}


def refusal_error(settled: Settled) -> bytes:
    """The ErrorResponse for a statement that does not run."""
    assert settled.refusal is not None
    sqlstate = _SQLSTATES.get(settled.status, SQLSTATE_PENDING)
    return build.error_response(sqlstate, settled.refusal.message, hint=settled.refusal.hint)


def block_error(verdict: Verdict, connection: str) -> bytes:
    return refusal_error(blocked(verdict, connection))


class PgRelay:
    def __init__(
        self,
        services: Services,
        client: ClientSide,
        upstream: UpstreamSide,
        *,
        session_id: str,
        principal: Principal,
        connection: str,
        client_addr: str,
        on_finished: object = None,
        read_only: bool = False,
        review_wait: float = 0.0,
    ) -> None:
        self.services = services
        self.client = client
        self.upstream = upstream
        self.session_id = session_id
        self.principal = principal
        self.connection = connection
        self.client_addr = client_addr
        self.scanner: BackendScanner = upstream.scanner
        session_masking = services.masking.for_session(principal, connection)
        self.masking = ResultMasking(session_masking) if session_masking is not None else None
        # Rows to mask must arrive whole; unmasked sessions stream them untouched.
        self.scanner.bulk = BULK_TYPES if self.masking is None else frozenset()
        self._held: list[bytes] | None = None  # server data held while names are looked up
        self._pending: deque[_Pending] = deque()
        self._statements: dict[str, tuple[str, tuple[int, ...]]] = {}  # name -> SQL, param types
        self._portals: dict[str, tuple[str | None, tuple[str | None, ...]]] = {}
        self._discarding = False  # after a block in extended mode, until Sync
        self._seq = 0
        self._finished = False
        self._on_finished = on_finished
        self.read_only = read_only  # the upstream session was opened read-only
        self.review_wait = review_wait  # how long a statement waits inline for approval
        self._reviewing = False  # a statement is held for a review: read no further
        self._review_task: asyncio.Task[None] | None = None
        self._review_cancelled = False
        self._transaction = 73  # the last ReadyForQuery's status: I(dle), T or E

    @property
    def idle(self) -> bool:
        """Between transactions with nothing in flight: ending the session now loses no
        work (how a draining gateway picks the sessions it may close at once)."""
        return not self._pending and not self._reviewing and self._transaction == 73

    # -- client -> upstream -------------------------------------------------------------

    def on_client_data(self, data: bytes) -> None:
        try:
            self.client.decoder.feed(data)
        except ProtocolError as exc:
            self._fatal("08P01", f"wardgate: protocol violation: {exc}")
            return
        if not self._reviewing:
            self._pump()

    def _pump(self) -> None:
        """Judge and forward the client's buffered messages until none is left or one
        is held for a review (the rest wait, in order, in the decoder)."""
        decoder = self.client.decoder
        out: list[bytes] = []
        try:
            while not self._reviewing and (item := decoder.next_message()) is not None:
                msg, raw = item
                if self._discarding and not isinstance(msg, m.Sync):
                    continue
                self._on_client_message(msg, raw, out)
        except ProtocolError as exc:
            if out:
                self.upstream.write(b"".join(out))
            self._fatal("08P01", f"wardgate: protocol violation: {exc}")
            return
        if out:
            self.upstream.write(out[0] if len(out) == 1 else b"".join(out))
        if self.services.recorder.congested:
            # Stop reading clients until the audit log catches up: nothing is lost, nothing unbounded.
            self.client.pause_reading("recorder")
            self.services.recorder.on_drained(lambda: self.client.resume_reading("recorder"))

    def _on_client_message(self, msg: m.FrontendMessage, raw: bytes, out: list[bytes]) -> None:
        if isinstance(msg, m.Query):
            self._on_query(msg, raw, out)
        elif isinstance(msg, m.Parse):
            verdict = self._check(msg.sql, ())
            # A statement needing review is held at Execute, once its parameters are known.
            if not verdict.lets_through and not needs_review(verdict):
                self._block_extended(msg.sql, (), verdict, out)
                return
            self._statements[msg.name] = (msg.sql, msg.param_types)
            if self.masking is not None:
                self.masking.parsed(msg.name)
            self._pending.append(_Pending(PARSE))
            out.append(raw)
        elif isinstance(msg, m.Bind):
            sql, types = self._statements.get(msg.statement, (None, ()))
            if sql is None:
                # A name this session never prepared (in a Parse or in SQL): the server
                # will refuse it, or it holds something we cannot see; judged as EXECUTE.
                sql = 'EXECUTE "' + msg.statement.replace('"', '""') + '"'
            self._portals[msg.portal] = (sql, describe_params(msg.params, msg.param_formats, types))
            if self.masking is not None:
                self.masking.bound(msg.portal, msg.statement, msg.result_formats)
            self._pending.append(_Pending(BIND))
            out.append(raw)
        elif isinstance(msg, m.Execute):
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
                _Pending(EXECUTE, [self._act(action, verdict)], target=("P", msg.portal))
            )
            out.append(raw)
        elif isinstance(msg, m.Sync):
            self._discarding = False
            self._pending.append(_Pending(SYNC))
            out.append(raw)
        elif isinstance(msg, m.Describe):
            self._pending.append(_Pending(DESCRIBE, target=(msg.target, msg.name)))
            out.append(raw)
        elif isinstance(msg, m.Close):
            if msg.target == "S":
                self._statements.pop(msg.name, None)
            else:
                self._portals.pop(msg.name, None)
            self._pending.append(_Pending(CLOSE))
            out.append(raw)
        elif isinstance(msg, m.Flush | m.CopyData | m.CopyDone | m.CopyFail):
            out.append(raw)
        elif isinstance(msg, m.Terminate):
            out.append(raw)
            self.upstream.write(b"".join(out))
            out.clear()
            self.finish("closed")
        elif isinstance(msg, m.FunctionCall):
            verdict = Verdict(
                Decision.BLOCK,
                "function-call-protocol",
                "the legacy fast-path function call message is not allowed; call the function in SQL",
            )
            # A FunctionCall is answered like a simple Query (result, then ReadyForQuery),
            # and no Sync follows it: block it the way a Query is blocked.
            act = self._act(
                self._action(f"-- fast-path call of function oid {msg.oid}", ()), verdict
            )
            self._record(act, "blocked")
            self._pending.append(_Pending(QUERY, [], block_error(verdict, self.connection)))
            out.append(_POISON_QUERY)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} message after startup")

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
        acts: list[_Act] = []
        blocked: _Act | None = None
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
            self._pending.append(_Pending(QUERY, [], block_error(blocked.verdict, self.connection)))
            out.append(_POISON_QUERY)
            return
        self._pending.append(_Pending(QUERY, acts))
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

    def _block_extended(
        self, sql: str, params: tuple[str | None, ...], verdict: Verdict, out: list[bytes]
    ) -> None:
        act = self._act(self._action(sql, params), verdict)
        self._record(act, "blocked")
        self._pending.append(_Pending(PARSE, None, block_error(verdict, self.connection)))
        out.append(_POISON_PARSE)
        self._discarding = True

    def _action(self, text: str, params: tuple[str | None, ...]) -> Action:
        return Action(
            principal=self.principal,
            connection=self.connection,
            protocol="postgres",
            kind="sql",
            text=text,
            params=params,
            session_id=self.session_id,
            client_addr=self.client_addr,
        )

    def _check(self, sql: str, params: tuple[str | None, ...]) -> Verdict:
        return self._judge(self._action(sql, params))

    def _judge(self, action: Action) -> Verdict:
        reviews = self.services.reviews
        granted = reviews.granted(self.principal.name, self.connection) if reviews else frozenset()
        return self.services.gate.check(action, granted)

    # -- reviews --------------------------------------------------------------------------

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
        reviews = self.services.reviews
        if reviews is None:
            then(msg, raw, blocked(verdict, self.connection), out)
            return
        self._reviewing = True
        self.client.pause_reading("review")

        async def wait_then_resume() -> None:
            result: Settled
            try:
                result = await settle(
                    reviews,
                    action,
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
                result = Settled(
                    dataclasses.replace(
                        verdict,
                        decision=Decision.BLOCK,
                        rule="cancelled",
                        rules=("cancelled",),
                        reason=reason,
                    ),
                    refusal=OutcomeText(
                        "canceling statement due to user request "
                        "(wardgate: it was waiting for a review)",
                        reason,
                    ),
                    status="interrupted",
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
            self._reviewing = self._review_cancelled = False
            then(msg, raw, result, out)
            if out:
                self.upstream.write(b"".join(out))
            self.client.resume_reading("review")
            self._pump()

        self._review_task = self.services.tasks.spawn(
            wait_then_resume(), name=f"review-wait-{self.session_id}"
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

    def _after_query_review(
        self, msg: m.Query, raw: bytes, result: Settled, out: list[bytes]
    ) -> None:
        if result.runs:
            self._on_query(msg, raw, out, approval=result.review)
            return
        self._pending.append(_Pending(QUERY, [], self._refused(self._action(msg.sql, ()), result)))
        out.append(_POISON_QUERY)

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
            self._pending.append(_Pending(EXECUTE, [act], target=("P", msg.portal)))
            out.append(raw)
            return
        self._pending.append(_Pending(PARSE, None, self._refused(action, result)))
        out.append(_POISON_PARSE)
        self._discarding = True

    def _act(self, action: Action, verdict: Verdict) -> _Act:
        self._seq += 1
        return _Act(action, verdict, self._seq)

    # -- upstream -> client -------------------------------------------------------------

    def on_upstream_data(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)  # still waiting for column names: keep the order
            return
        try:
            items = self.scanner.feed(data)
        except ProtocolError as exc:
            self._upstream_garbage(exc, [])
            return
        self._relay_items(items)

    def _relay_items(self, items: list[BackendMessage | memoryview]) -> None:
        out: list[bytes | memoryview] = []
        try:
            for i, item in enumerate(items):
                if isinstance(item, memoryview):
                    out.append(item)
                    continue
                if self.masking is not None and (oids := self._names_to_fetch(item)):
                    # Column rules need this result's column names: hold the stream.
                    self._hold(items[i:], oids)
                    break
                replacement = self._on_server_message(item)
                out.append(item.raw if replacement is None else replacement)
        except ProtocolError as exc:
            self._upstream_garbage(exc, out)
            return
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else bytes(out[0]))

    def _upstream_garbage(self, exc: ProtocolError, out: list[bytes | memoryview]) -> None:
        log.warning("session %s: upstream protocol error: %s", self.session_id, exc)
        if out:  # what came before the malformed message is still the server's answer
            self.client.write(b"".join(out))
        self._fatal(
            "08P01",
            f"wardgate: the database server of connection {self.connection!r} sent malformed data",
        )

    # -- masking ------------------------------------------------------------------------

    def _names_to_fetch(self, msg: BackendMessage) -> set[int]:
        """Table OIDs whose column names a column rule needs before ``msg`` can go on."""
        assert self.masking is not None
        if not self.masking.masking.columns:
            return set()
        if msg.type == 84:  # T
            columns = parse_row_description(msg.body)
        elif msg.type == 68 and self._pending and self._pending[0].kind == EXECUTE:
            head = self._pending[0]
            if head.planned or head.target is None:
                return set()
            columns = self.masking.portal_columns(head.target[1])
        else:
            return set()
        oids = self.masking.table_oids(columns)
        if not oids or self.services.column_names.known(self.connection, oids) is not None:
            return set()
        return oids

    def _names(self, columns: list[Column]) -> dict[tuple[int, int], str]:
        assert self.masking is not None
        oids = self.masking.table_oids(columns)
        return (self.services.column_names.known(self.connection, oids) or {}) if oids else {}

    def _hold(self, items: list[BackendMessage | memoryview], oids: set[int]) -> None:
        held = [bytes(i) if isinstance(i, memoryview) else i.raw for i in items]
        self._held = []
        self.upstream.pause_reading("catalog")

        async def fetch_then_release() -> None:
            try:
                await self.services.column_names.fetch(self.services, self.connection, oids)
            except Exception as exc:  # noqa: BLE001 - any failure ends the session, closed
                log.warning("session %s: masking column lookup failed: %s", self.session_id, exc)
                self._held = None
                self._fatal(
                    "58000",
                    "wardgate: masking rules need this result's column names and the gateway "
                    "could not look them up; nothing was sent. Retry, or ask an administrator",
                )
                return
            later, self._held = self._held or [], None
            # Re-scan what was held: its items were cut from one chunk, feed them whole.
            self._relay_items(self._rescan(held))
            for data in later:
                self.on_upstream_data(data)
            if not self._finished:
                self.upstream.resume_reading("catalog")

        self.services.tasks.spawn(fetch_then_release(), name="masking-catalog")

    @staticmethod
    def _rescan(raw_items: list[bytes]) -> list[BackendMessage | memoryview]:
        items: list[BackendMessage | memoryview] = []
        for raw in raw_items:
            if len(raw) >= 5 and int.from_bytes(raw[1:5], "big") + 1 == len(raw):
                items.append(BackendMessage(raw[0], raw))
            else:
                items.append(memoryview(raw))  # a slice of a bulk message: passes as is
        return items

    def _mask_server_message(self, msg: BackendMessage, head: _Pending | None) -> bytes | None:
        """Masking of one server message; None to handle it as unmasked."""
        masking = self.masking
        assert masking is not None
        t = msg.type
        encoding = self.client.decoder.encoding
        if t == 68:  # D DataRow
            if head is not None and head.kind == EXECUTE and head.target is not None:
                if not head.planned:
                    columns = masking.portal_columns(head.target[1])
                    head.plan = masking.plan_for_portal(head.target[1], self._names(columns))
                    head.planned = True
                plan = head.plan
            else:
                plan = masking.plan
            if plan is None:
                return msg.raw
            return mask_data_row(msg.raw, plan, masking.masking, encoding)
        if t == 84:  # T RowDescription
            columns = parse_row_description(msg.body)
            if head is not None and head.kind == DESCRIBE and head.target is not None:
                masking.described(head.target, columns)
            else:
                masking.plan = masking.plan_of(columns, self._names(columns))
            return None
        if t == 110 and head is not None and head.kind == DESCRIBE and head.target is not None:
            masking.described(head.target, [])  # n NoData
            return None
        if t == 72:  # H CopyOutResponse
            if msg.body[:1] == b"\x01":
                self._fatal(
                    "0A000",
                    "wardgate: binary COPY output cannot be masked, and masking applies to "
                    "this session; use COPY ... TO STDOUT in text or CSV format",
                )
                return b""
            masking.copy_out = True
            return None
        if t == 100 and masking.copy_out:  # d CopyData
            return mask_copy_data(msg.raw, masking.masking, encoding)
        if t in (99, 69, 90):  # c CopyDone, E ErrorResponse, Z ReadyForQuery
            masking.copy_out = False
            if t == 90:
                masking.plan = None
        return None

    def _on_server_message(self, msg: BackendMessage) -> bytes | None:
        """Match a server reply to what it answers; returns a replacement to send instead, if any."""
        t = msg.type
        pending = self._pending
        head = pending[0] if pending else None
        if self.masking is not None:
            masked = self._mask_server_message(msg, head)
            if masked is not None:
                return masked
            if t == 69 or t == 78:  # E, N: a DETAIL can quote the very value (Key (email)=...)
                raw = mask_error_fields(msg.raw, self.masking.masking, self.client.decoder.encoding)
                if raw is not msg.raw:
                    msg = BackendMessage(t, raw)  # what the client and the recorder get
                    result = self._on_server_message_unmasked(msg, head)
                    return raw if result is None else result
        return self._on_server_message_unmasked(msg, head)

    def _on_server_message_unmasked(
        self, msg: BackendMessage, head: _Pending | None
    ) -> bytes | None:
        t = msg.type
        pending = self._pending
        if t == 90:  # Z ReadyForQuery
            self._transaction = msg.raw[5] if len(msg.raw) > 5 else 73
            while pending:
                entry = pending.popleft()
                self._close_remaining(entry, "not_executed")
                if entry.kind in (QUERY, SYNC):
                    break
            return None
        if t == 83:  # S ParameterStatus
            self._on_parameter_status(msg)
            return None
        if head is None:
            return None  # asynchronous: NoticeResponse, NotificationResponse
        if t == 69:  # E ErrorResponse
            replacement = head.block
            fields = parse_error_fields(msg.body) if replacement is None else None
            if head.kind == SYNC:
                # The implicit transaction failed at its commit (a deferred constraint):
                # what ran before this Sync was rolled back. Its ReadyForQuery follows.
                head.commit_error = fields
                return replacement
            if head.kind == QUERY:
                if head.acts and head.index < len(head.acts):
                    self._finish_act(head.acts[head.index], "error", fields=fields)
                    head.index += 1
                return replacement
            pending.popleft()
            if head.acts:
                self._finish_act(head.acts[0], "error", fields=fields)
            # The server now skips everything up to Sync.
            while pending and pending[0].kind != SYNC:
                self._close_remaining(pending.popleft(), "not_executed")
            return replacement
        if t == 67 or t == 73:  # C CommandComplete, I EmptyQueryResponse
            if head.kind == QUERY:
                if head.acts and head.index < len(head.acts):
                    tag = parse_command_tag(msg.body) if t == 67 else ("", None)
                    self._finish_act(head.acts[head.index], "ok", tag=tag)
                    head.index += 1
            elif head.kind == EXECUTE:
                pending.popleft()
                if head.acts:
                    tag = parse_command_tag(msg.body) if t == 67 else ("", None)
                    self._finish_execute(head.acts[0], tag)
            return None
        if t == 115:  # s PortalSuspended
            if head.kind == EXECUTE:
                pending.popleft()
                if head.acts:
                    self._finish_execute(head.acts[0], ("SUSPENDED", None))
            return None
        if (
            (t == 49 and head.kind == PARSE)
            or (t == 50 and head.kind == BIND)
            or (t == 51 and head.kind == CLOSE)
        ):
            pending.popleft()  # 1 ParseComplete, 2 BindComplete, 3 CloseComplete
        elif (t == 84 or t == 110) and head.kind == DESCRIBE:  # T RowDescription, n NoData
            pending.popleft()
        return None

    def _on_parameter_status(self, msg: BackendMessage) -> None:
        try:
            name, value = parse_parameter_status(msg.body)
        except ProtocolError:
            return  # forwarded as it is; the client judges it
        if self.read_only and name == "default_transaction_read_only" and value != "on":
            self._fatal(
                "0A000",
                "wardgate: the read-only session this principal's role requires was turned "
                "read-write; the session ends",
            )
            return
        if (problem := reported_setting_problem(name, value)) is not None:
            # The server now reads SQL in a way the gateway cannot follow safely: end the
            # session rather than judge statements it might misread.
            self._fatal("0A000", problem)
            return
        if name == "client_encoding":
            codec = python_codec(value)
            assert codec is not None  # reported_setting_problem checked it
            self.client.decoder.encoding = codec

    def _finish_execute(self, act: _Act, tag: tuple[str, int | None]) -> None:
        sync = next((e for e in self._pending if e.kind == SYNC), None)
        record = self._action_record(act, "ok", tag=tag)
        if sync is None:
            self.services.recorder.submit(record)  # no Sync yet: nothing can undo it later
        else:
            sync.held.append(record)

    def _finish_act(
        self,
        act: _Act,
        status: str,
        *,
        tag: tuple[str, int | None] | None = None,
        fields: object = None,
    ) -> None:
        self.services.recorder.submit(self._action_record(act, status, tag=tag, fields=fields))

    def _action_record(
        self,
        act: _Act,
        status: str,
        *,
        tag: tuple[str, int | None] | None = None,
        fields: object = None,
    ) -> ActionRecord:
        duration_ms = (time.perf_counter() - act.t0) * 1000.0
        error = sqlstate = None
        if fields is not None:
            error = getattr(fields, "message", None)
            sqlstate = getattr(fields, "sqlstate", None)
        action = act.action
        if act.review is not None and self.services.reviews is not None:
            result = {
                "status": status,
                "command": tag[0] if tag else None,
                "rows": tag[1] if tag else None,
                "session": self.session_id,
                "seq": act.seq,
            }
            if fields is not None:
                result["error"] = getattr(fields, "message", None)
            service = self.services.reviews.service
            review, act.review = act.review, None
            self.services.tasks.spawn(
                asyncio.to_thread(service.record_action_result, review, result),
                name="review-result",
            )
        if self.masking is not None and action.params:
            # The audit log never holds what the client would not be shown.
            mask = self.masking.masking.mask_text
            action = dataclasses.replace(
                action, params=tuple(None if p is None else mask(p) for p in action.params)
            )
        return ActionRecord(
            session_id=self.session_id,
            seq=act.seq,
            action=action,
            verdict=act.verdict,
            started_at=act.started,
            duration_ms=duration_ms,
            status=status,
            rows=tag[1] if tag else None,
            command=tag[0] if tag else None,
            error=error,
            sqlstate=sqlstate,
        )

    def _record(self, act: _Act, status: str, error: str | None = None) -> None:
        record = self._action_record(act, status)
        if error is not None:
            record = dataclasses.replace(record, error=error)
        self.services.recorder.submit(record)

    def _close_remaining(self, entry: _Pending, status: str) -> None:
        failed = entry.commit_error
        for record in entry.held:
            if failed is not None:
                record = dataclasses.replace(
                    record,
                    status="error",
                    error=f"rolled back: the transaction failed at commit: {failed.message}",
                    sqlstate=failed.sqlstate,
                )
            self.services.recorder.submit(record)
        entry.held = []
        if entry.acts:
            for act in entry.acts[entry.index :]:
                self._finish_act(act, status)
            entry.index = len(entry.acts)

    # -- flow control and endings -------------------------------------------------------

    def client_write_paused(self, paused: bool) -> None:
        (self.upstream.pause_reading if paused else self.upstream.resume_reading)("client-buffer")

    def upstream_write_paused(self, paused: bool) -> None:
        (self.client.pause_reading if paused else self.client.resume_reading)("upstream-buffer")

    def on_client_closed(self) -> None:
        if not self.upstream.closed:
            self.upstream.write(build.terminate())
            self.upstream.close()
        self.finish("closed")

    def on_upstream_closed(self) -> None:
        if not self._finished:
            log.warning(
                "session %s: upstream of %r closed the connection", self.session_id, self.connection
            )
            self._fatal(
                "08006",
                f"wardgate: lost the connection to the database server of connection {self.connection!r}; reconnect to retry",
                status="upstream_lost",
            )

    def _fatal(self, sqlstate: str, message: str, status: str = "error") -> None:
        self.client.end_with(build.error_response(sqlstate, message, severity="FATAL"))
        self.upstream.close()
        self.finish(status, message)

    def finish(self, status: str, error: str | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._review_task is not None:
            self._review_task.cancel()  # nobody is left to run what it waits for
        while self._pending:
            self._close_remaining(self._pending.popleft(), "not_executed")
        self.services.recorder.submit(SessionEnd(self.session_id, time.time(), status, error))
        self.client.close()
        self.upstream.close()
        if callable(self._on_finished):
            self._on_finished()
