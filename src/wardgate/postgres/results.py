"""Results on their way to the client when masking applies: rows masked by a plan,
error fields, and COPY out data. A column rule needs the result's column names from
the catalog first; the server's stream is held until they arrive."""

from __future__ import annotations

import logging
from collections.abc import Callable

from wardgate.postgres.catalog import ColumnNames
from wardgate.postgres.codec.backend import BackendMessage
from wardgate.postgres.codec.decode import Column, parse_row_description
from wardgate.postgres.masking import Plan, mask_copy_data, mask_data_row, mask_data_rows
from wardgate.postgres.relay_state import DESCRIBE, EXECUTE, QUERY, Pending, RelayState

log = logging.getLogger("wardgate.postgres")

# A masked session's scanner hands back runs of whole DataRows (BackendScanner.whole);
# COPY data comes message by message.
MASKED_BULK_TYPES = frozenset(b"D")
ROWS = BackendMessage(68, b"")  # what _names_to_fetch is asked for a run of DataRows
_DESCRIPTIONS: dict[bytes, list[Column]] = {}  # RowDescription bodies, parsed: clients repeat


def _described(body: bytes) -> list[Column]:
    """The columns of a RowDescription body (parsed once per distinct body; the list
    is shared, callers do not change it)."""
    columns = _DESCRIPTIONS.get(body)
    if columns is None:
        columns = parse_row_description(body)
        if len(_DESCRIPTIONS) >= 1024:
            _DESCRIPTIONS.clear()
        _DESCRIPTIONS[body] = columns
    return columns


class MaskedResults(RelayState):
    # replies.py: the server side, where held results go back in.
    _relay_items: Callable[[list[BackendMessage | memoryview]], None]
    on_upstream_data: Callable[[bytes], None]

    def _names_to_fetch(self, msg: BackendMessage) -> set[int]:
        """Table OIDs whose column names a column rule needs before ``msg`` can go on."""
        assert self.masking is not None
        if not self.masking.masking.columns:
            return set()
        if msg.type == 84:  # T
            columns = _described(msg.body)
        elif msg.type == 68 and self._pending and self._pending[0].kind == EXECUTE:
            head = self._pending[0]
            if head.planned or head.version is None:
                return set()
            columns = self.masking.portal_columns(head.version)
        else:
            return set()
        oids = self.masking.table_oids(columns)
        if not oids or self.services.state(ColumnNames).known(self.connection, oids) is not None:
            return set()
        return oids

    def _names(self, columns: list[Column]) -> dict[tuple[int, int], str]:
        assert self.masking is not None
        oids = self.masking.table_oids(columns)
        return (self.services.state(ColumnNames).known(self.connection, oids) or {}) if oids else {}

    def _hold(self, items: list[BackendMessage | memoryview], oids: set[int]) -> None:
        held = [bytes(i) if isinstance(i, memoryview) else i.raw for i in items]
        self._held = []
        self.upstream.pause_reading("catalog")

        async def fetch_then_release() -> None:
            try:
                await self.services.state(ColumnNames).fetch(self.services, self.connection, oids)
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

    def _row_plan(self, head: Pending | None) -> Plan | None:
        """The plan for the DataRows arriving now: the Execute's portal's, or the simple
        query's current result's."""
        masking = self.masking
        assert masking is not None
        if head is not None and head.kind == EXECUTE and head.version is not None:
            if not head.planned:
                columns = masking.portal_columns(head.version)
                head.plan = masking.plan_for_portal(
                    head.version, self._names(columns), head.outputs
                )
                head.planned = True
            return head.plan
        return masking.plan

    def _mask_rows(self, run: memoryview) -> bytes | memoryview:
        """A run of whole DataRows, as the client gets it: untouched when the plan is
        empty (no rule can touch this result) or proves none can change (rows_clean),
        else row by row."""
        assert self.masking is not None
        plan = self._row_plan(self._pending[0] if self._pending else None)
        if plan is None:
            return run
        data = bytes(run)
        out = mask_data_rows(data, plan, self.masking.masking, self.client.decoder.encoding)
        return run if out is data else out

    def _mask_server_message(self, msg: BackendMessage, head: Pending | None) -> bytes | None:
        """Masking of one server message; None to handle it as unmasked."""
        masking = self.masking
        assert masking is not None
        t = msg.type
        encoding = self.client.decoder.encoding
        if t == 68:  # D DataRow
            plan = self._row_plan(head)
            if plan is None:
                return msg.raw
            return mask_data_row(msg.raw, plan, masking.masking, encoding)
        if t == 84:  # T RowDescription
            columns = _described(msg.body)
            if head is not None and head.kind == DESCRIBE and head.version is not None:
                masking.described(head.version, columns)
            else:
                # A simple query's result: its columns the database masked, if the
                # Query's text is one SELECT that says which (mask_outputs.py).
                outputs = head.outputs if head is not None and head.kind == QUERY else None
                masked = outputs.of(len(columns)) if outputs is not None else frozenset()
                masking.plan = masking.plan_of(columns, self._names(columns), masked)
            return None
        if t == 110 and head is not None and head.kind == DESCRIBE and head.version is not None:
            masking.described(head.version, [])  # n NoData
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
