"""The steady state of a PostgreSQL session: gate every statement, relay, record.

Client messages are decoded (they carry the statements to judge); server bytes
are only scanned for message boundaries, and DataRow/CopyData pass through as
slices. Each forwarded request pushes what it expects back onto `_pending`, so
every server reply is matched to the statement it answers, even in pipelines.

A blocked statement is never sent. In its place the server gets a statement
that fails to parse, so it enters exactly the error state PostgreSQL itself
would (an open transaction is aborted, an extended-protocol batch is skipped
to Sync); its error reply is then replaced by wardgate's own ErrorResponse.

The phases live in their own modules, each a class PgRelay is made of:
simple_query.py (Query), extended.py (Parse, Bind, Execute, Close), review_hold.py (a
statement waiting for a human), replies.py (server replies matched to what they answer,
and recorded), results.py (masking rows, errors and COPY out); relay_state.py holds the
state they share.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import TYPE_CHECKING

from wardgate import metrics
from wardgate.actions import Decision, Verdict
from wardgate.identity.principals import Principal
from wardgate.postgres.catalog_watch import read_board_while
from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.backend import BULK_TYPES, BackendScanner
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.commit_barrier import CommitBarrier, Refused
from wardgate.postgres.extended import ExtendedProtocol
from wardgate.postgres.masking import ResultMasking
from wardgate.postgres.relay_state import DESCRIBE, SYNC, Pending, PendingQueue, SessionLimit
from wardgate.postgres.replies import ServerReplies
from wardgate.postgres.result_tap import SessionResults
from wardgate.postgres.results import MASKED_BULK_TYPES
from wardgate.postgres.session_model import NamesFull, SessionModel
from wardgate.postgres.simple_query import SimpleQuery
from wardgate.postgres.transaction import TransactionOutcome
from wardgate.postgres.wire import ClientSide, UpstreamSide

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.postgres")

# Messages whose bytes carry no text the server decodes in the client encoding (or data
# the gateway does not judge): Sync, Flush, Terminate, CopyData, CopyDone, CopyFail.
_ASCII_SAFE_TYPES = frozenset(b"SHXdcf")

# Client messages forwarded and not yet answered (their batch's ReadyForQuery has not
# come) keep what the gateway needs for their answer: the statement's text and verdict
# for the record, masking plans, name changes. The upstream's write buffer does not bound
# them (the kernel's socket buffers on the way to the server and back take tens of MB),
# so a client that pipelines large statements and does not read their results would
# make the gateway hold a copy of each. Past this many bytes the client is not read
# until answers come back. Each message counts its size plus a fixed share for the
# gateway's own bookkeeping, so many tiny statements are bounded too.
#
# The same budget bounds the requests waiting for their reply in the queue (_pending),
# whatever their batch: in an open extended batch (no Sync yet) the server answers
# only when its 8 KB output buffer fills, or at a Flush, and while it waits (a lock, a
# long statement) the gateway would go on judging and forwarding what the client
# sends, each holding its statement, until the kernel's buffers to the server are full
# (hundreds of thousands of small messages). Past the budget the client is not read,
# and the server is sent a Flush, so that it answers what it has run; reading resumes
# at half.
UNANSWERED_BYTES = 8 * 1024 * 1024
_COPY_MESSAGES = frozenset((m.CopyData, m.CopyDone, m.CopyFail))
# A Query that only ends a transaction: judged without any catalogue facts, so it does
# not wait for them after DDL (`_needs_no_facts`).
_TRANSACTION_END = re.compile(
    rb"\s*(?:commit|rollback|abort|end)(?:\s+(?:work|transaction))?\s*;?\s*\x00", re.IGNORECASE
)
_PASSED_ON = _COPY_MESSAGES | {m.Flush}  # forwarded as they are
_MESSAGE_OVERHEAD = 1024


def _needs_no_facts(raw: bytes) -> bool:
    """Whether the client's next message is judged the same whatever the catalogue
    holds: a Sync, Flush or Terminate, or a Query that only ends the transaction. Those
    need not wait for the catalogue watch after DDL: a session holding a lock that a
    migration's DDL waits for could otherwise not roll back until the wait ran out,
    since the look it waits for comes only once that DDL is answered."""
    if raw[0] in b"SHX":
        return True
    return raw[0] == 0x51 and _TRANSACTION_END.fullmatch(raw, 5) is not None


class PgRelay(SimpleQuery, ExtendedProtocol, ServerReplies):
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
        # The masking of the configuration in force now is the session's own
        # (relay_state.py `_masking_changed` compares later configurations' with it).
        self._masking_now = (services.config, False)
        limits = services.config.limits
        self.masking = (
            ResultMasking(session_masking, limits.session_names)
            if session_masking is not None
            else None
        )
        # Unmasked sessions stream rows (and COPY data) untouched; masked sessions take
        # runs of whole DataRows in bulk (results.py: passed on as they are when no
        # rule can touch them) and COPY data message by message.
        self.scanner.bulk = BULK_TYPES if self.masking is None else MASKED_BULK_TYPES
        self.scanner.whole = self.masking is not None
        conn = services.config.connections.get(connection)
        results = conn.results if conn is not None else None
        self._results = (
            SessionResults(results.rows, results.bytes, results.session_bytes)
            if results is not None and results.record
            else None
        )
        self._held: list[bytes] | None = None  # server data held while names are looked up
        self._pending = PendingQueue()
        self.model = SessionModel()
        for names in (self.model.statements, self.model.portals):
            names.most, names.most_bytes = limits.session_names, limits.session_name_bytes
        self._discarding = False  # after a block in extended mode, until Sync
        self._barrier = False
        # Bytes of forwarded client messages per batch awaiting its ReadyForQuery, and
        # whether reading stopped because they passed UNANSWERED_BYTES.
        self._unanswered: deque[list[int]] = deque()
        self._unanswered_bytes = 0
        self._backlogged = False
        self._queue_full = False  # reading stopped: _pending costs more than UNANSWERED_BYTES
        self._batch_open = False  # extended messages sent since the last Sync
        self._batch_ran = False  # ...and among them an Execute forwarded
        self._batch_failed = False  # ... and the server answered one with an error
        self._drain: asyncio.Future[None] | None = None  # set when every reply has come
        self._seq = 0
        self._transaction = TransactionOutcome()  # approved statements until COMMIT
        self._finished = False
        self._server_ended = False
        self._on_finished = on_finished
        self.read_only = read_only  # the upstream session was opened read-only
        self.review_wait = review_wait  # how long a statement waits inline for approval
        self._reviewing = False  # a statement is held for a review: read no further
        self._review_task: asyncio.Task[None] | None = None
        self._review_cancelled = False
        # DDL and the catalogue facts (gate.CatalogFacts): a DDL statement was forwarded
        # and the transaction it ran in has not ended (this session's statements are
        # judged as the worst case); a statement after DDL in the same Query string; and
        # the batches sent meanwhile, which may commit it, with whether they held a
        # transaction statement (COMMIT AND CHAIN ends one and leaves a block open) and
        # the connections they concern (all those to the same database).
        self._ddl_open = False
        self._ddl_batch = 0
        self._ddl_in_string = False
        self._txn_statement = False
        self._commit_marks: deque[tuple[int, bool, tuple[str, ...]]] = deque()
        # Reading stopped until the catalogue is read again after DDL (`_wait_for_facts`),
        # its timer, and whether the last wait ran out (judged as the worst case then).
        self._facts_barrier = False
        self._facts_timer: asyncio.TimerHandle | None = None
        self._facts_gave_up = False
        self._hold_for = None
        self._held_unsent = 0
        self._held_since = 0
        self._hold_task = None
        self.cancel_to = None
        self.backend = None

    @property
    def idle(self) -> bool:
        """Between transactions with nothing in flight: ending the session now loses no
        work (how a draining gateway picks the sessions it may close at once)."""
        return not self._pending and not self._reviewing and self.model.transaction == "I"

    # -- client -> upstream -------------------------------------------------------------

    def on_client_data(self, data: bytes) -> None:
        try:
            self.client.decoder.feed(data)
        except ProtocolError as exc:
            self._fatal("08P01", f"wardgate: protocol violation: {exc}")
            return
        if self._may_pump():
            self._pump()

    def _may_pump(self) -> bool:
        return not (
            self._reviewing
            or self._barrier
            or self._backlogged
            or self._queue_full
            or self._facts_barrier
            or self._hold_for is not None
        )

    def _resume_pump(self) -> None:
        if not self._finished and self._may_pump():
            self._pump()

    def _pump(self) -> None:
        """Judge and forward the client's buffered messages until none is left, one is
        held for a review, one must wait for the server to confirm the encoding, or too
        much forwarded awaits its answer (the rest wait, in order, in the decoder)."""
        one = False  # judge one message, then look at the facts again
        if (
            not self._ddl_open
            and not self._facts_gave_up
            and self.services.gate.facts.changing(self.connection)
        ):
            try:
                raw = self.client.decoder.peek_raw()
            except ProtocolError:
                raw = b"?"  # refused once it is read, after the wait
            if raw is None:
                return  # no whole message yet: read on (a ROLLBACK may come in pieces)
            if not _needs_no_facts(raw):
                self._wait_for_facts()
                return
            one = True
        decoder = self.client.decoder
        pending = self._pending
        model = self.model
        out: list[bytes] = []
        sent, since = len(pending), time.monotonic_ns()  # what `_send_judged` may hold
        try:
            # `_may_pump`, spelled out (but for `_facts_barrier`, which only the test
            # above sets): this loop runs for every client message.
            while not (
                self._reviewing
                or self._barrier
                or self._backlogged
                or self._queue_full
                or self._hold_for is not None
            ):
                if model.encoding_batch > model.confirmed_batch:  # encoding_uncertain
                    if self._encoding_barrier(out):
                        continue
                    if self._barrier:
                        break
                item = decoder.next_message()
                if item is None:
                    break
                msg, raw = item
                if self._discarding and not isinstance(msg, m.Sync):
                    continue
                batch = model.batch
                queued = len(pending)
                self._on_client_message(msg, raw, out)
                if type(msg) in _COPY_MESSAGES:
                    # COPY data is passed on, not kept; and the server answers a COPY
                    # only after its CopyDone, so counting it would stop a long COPY.
                    continue
                size = len(raw) + _MESSAGE_OVERHEAD
                self._count_unanswered(batch, size)
                if len(pending) > queued:
                    if self._batch_failed:
                        self._skipped_by_server(queued)
                    else:
                        pending.charge(pending[-1], size)
                        if pending.cost > UNANSWERED_BYTES and not self._finished:
                            self._wait_for_answers(out)
                if one:
                    if decoder.buffered:
                        asyncio.get_running_loop().call_soon(self._resume_pump)
                    break
        except ProtocolError as exc:
            self._send_judged(out, sent, since)
            self._fatal("08P01", f"wardgate: protocol violation: {exc}")
            return
        except (NamesFull, SessionLimit) as exc:
            self._send_judged(out, sent, since)
            self._over_limit(exc)
            return
        if out:
            if self._hold_for is None:
                self.upstream.write(out[0] if len(out) == 1 else b"".join(out))
            else:
                self._send_judged(out, sent, since)
        recorder = self.services.recorder
        if recorder.congested and not recorder.unavailable:
            # Stop reading clients until the audit log catches up: nothing is lost, nothing unbounded.
            self.client.pause_reading("recorder")
            recorder.on_drained(lambda: self.client.resume_reading("recorder"))

    def _send_judged(self, out: list[bytes], sent: int, since: int) -> None:
        """Send ``out``, what was judged from ``since`` (time.monotonic_ns, when its
        first statement was) on, since ``_pending`` held ``sent`` entries; or, when it
        may commit DDL that must wait for the commit barrier (`_may_commit`), hold it
        (and the client) until other sessions' statements are answered. Held, it
        counts for other drains as judged at ``since``: a long string is judged
        statement by statement, and its first may be a read judged long before the
        hold (attack14p)."""
        if self._hold_for is None or not out:
            if out:
                self.upstream.write(b"".join(out))
            self._hold_for = None
            return
        self._held_unsent = len(self._pending) - sent
        self._held_since = since
        self.client.pause_reading("commit-barrier")
        self._hold_task = self.services.tasks.spawn(
            self._send_after_drain(b"".join(out), self._hold_for),
            name=f"commit-barrier-{self.session_id}",
        )

    async def _send_after_drain(self, data: bytes, names: tuple[str, ...]) -> None:
        try:
            await self.services.state(CommitBarrier).drain(
                self.services, self.connection, names, self, self._held_since
            )
        except Refused as exc:
            if not self._finished:
                self._commit_refused(str(exc))
            return
        self._hold_task = None
        if self._finished:
            return
        self._hold_for = None
        self._held_unsent = 0
        self.upstream.write(data)
        self.client.resume_reading("commit-barrier")
        self._resume_pump()

    def _commit_refused(self, message: str) -> None:
        """The held batch is never sent (`finish` records what it holds as not
        executed); the session ends, and an open transaction rolls back with it."""
        self._hold_task = None
        log.warning("session %s: ended: %s", self.session_id, message)
        self._fatal("55P03", message)

    def _on_client_message(self, msg: m.FrontendMessage, raw: bytes, out: list[bytes]) -> None:
        # By exact type (the message classes are final), the most frequent first.
        if type(msg) is m.Bind:
            self._batch_open = True
            self._on_bind(msg, raw, out)
        elif type(msg) is m.Execute:
            self._batch_open = True
            self._on_execute(msg, raw, out)
        elif type(msg) is m.Sync:
            self._discarding = self._batch_open = self._batch_failed = self._batch_ran = False
            self._pending.append(Pending(SYNC, batch=self.model.batch))
            self._next_batch()
            out.append(raw)
        elif type(msg) is m.Describe:
            self._batch_open = True
            self._on_describe(msg, raw, out)
        elif type(msg) is m.Query:
            self._on_query(msg, raw, out)
        elif type(msg) is m.Parse:
            self._batch_open = True
            self._on_parse(msg, raw, out)
        elif type(msg) is m.Close:
            self._batch_open = True
            self._on_close(msg, raw, out)
        elif type(msg) in _PASSED_ON:
            out.append(raw)
        elif type(msg) is m.Terminate:
            out.append(raw)
            self.upstream.write(b"".join(out))
            out.clear()
            self.finish("closed")
        elif type(msg) is m.FunctionCall:
            self._on_function_call(msg, out)
        else:
            raise ProtocolError(f"unexpected {type(msg).__name__} message after startup")

    def _on_describe(self, msg: m.Describe, raw: bytes, out: list[bytes]) -> None:
        pending = Pending(DESCRIBE, target=(msg.target, msg.name))
        if self.masking is not None:
            pending.version = self.masking.version(msg.target, msg.name)
        self._pending.append(pending)
        out.append(raw)

    def _count_unanswered(self, batch: int, size: int) -> None:
        """``size`` bytes of ``batch`` (a message's and `_MESSAGE_OVERHEAD`) were judged
        (and forwarded, or refused in the server's own way): held until the batch's
        ReadyForQuery (``_answered``). Past
        UNANSWERED_BYTES the client is not read, but only once the batch is closed (a
        Query, or a Sync): the server answers an open extended batch only at its Sync or
        Flush, so stopping before it would wait forever."""
        entries = self._unanswered
        if entries and entries[-1][0] == batch:
            entries[-1][1] += size
        else:
            entries.append([batch, size])
        self._unanswered_bytes += size
        if (
            self._unanswered_bytes > UNANSWERED_BYTES
            and not self._batch_open
            and not self._finished
        ):
            self._backlogged = True
            self.client.pause_reading("unanswered")

    def _skipped_by_server(self, queued: int) -> None:
        """The server answered an error in the open batch, so it skips every message up
        to the Sync without a word: what was just queued (entries from ``queued`` on)
        will never be answered, and is closed now (as the Sync's ReadyForQuery would),
        not kept until a Sync that may never come."""
        pending = self._pending
        skipped = [pending.pop_last() for _ in range(len(pending) - queued)]
        for entry in reversed(skipped):
            self._close_remaining(entry, "not_executed")

    def _wait_for_answers(self, out: list[bytes]) -> None:
        """The requests awaiting their reply cost more than UNANSWERED_BYTES: read the
        client no further until half is answered (`_replies_relayed`). In an open batch
        the server holds its answers until its output buffer fills or a Sync or Flush
        comes: a Flush after what was forwarded makes it send them."""
        self._queue_full = True
        self.client.pause_reading("unanswered-queue")
        if self._batch_open:
            out.append(build.flush())

    def _replies_relayed(self) -> None:
        if self._queue_full and self._pending.cost <= UNANSWERED_BYTES // 2:
            self._queue_full = False
            self.client.resume_reading("unanswered-queue")
            asyncio.get_running_loop().call_soon(self._resume_pump)

    def _over_limit(self, exc: Exception) -> None:
        """A client message would pass a limit of the session (its names): it ends."""
        limits = "limits.session_names, limits.session_name_bytes"
        message = (
            f"wardgate: session limit: this session would hold {exc} of prepared "
            f"statements or portals ({limits}); close (DEALLOCATE) the ones it no longer "
            "needs, or reconnect"
            if isinstance(exc, NamesFull)
            else f"wardgate: session limit: {exc}"
        )
        log.warning("session %s: ended: %s", self.session_id, message)
        metrics.protocol_violation("postgres", "session_limit")
        self._fatal("54000", message, status="protocol_violation")

    def _answered(self, batch: int) -> None:
        """The ReadyForQuery closing ``batch`` came: it and every earlier batch are
        answered; reading resumes once half the budget is free again."""
        entries = self._unanswered
        while entries and entries[0][0] <= batch:
            self._unanswered_bytes -= entries.popleft()[1]
        if self._backlogged and self._unanswered_bytes <= UNANSWERED_BYTES // 2:
            self._backlogged = False
            self.client.resume_reading("unanswered")
            # Judge what waited once this server chunk is relayed, not from inside it.
            asyncio.get_running_loop().call_soon(self._resume_pump)

    def _wait_for_facts(self) -> None:
        """DDL through the gateway (this session's committed, or another's) may have
        changed the catalogue, and the watch is reading it again (gate.CatalogFacts):
        read the client no further until it has, at most ``limits.connect_timeout``;
        then judge as the worst case ("retry in a moment") until the facts are read."""
        self._facts_barrier = True
        self.client.pause_reading("catalogue")
        self.services.gate.facts.when_settled(self.connection, self._facts_read)
        self._facts_timer = asyncio.get_running_loop().call_later(
            self.services.config.limits.connect_timeout, self._facts_timed_out
        )
        read_board_while(
            self.services, self.connection, lambda: self._facts_barrier and not self._finished
        )

    def _facts_read(self) -> None:
        self._facts_gave_up = False
        if self._facts_barrier:
            self._end_facts_wait()

    def _facts_timed_out(self) -> None:
        self._facts_timer = None
        if self._facts_barrier:
            self._facts_gave_up = True
            self._end_facts_wait()

    def _end_facts_wait(self) -> None:
        self._facts_barrier = False
        if self._facts_timer is not None:
            self._facts_timer.cancel()
            self._facts_timer = None
        if not self._finished:
            self.client.resume_reading("catalogue")
            asyncio.get_running_loop().call_soon(self._resume_pump)

    def _encoding_barrier(self, out: list[bytes]) -> bool:
        """While a statement that may have changed client_encoding awaits its answer,
        a message with bytes beyond ASCII could be decoded one way here and another on
        the server (in every encoding PostgreSQL accepts from clients, ASCII bytes are
        ASCII). Such a message waits for the batch's ReadyForQuery, which carries the
        server's word on the encoding; in the very batch that changed it (no Sync sent, so
        no answer can come) it is refused. True when a message was refused."""
        raw = self.client.decoder.peek_raw()
        if raw is None or raw[0] in _ASCII_SAFE_TYPES or max(raw[5:], default=0) < 0x80:
            return False
        if self._discarding:
            return False  # dropped until Sync anyway, never decoded
        model = self.model
        if model.encoding_batch == model.batch:
            self.client.decoder.skip_message()
            verdict = Verdict(
                Decision.BLOCK,
                "wardgate:encoding-barrier",
                "this message follows, in the same pipeline, a statement that may change "
                "client_encoding, and holds bytes beyond ASCII, which the gateway cannot read "
                "as the server will until the server confirms the encoding; send Sync after "
                "that statement and the rest after its result",
            )
            self._block_extended(
                f"-- a {chr(raw[0])!r} message of {len(raw)} bytes", (), verdict, out
            )
            return True
        self._barrier = True
        self.client.pause_reading("encoding")
        return False

    # -- flow control and endings -------------------------------------------------------

    def client_write_paused(self, paused: bool) -> None:
        (self.upstream.pause_reading if paused else self.upstream.resume_reading)("client-buffer")

    def upstream_write_paused(self, paused: bool) -> None:
        (self.client.pause_reading if paused else self.client.resume_reading)("upstream-buffer")

    def on_client_closed(self) -> None:
        self.finish("closed")  # (the upstream gets its Terminate there)

    def on_upstream_closed(self) -> None:
        if not self._finished and self._server_ended:
            # Its FATAL error went to the client already: close as the server did,
            # without a second error the client would read as the answer to its next
            # statement ("received 2 results"). Closed before the session's end is
            # recorded, which may take a while: the client learns at once, as directly.
            self.client.close()
            self.finish("upstream_lost", "the database server ended the session")
        elif not self._finished:
            log.warning(
                "session %s: upstream of %r closed the connection", self.session_id, self.connection
            )
            self._fatal(
                "08006",
                f"wardgate: lost the connection to the database server of connection {self.connection!r}; reconnect to retry",
                status="upstream_lost",
            )
