"""Asking the server, inside the client's own session, for the state a held statement's
meaning depends on (search_path, the current role), so a review shows and binds what
the server will use rather than what the gateway guessed.

Only statements held for a review pay for it, with one round trip. Everything sent
before is answered first (a Flush makes an open extended batch answer); then a named
statement and portal of the gateway's own (random names, closed at once) run
``SELECT current_setting('search_path'), current_user`` and the settings that change
how constants read (``_SQL``) — extended protocol, so an open
implicit transaction is neither committed nor disturbed; a Sync only when no batch of
the client's is open. Its replies never reach the client.
"""

from __future__ import annotations

import asyncio
import secrets

from wardgate.postgres.codec import build
from wardgate.postgres.codec.backend import BackendMessage
from wardgate.postgres.codec.decode import parse_data_row, parse_error_fields
from wardgate.postgres.relay_state import PROBE, Pending, RelayState

# The settings that change how the server reads a statement's constants or which rows
# it returns, taken from PostgreSQL's own catalogue rather than a list: every setting a
# session may change in "Locale and Formatting" (DateStyle, IntervalStyle, TimeZone,
# timezone_abbreviations, lc_numeric...: '01/02/2026' is 2 January or 1 February),
# plus xmloption and gin_fuzzy_search_limit, and the two "Statement Behavior" settings
# that change how a value is written as text (bytea_output: '\x41'::bytea::text is
# 'A' under escape; xmlbinary: base64 or hex in XML), which an approved write may store.
# client_encoding is the session model's.
_SQL = (
    "SELECT pg_catalog.current_setting('search_path'), CURRENT_USER::pg_catalog.text, "
    "(SELECT pg_catalog.string_agg(s.name || '=' || s.setting, E'\\n' ORDER BY s.name) "
    "FROM pg_catalog.pg_settings s WHERE s.context = 'user' AND s.name <> 'client_encoding' "
    "AND (s.category = 'Client Connection Defaults / Locale and Formatting' "
    "OR s.name IN ('xmloption', 'gin_fuzzy_search_limit', 'bytea_output', 'xmlbinary')))"
)
_TIMEOUT = 10.0


class ContextUnknown(Exception):
    """The session's state could not be read; ``reason`` is safe to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Probe:
    __slots__ = ("future", "row", "sync", "done", "bulk")

    def __init__(self, future: asyncio.Future[tuple[str, str, str]], sync: bool) -> None:
        self.future = future
        self.row: tuple[str, str, str] | None = None
        self.sync = sync  # sent with its own Sync: its ReadyForQuery is ours too
        self.done = False
        self.bulk: frozenset[int] = frozenset()  # the scanner's bulk types, restored after


class SessionProbe(RelayState):
    _drain: asyncio.Future[None] | None
    _batch_open: bool  # extended messages sent since the last Sync
    _batch_failed: bool  # the server answered an error in the open batch

    async def _session_context(self) -> tuple[tuple[str, str], ...]:
        """``(("search_path", ...), ("current_user", ...), (setting, value)...)`` as the
        server has them now, or () when the statement cannot run anyway (an aborted transaction, a failed
        batch). Raises ContextUnknown when the server does not answer."""
        loop = asyncio.get_running_loop()
        if self._pending:
            self._drain = loop.create_future()
            if self._batch_open:
                self.upstream.write(build.flush())  # an open batch answers without Sync
            try:
                await asyncio.wait_for(self._drain, _TIMEOUT)
            except TimeoutError:
                raise ContextUnknown("the server did not answer the statements before it") from None
            finally:
                self._drain = None
        if self._batch_failed or self.model.transaction == "E":
            return ()  # the server refuses the held statement whatever it means
        name = "_wardgate_" + secrets.token_hex(8)
        probe = Probe(loop.create_future(), sync=not self._batch_open)
        # Its DataRow must be read here, not streamed to the client as bulk data.
        probe.bulk, self.scanner.bulk = self.scanner.bulk, frozenset()
        self._pending.append(Pending(PROBE, probe=probe))
        self.upstream.write(
            build.parse(name, _SQL)
            + build.bind(name, name)
            + build.execute(name)
            + build.close("P", name)
            + build.close("S", name)
            + (build.sync() if probe.sync else build.flush())
        )
        try:
            search_path, user, settings = await asyncio.wait_for(probe.future, _TIMEOUT)
        except TimeoutError:
            raise ContextUnknown("the server did not answer the gateway's question") from None
        pairs = [line.partition("=") for line in settings.splitlines()]
        return (
            ("search_path", search_path),
            ("current_user", user),
            *((name, value) for name, _, value in pairs),
        )

    def _on_probe_reply(self, msg: BackendMessage, entry: Pending) -> bytes:
        """One server message answering the probe at the head of the queue: consumed
        here, never relayed (the empty replacement)."""
        probe = entry.probe
        assert probe is not None
        t = msg.type
        if t == 68:  # D DataRow
            values = parse_data_row(msg.body)
            encoding = self.client.decoder.encoding
            if len(values) == 3 and all(v is not None for v in values[:2]):
                probe.row = (
                    bytes(values[0] or b"").decode(encoding, "replace"),
                    bytes(values[1] or b"").decode(encoding, "replace"),
                    bytes(values[2] or b"").decode(encoding, "replace"),
                )
        elif t == 67 and not probe.future.done():  # C CommandComplete
            if probe.row is not None:
                probe.future.set_result(probe.row)
            else:
                probe.future.set_exception(ContextUnknown("the server's answer was empty"))
        elif t == 69:  # E ErrorResponse: the rest of the probe is skipped until a Sync
            fields = parse_error_fields(msg.body)
            if not probe.future.done():
                probe.future.set_exception(ContextUnknown(fields.message))
            if not probe.sync:
                self._batch_failed = True
                self._probe_done(probe)
                return b""
        closing = 90 if probe.sync else 51  # the last reply: ReadyForQuery, or CloseComplete
        if t == closing:
            if t == 51 and not probe.done:
                probe.done = True  # the first CloseComplete (the portal): one more comes
                return b""
            self._probe_done(probe)
        return b""

    def _probe_done(self, probe: Probe) -> None:
        self._pending.popleft()
        self.scanner.bulk = probe.bulk
