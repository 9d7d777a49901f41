"""The state of one relayed PostgreSQL session, and the steps every phase of the relay
shares: an Action from a statement, the gate's verdict, recording, the session's end.

PgRelay (relay.py) is made of phases over this state, each a class in its own module:
simple_query.py, extended.py, review_hold.py, replies.py and results.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.records import (
    AUDIT_UNAVAILABLE,
    AUDIT_UNAVAILABLE_RULE,
    INTERRUPTED_BY_CRASH,
    ActionRecord,
    Record,
    SessionEnd,
)
from wardgate.policy.functions import function_class
from wardgate.postgres.catalog_watch import CatalogWatch, sharing_database
from wardgate.postgres.codec import build
from wardgate.postgres.codec.decode import ErrorFields
from wardgate.postgres.commit_barrier import CancelTo, CommitBarrier
from wardgate.postgres.mask_catalog import CatalogUnavailable, MaskCatalogs
from wardgate.postgres.mask_outputs import MaskedOutputs, masked_outputs
from wardgate.postgres.mask_path import SessionPaths
from wardgate.postgres.mask_rewrite import Refused, UnknownRelation
from wardgate.postgres.masking import Plan, ResultMasking, Version
from wardgate.postgres.result_tap import ResultTap, SessionResults
from wardgate.postgres.session_model import Change, Prepared, SessionModel
from wardgate.postgres.transaction import TRANSACTION_TAGS, Settled, TransactionOutcome
from wardgate.reviews.model import ReviewInfo

if TYPE_CHECKING:
    from wardgate.actions import StatementInfo
    from wardgate.config import Config
    from wardgate.core.services import Services
    from wardgate.identity.principals import Principal
    from wardgate.postgres.backends import Backend
    from wardgate.postgres.codec.backend import BackendScanner
    from wardgate.postgres.wire import ClientSide, UpstreamSide

# What a forwarded request expects back.
QUERY, PARSE, BIND, EXECUTE, DESCRIBE, CLOSE, SYNC, PROBE = range(8)

# Sent upstream instead of a blocked statement: fails in the parser, before
# anything executes, and puts the server in the same error state a real failure would.
_POISON_SQL = "wardgate blocked statement"
POISON_QUERY = build.query(_POISON_SQL)
POISON_PARSE = build.parse("", _POISON_SQL)

MASKING_RELOADED = (
    "the masking rules for this principal on this connection changed (a configuration "
    "reload) since this session started; a session keeps the masking it started with, so "
    "its statements are refused: reconnect to continue under the new rules"
)


class Act:
    """One action in flight: what was asked, what the gate said, when it started."""

    __slots__ = ("action", "verdict", "seq", "started", "t0", "review", "tap", "changes")

    def __init__(self, action: Action, verdict: Verdict, seq: int) -> None:
        self.action = action
        self.verdict = verdict
        self.seq = seq
        self.review: ReviewInfo | None = None  # the approval it runs under
        self.started = time.time()
        self.t0 = time.perf_counter()
        self.tap: ResultTap | None = None  # what the client received (result_tap.py)
        self.changes: bool | None = None  # may change the catalogue (`_forwarding`)


class Pending:
    __slots__ = (
        "kind", "acts", "index", "block", "held", "commit_error", "target", "plan", "planned",
        "changes", "batch", "probe", "cost", "outputs", "version",
    )  # fmt: skip

    def __init__(
        self,
        kind: int,
        acts: list[Act] | None = None,
        block: bytes | None = None,
        target: tuple[str, str] | None = None,
        changes: list[list[Change[Any]]] | None = None,
        batch: int = -1,
        probe: Any = None,
    ) -> None:
        self.kind = kind
        self.acts = acts
        self.index = 0
        # Name-map changes this request makes once the server confirms them: one list per
        # statement of a Query (confirmed by its CommandComplete), else one list.
        self.changes = changes
        self.batch = batch  # QUERY, SYNC: the batch their ReadyForQuery closes; EXECUTE: its own
        self.probe = probe  # PROBE: the gateway's own question (probe.py)
        self.block = block  # our ErrorResponse replacing the server's
        self.target = target  # DESCRIBE: ("S"|"P", name); EXECUTE: ("P", portal)
        self.plan: Plan | None = None  # EXECUTE with masking: what to do with its rows
        # QUERY, EXECUTE: the result columns the database masked (mask_outputs.py), as
        # the text the server runs for this very message says; None: scan them all.
        self.outputs: MaskedOutputs | None = None
        # DESCRIBE, EXECUTE with masking: the version of the target's name when this
        # message was forwarded (ResultMasking.version), which its answer concerns.
        self.version: Version | None = None
        self.planned = False
        # SYNC only: records of Executes before it, held until its ReadyForQuery, because
        # the implicit transaction they ran in can still fail (and roll back) at Sync.
        self.held: list[ActionRecord] = []
        self.commit_error: ErrorFields | None = None
        self.cost = 0  # what it counts towards PendingQueue.cost (PendingQueue.charge)


class PendingQueue(deque[Pending]):
    """What forwarded requests expect back, oldest first, with what they cost: ``cost``,
    the bytes charged to the entries in it (the client message's size plus a fixed
    share for the gateway's bookkeeping, relay.py), and ``syncs``, how many Sync
    entries it holds."""

    def __init__(self) -> None:
        super().__init__()
        self.cost = 0
        self.syncs = 0
        self.gone = 0  # entries ever taken out: answered, or closed (commit_barrier.py)

    def append(self, entry: Pending) -> None:
        super().append(entry)
        if entry.kind == SYNC:
            self.syncs += 1

    def charge(self, entry: Pending, cost: int) -> None:
        entry.cost += cost
        self.cost += cost

    def popleft(self) -> Pending:
        entry = super().popleft()
        self._gone(entry)
        return entry

    def pop_last(self) -> Pending:
        entry = super().pop()
        self._gone(entry)
        return entry

    def _gone(self, entry: Pending) -> None:
        self.gone += 1
        self.cost -= entry.cost
        if entry.kind == SYNC:
            self.syncs -= 1


class SessionLimit(Exception):
    """A client message would take the session past one of the gateway's limits: the
    session ends (SQLSTATE 54000) with this message."""


class RelayState:
    """What PgRelay.__init__ sets up, declared here so that every phase is checked
    against it; and the steps they all take."""

    services: Services
    client: ClientSide
    upstream: UpstreamSide
    session_id: str
    principal: Principal
    connection: str
    client_addr: str
    scanner: BackendScanner
    masking: ResultMasking | None
    read_only: bool
    review_wait: float
    _held: list[bytes] | None
    _pending: PendingQueue
    model: SessionModel
    _discarding: bool
    _barrier: bool  # reading stopped until the server confirms the client encoding
    _backlogged: bool  # reading stopped until forwarded messages are answered (relay.py)
    _answered: Callable[[int], None]  # relay.py: a batch's ReadyForQuery came
    _seq: int
    _finished: bool
    _server_ended: bool  # the server sent a FATAL error: it is closing the session
    _on_finished: object
    _reviewing: bool
    _review_task: asyncio.Task[None] | None
    _review_cancelled: bool
    _results: SessionResults | None  # None: results are not recorded
    _transaction: TransactionOutcome  # approved statements whose transaction is open
    _ddl_open: bool  # DDL forwarded, its transaction not ended (relay.py)
    _ddl_in_string: bool  # judging the statements after DDL in one Query string
    _ddl_batch: int  # the last batch that forwarded DDL
    _txn_statement: bool  # ...and a transaction statement sent since the last mark
    _commit_marks: deque[tuple[int, bool, tuple[str, ...]]]  # batch, ended, connections
    # The commit barrier (commit_barrier.py): the connections a batch that may commit
    # DDL waits on, before it is sent (None: it waits on nothing); how many entries at
    # the end of _pending it holds unsent; the task waiting for the drain.
    _hold_for: tuple[str, ...] | None
    _held_unsent: int
    _held_since: int  # when the held batch was judged (time.monotonic_ns)
    _hold_task: asyncio.Task[None] | None
    cancel_to: CancelTo | None  # the upstream backend's cancel key (listener.py)
    backend: Backend | None  # the upstream backend, to end it (commit_barrier.py)
    _batch_open: bool  # extended messages sent since the last Sync (relay.py)
    _leaving: bool = False  # ended, the server not yet done with what it was sent
    # Column masking: the search_paths the session may have (mask_path.py), from what
    # the server answered at its start (listener.py); unknown when nobody asked.
    mask_paths: SessionPaths | None = None
    # The principal as the configuration in force has it (`_action`), with that config.
    _principal_now: tuple[Config, Principal] | None = None
    # Records of the server chunk being relayed, submitted once it is written (`_submit`).
    _deferred: list[Record] | None = None
    # Whether the masking the configuration in force gives the principal differs from
    # the masking the session started with (`_masking_changed`), per configuration.
    _masking_now: tuple[Config, bool] | None = None

    def flight(self, before: int) -> tuple[int, int]:
        """(sent, answered) requests, for the commit barrier (commit_barrier.py)."""
        if self._leaving:
            return 1, 0  # ended, the server still running what it was sent (`finish`)
        gone = self._pending.gone
        held = self._held_unsent if self._held_since >= before else 0
        return gone + len(self._pending) - held, gone

    def nudge(self) -> None:
        """The commit barrier waits for this session's answers: in an open extended
        batch the server sends them only at a Sync or a Flush (a client that never sends
        either would hold every DDL commit: attack14m)."""
        if self._batch_open and not self._finished:
            self.upstream.write(build.flush())

    # -- judging --------------------------------------------------------------------------

    def _action(self, text: str, params: tuple[str | None, ...], binding: str = "") -> Action:
        # The principal as the configuration says now: a reload may have changed its
        # groups, or removed it (then it has none, and nothing is allowed: attack20).
        config = self.services.config
        seen = self._principal_now
        if seen is None or seen[0] is not config:  # asked once per configuration
            now = config.principal(self.principal.name)
            seen = self._principal_now = (
                config,
                now or dataclasses.replace(self.principal, groups=frozenset()),
            )
        # Positional (principal, connection, protocol, kind, text, params, session_id,
        # client_addr, resolved, binding): one per statement, cheaper than keywords.
        return Action(
            seen[1],
            self.connection,
            "postgres",
            "sql",
            text,
            params,
            self.session_id,
            self.client_addr,
            None,
            binding,
        )

    def _note_encoding(self, statements: tuple[StatementInfo, ...]) -> None:
        """A forwarded statement that may change client_encoding: until the server
        confirms the encoding (ParameterStatus before the batch's ReadyForQuery), later
        bytes the two could decode differently wait (relay.py `_pump`)."""
        model = self.model
        for info in statements:
            kinds = info.kinds
            if (
                not _ENCODING_KINDS.isdisjoint(kinds)
                or (model.encoding_touched and "transaction_end" in kinds)
                or _sets_config_param(kinds)
                or (info.functions and any(_user_function(f) for f in info.functions))
                or (info.attributes and not self._called_as_fields().isdisjoint(info.attributes))
            ):
                model.encoding_batch = model.batch
                if "client_encoding" in kinds:
                    model.encoding_touched = True
                return

    def _called_as_fields(self) -> frozenset[str]:
        """Names of user functions on this connection that a field selection calls
        (``(1).f``, catalog_watch.py): routines, which may change any setting."""
        return self.services.gate.facts.user_code(self.connection).attributes

    def _judge(self, action: Action, *, params_later: bool = False) -> Verdict:
        reviews = self.services.reviews
        present = self.principal.name in self.services.config.principals  # not removed
        granted = (
            reviews.granted(self.principal.name, self.connection)
            if reviews and present
            else frozenset()
        )
        verdict = self.services.gate.check(
            action,
            granted,
            params_later=params_later,
            own_changes=self._ddl_open or self._ddl_in_string,
        )
        if self._masking_changed():
            return Verdict(Decision.BLOCK, "masking:reload", MASKING_RELOADED, verdict.statements)
        if self.services.recorder.unavailable:
            # Nothing runs that cannot be recorded (an observed connection included).
            return Verdict(
                Decision.BLOCK, AUDIT_UNAVAILABLE_RULE, AUDIT_UNAVAILABLE, verdict.statements
            )
        return verdict

    def _masking_changed(self) -> bool:
        """A session masks with the rules it started with (the result plans, the
        rewriter's rules, the search_paths it asked for all follow from them); after a
        reload gives the principal other masking, its statements are refused until it
        reconnects. Before, a rule added by a reload never reached open sessions: a
        column it masks came back clear to them, prepared statements and new text alike."""
        config = self.services.config
        seen = self._masking_now
        if seen is None or seen[0] is not config:  # asked once per configuration
            principal = config.principal(self.principal.name) or dataclasses.replace(
                self.principal, groups=frozenset()
            )
            now = self.services.masking.for_session(principal, self.connection)
            started = self.masking.masking if self.masking is not None else None
            changed = (now.signature() if now else None) != (
                started.signature() if started else None
            )
            seen = self._masking_now = (config, changed)
        return seen[1]

    def _mask_rewrite(self, sql: str) -> bytes | Verdict | None:
        """``sql`` with the principal's masked columns computed masked in the database
        (mask_rewrite.py), in the client's encoding; None when nothing changes, or the
        block Verdict of what cannot be proven safe. Sessions without column rules pay
        nothing."""
        session = self.masking.masking if self.masking is not None else None
        if session is None or not session.column_rules:
            return None
        paths = self.mask_paths
        if paths is None:
            paths = self.mask_paths = SessionPaths(unknown=True)  # not asked: every schema
        try:
            rewritten = self.services.state(MaskCatalogs).rewrite(
                self.connection, sql, session.column_rules, paths
            )
            return None if rewritten is None else rewritten.encode(self.client.decoder.encoding)
        except UnicodeEncodeError:
            return Verdict(
                Decision.BLOCK,
                "masking:encoding",
                "the statement rewritten for masking cannot be written in the session's "
                "client encoding; use UTF8",
            )
        except CatalogUnavailable:
            return Verdict(
                Decision.BLOCK,
                "masking:catalog",
                "masking rules on columns need the gateway's catalog snapshot of this "
                "connection, which could not be read; retry in a few seconds",
            )
        except Refused as exc:
            if isinstance(exc, UnknownRelation):
                self.services.state(CatalogWatch).missed(self.connection)
            return Verdict(Decision.BLOCK, f"masking:{exc.rule}", exc.reason)

    def _mask_note(self, sql: str) -> None:
        """``sql`` is about to be judged: what it may set counts before any prepared
        statement it executes is checked (``set search_path = x; execute p``)."""
        session = self.masking.masking if self.masking is not None else None
        if session is not None and session.column_rules and self.mask_paths is not None:
            self.mask_paths.note(sql)

    def _mask_prepared(self, sql: str, sent: bytes | None) -> str | None:
        """What a statement prepared now holds for ``_mask_replanned``: the text the
        server got (``sent``, the rewrite, or ``sql``); None without column rules."""
        session = self.masking.masking if self.masking is not None else None
        if session is None or not session.column_rules:
            return None
        return sql if sent is None else sent.decode(self.client.decoder.encoding)

    def _database_masks(self, text: str) -> MaskedOutputs | None:
        """The result columns of ``text`` (as sent) the database computes masked, which
        the second layer need not scan (mask_outputs.py); None while this principal may
        change code in the database (DDL, DO blocks, admin, or any access grant): it
        could replace the wardgate_mask functions that compute them (an unqualified
        CREATE FUNCTION after pointing search_path at that schema, dynamic SQL in a DO
        block), and the second layer then scans every column as it would without them."""
        principal = self.services.config.principal(self.principal.name) or self.principal
        if self.services.gate.may_change_code(principal.groups, self.connection):
            return None
        reviews = self.services.reviews
        if reviews is not None and reviews.granted(self.principal.name, self.connection):
            return None
        return masked_outputs(text)

    def _bound_outputs(self, held: list[Prepared | None]) -> MaskedOutputs | None:
        """The masked result columns of a portal bound to a statement that may hold
        ``held``: known only when every possible meaning was prepared, rewritten, from
        the same text."""
        texts = {p.masked if p is not None else None for p in held}
        if len(texts) != 1:
            return None
        text = texts.pop()
        return None if text is None else self._database_masks(text)

    def _portal_outputs(self, portal: str) -> MaskedOutputs | None:
        """The masked result columns of what an Execute of ``portal`` runs: every
        possible meaning of the portal agrees on them, or none is known.

        Only the unnamed portal: SQL can close and DECLARE a named one (``close c``,
        ``declare c cursor for ...``) through the extended protocol, which the session
        model does not follow (it reads cursor changes from a simple Query only), so an
        Execute of "c" could run another query than the one bound, and a clear column
        would sit where the bound one was masked. No SQL names the unnamed portal
        (``DECLARE ""`` is an error; PL/pgSQL names its own), and every protocol change
        of it (Bind, Close, a Query, a transaction's end) is one the model sees."""
        if portal:
            return None
        held = self.model.portals.candidates(portal, self.model.batch)
        outputs = {p.outputs if p is not None else None for p in held}
        return outputs.pop() if len(outputs) == 1 else None

    def _mask_replanned(self, prepared: Prepared | None) -> Verdict | None:
        """PostgreSQL analyses a prepared statement again when the session's search_path
        changed since it was prepared (or a relation it read changed), so an unqualified
        name may mean another table at Bind or EXECUTE than at Parse or PREPARE. The
        statement is rewritten again under the search_paths the session may have now;
        when that differs from what the server prepared, it is refused (fail closed)."""
        if prepared is None or prepared.masked is None:
            return None
        now = self._mask_rewrite(prepared.sql)
        if isinstance(now, Verdict):
            return now
        text = prepared.sql if now is None else now.decode(self.client.decoder.encoding)
        if text == prepared.masked:
            return None
        session = self.masking.masking if self.masking is not None else None
        rules = session.column_rules if session is not None else ()
        return Verdict(
            Decision.BLOCK,
            f"masking:{rules[0].rule if rules else 'masking'}",
            "this prepared statement was rewritten for column masking under the search_path "
            "the session had when it was prepared; the session's search_path (or the "
            "catalog) may have changed since, and PostgreSQL would read its tables again "
            "under the new one, unmasked. Prepare it again",
        )

    def _act(self, action: Action, verdict: Verdict) -> Act:
        self._seq += 1
        return Act(action, verdict, self._seq)

    # -- recording ------------------------------------------------------------------------

    def _ran(self, act: Act) -> None:
        """A statement completed: after DDL, the masking snapshot may be out of date (the
        catalogue watch looks again once its transaction ends: `_ddl_settled`)."""
        changes = act.changes
        if changes is None:
            changes = self.services.gate.changes_catalogue(act.verdict.statements, self.connection)
        if changes:
            self.services.state(MaskCatalogs).stale(self.connection)

    # -- DDL and the catalogue facts (gate.CatalogFacts) ------------------------------------

    def _next_batch(self) -> None:
        """The batch being sent ends (a Query, or a Sync: what PostgreSQL commits at
        once)."""
        if self._ddl_open:
            self._may_commit()
            self._txn_statement = False  # its mark has it; the next batch starts anew
        self.model.next_batch()

    def _may_commit(self) -> None:
        """What was just sent after DDL may commit it, and from then on other sessions
        may see what it made: the end of a batch, and an Execute in an open one
        (PostgreSQL commits a COMMIT, or a statement that cannot run in a transaction
        block, at its Execute, Sync or not). Every session of every connection to the
        same database is judged as the worst case until the server has answered
        (`_ddl_settled`) and the watch has read the catalogue again; once per batch.

        Not when the server confirmed a transaction block before this batch and none
        of it so far is a transaction statement: nothing else ends a block (a COMMIT
        inside a DO block or procedure fails there), so a long migration keeps other
        sessions waiting only for its COMMIT."""
        model = self.model
        ended = self._txn_statement
        batch = model.batch
        if not ended and model.transaction == "T" and model.confirmed_batch == batch - 1:
            return
        marks = self._commit_marks
        if marks and marks[-1][0] == batch:
            if ended and not marks[-1][1]:
                marks[-1] = (batch, True, marks[-1][2])
            return
        names = sharing_database(self.services, self.connection)
        for name in names:
            self.services.gate.facts.committing(name)
        marks.append((batch, ended, names))
        if self._hold_for is None and self.services.state(CommitBarrier).needed(names, self):
            self._hold_for = names  # sent once the others' statements are answered

    def _ddl_settled(self, batch: int, status: bytes) -> None:
        """The ReadyForQuery closing ``batch`` came: the batches it answers that may have
        committed DDL are settled; a transaction that ended (status I) after the last
        batch that ran DDL ends this session's own worst case (the answer of an earlier
        batch, pipelined, says nothing of a transaction a later one opened)."""
        marks = self._commit_marks
        committed = False
        while marks and marks[0][0] <= batch:
            _, ended, names = marks.popleft()
            done = ended or status == b"I"
            self._settle_mark(names, done)
            committed = committed or done
        if status == b"I" and batch >= self._ddl_batch:
            self._ddl_open = False
        if committed:
            self.services.state(CatalogWatch).poke(self.connection)

    def _ddl_ended_before_sync(self, batch: int) -> None:
        """An Execute of COMMIT (or ROLLBACK, PREPARE TRANSACTION) in ``batch`` completed:
        the transaction is over, whether a Sync comes or not. Its batch's mark is settled
        now, and the watch looks, rather than other sessions waiting for a Sync the client
        may never send. Only that batch's: earlier batches were answered before this
        reply, but a later one, pipelined, may hold DDL its own Sync commits (a ROLLBACK
        with no DDL before it settled the next batch's mark, the watch looked before that
        batch committed, and nobody looked after: attack14k)."""
        marks = self._commit_marks
        if not marks or marks[0][0] != batch:
            return
        self._settle_mark(marks.popleft()[2], committed=True)
        self.services.state(CatalogWatch).poke(self.connection)

    def _ddl_abandoned(self) -> None:
        """The session ends with batches unanswered: they may have committed."""
        if self._commit_marks:
            for _, _, names in self._commit_marks:
                self._settle_mark(names, committed=True)
            self._commit_marks.clear()
            self.services.state(CatalogWatch).poke(self.connection)
        self._ddl_open = False

    def _settle_mark(self, names: tuple[str, ...], committed: bool) -> None:
        """One batch's mark (`_may_commit`) is answered, on each connection it covers."""
        for name in names:
            self.services.gate.facts.settled(name, committed=committed)

    def _finish_execute(self, act: Act, tag: tuple[str, int | None], batch: int) -> None:
        self._ran(act)
        if tag[0] in TRANSACTION_TAGS:
            self._settle_reviews(self._transaction.command(tag[0], act.action.text))
            if tag[0] in _ENDED and self._commit_marks:
                self._ddl_ended_before_sync(batch)
        pending = self._pending
        record = self._action_record(act, "ok", tag=tag)
        if pending.syncs:
            for entry in pending:
                if entry.kind == SYNC:
                    entry.held.append(record)
                    return
        self._submit(record)  # no Sync yet: nothing can undo it later

    def _finish_act(
        self,
        act: Act,
        status: str,
        *,
        tag: tuple[str, int | None] | None = None,
        fields: object = None,
    ) -> None:
        if status == "ok":
            self._ran(act)
        self._submit(self._action_record(act, status, tag=tag, fields=fields))
        if tag is not None and tag[0] in TRANSACTION_TAGS:
            self._settle_reviews(self._transaction.command(tag[0], act.action.text))

    def _action_record(
        self,
        act: Act,
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
            if status != "ok" and _may_commit_inside(act.verdict):
                # A procedure or DO block can COMMIT part of its work, then fail: the
                # error does not mean nothing was kept (attack17b).
                result["transaction"] = "unknown"
                result["error"] = (
                    f"{result.get('error') or status}; a procedure or DO block may have "
                    "committed part of its work before this: check the target"
                )
            review, act.review = act.review, None
            if status == "ok":
                # Done only once its transaction commits (transaction.py).
                self._transaction.ran(review, result)
            else:
                self._settle_reviews([(review, result)])
        return ActionRecord(
            session_id=self.session_id,
            seq=act.seq,
            action=action if self.masking is None else self._recorded_action(action),
            verdict=act.verdict,
            started_at=act.started,
            duration_ms=duration_ms,
            status=status,
            rows=tag[1] if tag else None,
            command=tag[0] if tag else None,
            error=error,
            sqlstate=sqlstate,
            result=act.tap.summary() if act.tap is not None else None,
        )

    def _submit(self, record: Record) -> None:
        """Hand ``record`` to the recorder; while a server chunk is relayed, once the
        client has its reply (``_deferred``, replies.py): the client does not wait for
        the bookkeeping, and the records keep their order. Nothing about durability
        changes: the statement's intent was journaled before it was forwarded, and an
        outcome waits in memory for the next journal write anyway."""
        deferred = self._deferred
        if deferred is not None:
            deferred.append(record)
        else:
            self.services.recorder.submit(record)

    def _settle_reviews(self, settled: list[Settled]) -> None:
        """Tell the review service what became of approved statements."""
        if not settled or self.services.reviews is None:
            return
        service = self.services.reviews.service
        for review, result in settled:
            self.services.tasks.spawn(
                asyncio.to_thread(service.record_action_result, review, result),
                name="review-result",
            )

    def _recorded_action(self, action: Action) -> Action:
        if self.masking is not None and self.masking.masking.content and action.params:
            # The audit log never holds what the client would not be shown (content
            # detection; column rules leave parameters as they are: mask_text).
            mask = self.masking.masking.mask_text
            action = dataclasses.replace(
                action, params=tuple(None if p is None else mask(p) for p in action.params)
            )
        return action

    def _forwarding(self, acts: list[Act]) -> None:
        """Before these statements go to the server: the journal has their records
        (audit.journal), as interrupted, until their outcome replaces them."""
        recorder = self.services.recorder
        masking = self.masking
        self._batch_ran = True  # (an extended batch: it may have ended a transaction)
        for act in acts:
            act.changes = self.services.gate.changes_catalogue(
                act.verdict.statements, self.connection
            )
            if act.changes:
                self._ddl_open = True
                self._ddl_batch = self.model.batch
            if self._ddl_open and any("transaction" in i.kinds for i in act.verdict.statements):
                self._txn_statement = True
            recorder.intend(
                ActionRecord(
                    session_id=self.session_id,
                    seq=act.seq,
                    action=act.action if masking is None else self._recorded_action(act.action),
                    verdict=act.verdict,
                    started_at=act.started,
                    duration_ms=float("nan"),
                    status="interrupted",
                    error=INTERRUPTED_BY_CRASH,
                )
            )
        if self._ddl_open:
            self._may_commit()  # an Execute may commit at once (`_may_commit`)

    def _record(self, act: Act, status: str, error: str | None = None) -> None:
        if act.verdict.rule == AUDIT_UNAVAILABLE_RULE:
            self.services.recorder.refused()
            return  # see AUDIT_UNAVAILABLE_RULE: counted, not queued
        record = self._action_record(act, status)
        if error is not None:
            record = dataclasses.replace(record, error=error)
        self._submit(record)

    def _close_remaining(self, entry: Pending, status: str, fields: object = None) -> None:
        if entry.changes is not None:
            self._refute(entry, 0)
        failed = entry.commit_error
        for record in entry.held:
            if failed is not None:
                record = dataclasses.replace(
                    record,
                    status="error",
                    error=f"rolled back: the transaction failed at commit: {failed.message}",
                    sqlstate=failed.sqlstate,
                )
            self._submit(record)
        entry.held = []
        if entry.acts:
            for act in entry.acts[entry.index :]:
                self._finish_act(act, status, fields=fields)
            entry.index = len(entry.acts)

    def _resume_pump(self) -> None:
        """Go on judging the client's buffered messages (relay.py)."""
        raise NotImplementedError

    def _replies_relayed(self) -> None:
        """Server replies were matched and relayed: reading the client may resume (relay.py)."""
        raise NotImplementedError

    def _send_judged(self, out: list[bytes], sent: int, since: int) -> None:
        """Send judged client messages, or hold them for the commit barrier (relay.py)."""
        raise NotImplementedError

    def _over_limit(self, exc: Exception) -> None:
        """End the session on a passed limit (relay.py)."""
        raise NotImplementedError

    # -- the session model ----------------------------------------------------------------

    def _confirm(self, entry: Pending, index: int = 0) -> None:
        """The server confirmed the changes of ``entry`` (of its statement ``index``)."""
        if entry.changes is not None and index < len(entry.changes):
            for change in entry.changes[index]:
                self._names_of(change).confirm(change)
            entry.changes[index] = []

    def _refute(self, entry: Pending, start: int) -> None:
        """The changes of ``entry`` from statement ``start`` on never happened."""
        if entry.changes is None:
            return
        for changes in entry.changes[start:]:
            for change in changes:
                self._names_of(change).refute(change)
        entry.changes = entry.changes[:start]

    def _names_of(self, change: Change[Any]) -> Any:
        model = self.model
        return model.statements if change in model.statements.pending else model.portals

    # -- endings --------------------------------------------------------------------------

    def _fatal(self, sqlstate: str, message: str, status: str = "error") -> None:
        self.client.end_with(build.error_response(sqlstate, message, severity="FATAL"))
        self.finish(status, message)  # and the upstream, once it ran what it was sent

    def finish(self, status: str, error: str | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        if self._review_task is not None:
            self._review_task.cancel()  # nobody is left to run what it waits for
        if self._hold_task is not None:
            self._hold_task.cancel()  # what it holds is never sent
            self._hold_task = None
        for _ in range(self._held_unsent):  # held for the commit barrier: never sent
            self._close_remaining(self._pending.pop_last(), "not_executed")
        self._held_unsent = 0
        in_flight = bool(self._pending)
        while self._pending:
            # Sent, and no answer came: it may have run (or still run) on the server.
            self._close_remaining(self._pending.popleft(), "interrupted")
        if self._transaction.open:
            self._settle_reviews(self._transaction.ended(in_flight))
        self._submit(SessionEnd(self.session_id, time.time(), status, error))
        self.client.close()
        barrier = self.services.state(CommitBarrier)
        if in_flight and not self.upstream.closed:
            # The server goes on with what it was sent until it reads the Terminate
            # after it (closing the socket does not stop it): in flight for the commit
            # barrier, and DDL among it not answered, until the server has closed.
            self._leaving = True
            barrier.leave(self.services, self, self.upstream, self._ddl_abandoned)
        else:
            barrier.discard(self)
            self._ddl_abandoned()
            if not self.upstream.closed:
                self.upstream.write(build.terminate())
            self.upstream.close()
        if callable(self._on_finished):
            self._on_finished()


# Command tags of an Execute that ends the transaction (`_ddl_ended_before_sync`).
_ENDED = frozenset({"COMMIT", "ROLLBACK", "PREPARE TRANSACTION"})

# Kinds of statement that may change client_encoding (`_note_encoding`).
_ENCODING_KINDS = frozenset({"client_encoding", "call", "do_block", "execute"})

_SESSION_KINDS = frozenset(
    {
        "set",
        "search_path",
        "client_encoding",
        "set_role",
        "reset_role",
        "discard",
        "call",
        "do_block",
        "execute",
        "transaction_end",
    }
)


@functools.lru_cache(maxsize=1024)
def _sets_config_param(kinds: tuple[str, ...]) -> bool:
    """set_config() with its setting name in a parameter: which one is known only at
    Execute (kinds repeat: the classifier's cache shares them, so this is a lookup)."""
    return any(k.startswith("set_config_param:") for k in kinds)


def may_change_session(info: StatementInfo, called: frozenset[str] = frozenset()) -> bool:
    """A statement after which the session's settings or role may differ: a SET or
    RESET, DISCARD, a transaction end (it undoes SETs made in it), a routine or DO block
    (they may call set_config), SQL EXECUTE (whatever it holds). ``called``: names of
    user functions a field selection calls on this connection."""
    return (
        not _SESSION_KINDS.isdisjoint(info.kinds)
        or any(k.startswith(("set_config_param:", "setting:")) for k in info.kinds)
        or any(_user_function(f) for f in info.functions)
        or not called.isdisjoint(info.attributes)
    )


def _user_function(name: str) -> bool:
    """A function that is not a known built-in: it may change session settings."""
    schema, _, bare = name.rpartition(".")
    return function_class(schema or None, bare) is None


def _may_commit_inside(verdict: Verdict) -> bool:
    """The statement runs a procedure (CALL) or a DO block: transaction control inside it
    can commit before it fails."""
    return any(k in ("call", "do_block") for i in verdict.statements for k in i.kinds)
