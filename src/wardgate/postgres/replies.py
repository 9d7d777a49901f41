"""Replies from the server: scanned for message boundaries (rows pass through as
slices), each matched to the head of the pending queue, and the action it answers
finished and recorded; ParameterStatus is checked for settings the gateway cannot follow."""

from __future__ import annotations

import asyncio
import logging

from wardgate.audit.records import Record
from wardgate.policy.encodings import python_codec, reported_setting_problem
from wardgate.postgres.codec.backend import BackendMessage
from wardgate.postgres.codec.decode import (
    parse_command_tag,
    parse_error_fields,
    parse_parameter_status,
)
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.masking import mask_error_fields
from wardgate.postgres.probe import SessionProbe
from wardgate.postgres.relay_state import (
    BIND,
    CLOSE,
    DESCRIBE,
    EXECUTE,
    PARSE,
    PROBE,
    QUERY,
    SYNC,
    Pending,
)
from wardgate.postgres.result_tap import ResultTap
from wardgate.postgres.results import ROWS, MaskedResults
from wardgate.postgres.session_model import Portal, Prepared

log = logging.getLogger("wardgate.postgres")

# Messages the server may send at any time, whatever it is answering.
_ASYNCHRONOUS = frozenset(b"NAS")
_ROW_TYPES = frozenset(b"Dd")  # DataRow, CopyData: recorded as the client gets them


class ServerReplies(MaskedResults, SessionProbe):
    def on_upstream_data(self, data: bytes) -> None:
        if self._held is not None:
            self._held.append(data)  # still waiting for column names: keep the order
            return
        try:
            items = self.scanner.feed(data)
        except ProtocolError as exc:
            self._upstream_garbage(exc, [])
            return
        deferred: list[Record] = []
        self._deferred = deferred
        try:
            self._relay_items(items)
        finally:
            # The client has its reply (`_relayed`); now the records of what it answered.
            self._deferred = None
            submit = self.services.recorder.submit
            for record in deferred:
                submit(record)

    def _relay_items(self, items: list[BackendMessage | memoryview]) -> None:
        if self.masking is None:
            self._relay_unmasked(items)
            return
        out: list[bytes | memoryview] = []
        try:
            for i, item in enumerate(items):
                if isinstance(item, memoryview):
                    # Whole DataRows of a masked session (the scanner's whole mode).
                    if oids := self._names_to_fetch(ROWS):
                        self._hold(items[i:], oids)
                        break
                    sent: bytes | memoryview = self._mask_rows(item)
                    out.append(sent)
                    if self._results is not None and (tap := self._tap()) is not None:
                        tap.feed(sent)
                    continue
                if oids := self._names_to_fetch(item):
                    # Column rules need this result's column names: hold the stream.
                    self._hold(items[i:], oids)
                    break
                replacement = self._on_server_message(item)
                sent = item.raw if replacement is None else replacement
                out.append(sent)
                if (
                    (item.type == 68 or item.type == 100)  # D, d: as the client gets them
                    and self._results is not None
                    and (tap := self._tap()) is not None
                ):
                    tap.feed(sent)
        except ProtocolError as exc:
            self._upstream_garbage(exc, out)
            return
        self._relayed(out)

    def _relay_unmasked(self, items: list[BackendMessage | memoryview]) -> None:
        """`_relay_items` for a session whose results are not masked: rows (and COPY
        data) pass as the scanner sliced them (BULK_TYPES, recorded as they go), and so
        does every message no reply of the gateway replaces (a blocked statement's
        error, a probe's answer)."""
        out: list[bytes | memoryview] = []
        pending = self._pending
        recorded = self._results is not None
        try:
            for item in items:
                if isinstance(item, memoryview):
                    out.append(item)
                    if recorded and (tap := self._tap()) is not None:
                        tap.feed(item)
                    continue
                head = pending[0] if pending else None
                replacement: bytes | None
                if head is not None and head.kind == PROBE and item.type not in _ASYNCHRONOUS:
                    replacement = self._on_probe_reply(item, head)
                else:
                    replacement = self._on_server_message_unmasked(item, head)
                sent = item.raw if replacement is None else replacement
                out.append(sent)
                # Unmasked, the scanner streams rows as bulk (a probe's own aside): kept
                # in case, so that no row the client gets misses its recording.
                if recorded and item.type in _ROW_TYPES and (tap := self._tap()) is not None:
                    tap.feed(sent)
        except ProtocolError as exc:
            self._upstream_garbage(exc, out)
            return
        self._relayed(out)

    def _relayed(self, out: list[bytes | memoryview]) -> None:
        """Send what a server chunk became; whoever waits for every reply may go on."""
        if out:
            self.client.write(b"".join(out) if len(out) > 1 else bytes(out[0]))
        drain = self._drain
        if drain is not None and not self._pending and not drain.done():
            drain.set_result(None)  # probe.py waits for every earlier reply
        self._replies_relayed()

    def _tap(self) -> ResultTap | None:
        """The recording of the action whose rows are arriving now: the statement the
        head of the queue is at (never the gateway's own probes)."""
        pending = self._pending
        if not pending:
            return None
        head = pending[0]
        acts = head.acts
        if not acts or (head.kind != QUERY and head.kind != EXECUTE) or head.index >= len(acts):
            return None
        act = acts[head.index] if head.kind == QUERY else acts[0]
        tap = act.tap
        if tap is None:
            assert self._results is not None
            tap = act.tap = ResultTap(self._results, self.client.decoder.encoding)
        return tap

    def _upstream_garbage(self, exc: ProtocolError, out: list[bytes | memoryview]) -> None:
        log.warning("session %s: upstream protocol error: %s", self.session_id, exc)
        if out:  # what came before the malformed message is still the server's answer
            self.client.write(b"".join(out))
        self._fatal(
            "08P01",
            f"wardgate: the database server of connection {self.connection!r} sent malformed data",
        )

    def _on_server_message(self, msg: BackendMessage) -> bytes | None:
        """Match a server reply to what it answers; returns a replacement to send instead, if any."""
        t = msg.type
        pending = self._pending
        head = pending[0] if pending else None
        if head is not None and head.kind == PROBE and t not in _ASYNCHRONOUS:
            return self._on_probe_reply(msg, head)
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
        self, msg: BackendMessage, head: Pending | None
    ) -> bytes | None:
        t = msg.type
        pending = self._pending
        if t == 90:  # Z ReadyForQuery
            while pending:
                entry = pending.popleft()
                self._close_remaining(entry, "not_executed")
                if entry.kind in (QUERY, SYNC):
                    self._batch_answered(entry.batch, msg.raw[5:6])  # the status byte
                    break
            return None
        if t == 83:  # S ParameterStatus
            self._on_parameter_status(msg)
            return None
        if t == 69 and parse_error_fields(msg.body).severity in ("FATAL", "PANIC"):
            # The server ends the session and said why (pg_terminate_backend, shutdown):
            # the client learns it from this message, as it would directly.
            self._server_ended = True
        if head is None:
            return None  # asynchronous: NoticeResponse, NotificationResponse
        if t == 69:  # E ErrorResponse
            self._transaction.error()  # whatever it answers, its transaction cannot commit
            replacement = head.block
            fields = parse_error_fields(msg.body) if replacement is None else None
            if head.kind == SYNC:
                # The implicit transaction failed at its commit (a deferred constraint):
                # what ran before this Sync was rolled back. Its ReadyForQuery follows.
                head.commit_error = fields
                return replacement
            if head.kind == QUERY:
                # The failed statement and the rest of the string do not happen.
                self._refute(head, head.index)
                if head.acts and head.index < len(head.acts):
                    self._finish_act(head.acts[head.index], "error", fields=fields)
                    head.index += 1
                return replacement
            pending.popleft()
            # A failed Parse or Bind (an unknown table, 1 / $1 with 0 folded at Bind) is
            # the error of the statement it would have run: its Execute is recorded
            # failed with it, not as skipped.
            failed = _statement_of(head) if fields is not None else None
            self._refute(head, 0)
            if not any(e.kind == SYNC for e in pending):
                self._batch_failed = True  # the open batch: skipped until its Sync
            if head.acts:
                self._finish_act(head.acts[0], "error", fields=fields)
            # The server now skips everything up to Sync.
            while pending and pending[0].kind != SYNC:
                entry = pending.popleft()
                if (
                    failed is not None
                    and entry.kind == EXECUTE
                    and entry.acts
                    and entry.acts[0].action.text == failed
                ):
                    self._close_remaining(entry, "error", fields)
                    failed = None
                else:
                    self._close_remaining(entry, "not_executed")
            return replacement
        if t == 67 or t == 73:  # C CommandComplete, I EmptyQueryResponse
            if head.kind == QUERY:
                self._confirm(head, head.index)
                if head.acts and head.index < len(head.acts):
                    tag = parse_command_tag(msg.raw[5:]) if t == 67 else ("", None)
                    self._finish_act(head.acts[head.index], "ok", tag=tag)
                    head.index += 1
            elif head.kind == EXECUTE:
                pending.popleft()
                self._confirm(head)
                if head.acts:
                    tag = parse_command_tag(msg.raw[5:]) if t == 67 else ("", None)
                    self._finish_execute(head.acts[0], tag, head.batch)
            return None
        if t == 115:  # s PortalSuspended
            if head.kind == EXECUTE:
                pending.popleft()
                if head.acts:
                    self._finish_execute(head.acts[0], ("SUSPENDED", None), head.batch)
            return None
        if (
            (t == 49 and head.kind == PARSE)
            or (t == 50 and head.kind == BIND)
            or (t == 51 and head.kind == CLOSE)
        ):
            self._confirm(head)
            pending.popleft()  # 1 ParseComplete, 2 BindComplete, 3 CloseComplete
        elif (t == 84 or t == 110) and head.kind == DESCRIBE:  # T RowDescription, n NoData
            pending.popleft()
        return None

    def _batch_answered(self, batch: int, status: bytes) -> None:
        """The ReadyForQuery that closes ``batch``: every setting it changed has been
        reported (ParameterStatus comes first), and a transaction may have ended."""
        model = self.model
        model.confirmed_batch = max(model.confirmed_batch, batch)
        self._answered(batch)
        model.transaction = status.decode("ascii", "replace") or "I"
        if self._ddl_open or self._commit_marks:
            self._ddl_settled(batch, status)
        txn = self._transaction
        if txn.open or (status == b"I" and (txn.aborted or txn.savepoints)):
            # Approved statements' outcomes; else forget the ended transaction's state.
            self._settle_reviews(txn.ready(status))
        if model.transaction == "I" and model.portals.confirmed:
            # Portals die with their transaction, cursors declared WITH HOLD excepted.
            portals = model.portals.confirmed
            model.portals.drop({n for n, p in portals.items() if p.holdable})
        if self._barrier and not model.encoding_uncertain:
            self._barrier = False
            self.client.resume_reading("encoding")
            # Judge what waited once this server chunk is relayed, not from inside it.
            asyncio.get_running_loop().call_soon(self._resume_pump)

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
            log.warning("session %s: ended on a divergence: %s", self.session_id, problem)
            self._fatal("0A000", problem, status="divergence")
            return
        if name == "client_encoding":
            codec = python_codec(value)
            assert codec is not None  # reported_setting_problem checked it
            self.client.decoder.encoding = codec


def _statement_of(entry: Pending) -> str | None:
    """The SQL a Parse or Bind entry prepared or bound (one meaning only), else None."""
    if entry.kind not in (PARSE, BIND) or not entry.changes or not entry.changes[0]:
        return None
    value = entry.changes[0][0].value
    if isinstance(value, Prepared):
        return value.sql
    if isinstance(value, Portal) and len(value.sqls) == 1:
        return value.sqls[0]
    return None
