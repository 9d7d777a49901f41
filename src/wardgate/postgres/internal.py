"""The gateway's own queries on a connection: one small client, bounded everywhere.

Catalog lookups, impact previews and approved proposals all run here, on a short-lived
session of their own dialled with the credential the gateway holds. Every exchange has
a deadline, a result keeps at most ``max_rows`` rows (the rest are read and dropped),
and the session always ends with Terminate, so the server rolls back whatever
transaction was left open. Errors the server reports are results, not exceptions:
only a failed exchange (unreachable, cut, too slow) raises, as `InternalQueryFailed`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from wardgate.config import Config
from wardgate.policy.encodings import reported_setting_problem
from wardgate.postgres.backends import Backend
from wardgate.postgres.codec import build
from wardgate.postgres.codec.decode import (
    Column,
    parse_command_tag,
    parse_data_row,
    parse_error_fields,
    parse_parameter_status,
    parse_ready_for_query,
    parse_row_description,
)
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.upstream import UpstreamUnavailable, dial_connection, send_cancel
from wardgate.postgres.wire import ConnectionClosed, UpstreamSide
from wardgate.vault.secrets import SecretError, Vault

log = logging.getLogger("wardgate.internal")

DEFAULT_MAX_ROWS = 100

_FATAL = frozenset({"FATAL", "PANIC"})


class HasCredentials(Protocol):
    """What dialling needs: `Services` has it; so can a test's small stand-in."""

    @property
    def config(self) -> Config: ...

    @property
    def vault(self) -> Vault: ...


class InternalQueryFailed(Exception):
    """The exchange itself failed; `reason` is safe to show, `sqlstate` says it on the wire
    (08006 connection failure, 57014 timed out, 22021 text PostgreSQL cannot carry)."""

    def __init__(self, reason: str, sqlstate: str = "08006") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class ServerError:
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class Result:
    """One statement's outcome. `command` and `count` come from the CommandComplete tag
    ("UPDATE", 3); an empty query has command "". Values are text, None for NULL."""

    command: str = ""
    count: int | None = None
    columns: tuple[str, ...] = ()
    rows: tuple[tuple[str | None, ...], ...] = ()
    truncated: bool = False  # more rows came than were kept
    error: ServerError | None = None
    # The RowDescription's columns (table oid, attnum, type): what column masking needs.
    fields: tuple[Column, ...] = ()

    @property
    def ok(self) -> bool:
        return self.error is None


def _text_row(body: bytes) -> tuple[str | None, ...]:
    # The session's client_encoding is UTF8 and every result column is text; a stray
    # byte is shown replaced rather than failing the query.
    return tuple(
        None if value is None else value.decode("utf-8", "replace")
        for value in parse_data_row(body)
    )


def _setting_problem(name: str, value: str) -> str | None:
    """Why a session whose server reports ``name = value`` cannot carry the gateway's
    own queries: they are written in UTF-8 and were judged by a parser that reads
    strings with standard_conforming_strings on."""
    if name == "client_encoding" and value.upper() not in ("UTF8", "UNICODE"):
        return f"the session's client_encoding became {value!r}; the gateway's queries are UTF-8"
    if name == "standard_conforming_strings":
        return reported_setting_problem(name, value)
    return None


class _Collector:
    """Turns one exchange's server messages into Results (pure: no I/O)."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.results: list[Result] = []
        self.fatal: ServerError | None = None
        self.setting_problem: str | None = None
        self._reset()

    def _reset(self) -> None:
        self._columns: tuple[str, ...] = ()
        self._fields: tuple[Column, ...] = ()
        self._rows: list[tuple[str | None, ...]] = []
        self._truncated = False

    def _finish(self, result: Result) -> None:
        self.results.append(result)
        self._reset()

    def feed(self, kind: int, body: bytes) -> None:
        if kind == 0x44:  # D DataRow
            if len(self._rows) < self.max_rows:
                self._rows.append(_text_row(body))
            else:
                self._truncated = True
        elif kind == 0x54:  # T RowDescription
            self._reset()
            self._fields = tuple(parse_row_description(body))
            self._columns = tuple(c.name for c in self._fields)
        elif kind == 0x43:  # C CommandComplete
            command, count = parse_command_tag(body)
            self._finish(
                Result(
                    command,
                    count,
                    self._columns,
                    tuple(self._rows),
                    self._truncated,
                    fields=self._fields,
                )
            )
        elif kind == 0x49:  # I EmptyQueryResponse
            self._finish(Result())
        elif kind == 0x45:  # E ErrorResponse
            fields = parse_error_fields(body)
            error = ServerError(fields.sqlstate, fields.message, fields.detail, fields.hint)
            if fields.severity in _FATAL:
                self.fatal = error
            self._finish(Result(columns=self._columns, error=error))
        elif kind == 0x53:  # S ParameterStatus: a statement changed a reported setting
            self.setting_problem = self.setting_problem or _setting_problem(
                *parse_parameter_status(body)
            )
        # Everything else (ParseComplete, BindComplete, NoData, notices, notifications,
        # COPY OUT data) carries nothing a result keeps.


class InternalSession:
    def __init__(
        self,
        side: UpstreamSide,
        *,
        timeout: float,
        max_rows: int,
        cancel_to: tuple[str, int, int, bytes],
        parameters: Mapping[str, str] | None = None,
        backend: Backend | None = None,
    ) -> None:
        self._side = side
        # The server's ParameterStatus values at startup (server_encoding...).
        self.parameters: Mapping[str, str] = dict(parameters or {})
        self._timeout = timeout
        self._max_rows = max_rows
        self.cancel_to = cancel_to
        self.backend = backend
        self._broken: str | None = None
        self.in_flight = False  # an exchange began and did not end: the server may be busy
        self.closed: asyncio.Task[None] | None = None  # `close` of a busy session
        self.status = b"I"  # the last ReadyForQuery: I idle, T in a transaction, E failed one

    async def simple(
        self,
        sql: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the session bounds every exchange itself
        max_rows: int | None = None,
    ) -> list[Result]:
        """Run a simple Query (one or more statements); one Result per statement run.
        After a failing statement the server skips the rest, so the list ends there."""
        try:
            payload = build.query(sql)
        except ValueError:
            raise InternalQueryFailed("the query contains a NUL character", "22021") from None
        return await self._exchange(payload, timeout, max_rows, extended=False)

    async def extended(
        self,
        sql: str,
        params: Sequence[str | None] = (),
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the session bounds every exchange itself
        max_rows: int | None = None,
    ) -> Result:
        """Run one statement through Parse/Bind/Execute/Sync with text parameters
        (types inferred by the server). Multi-statement text is an error result."""
        try:
            payload = b"".join(
                (
                    build.parse("", sql),
                    # One format code 0: every parameter is text; results in text.
                    build.bind("", "", params, param_formats=(0,)),
                    build.describe("P", ""),
                    build.execute(""),
                    build.sync(),
                )
            )
        except ValueError as exc:
            raise InternalQueryFailed(f"the query cannot be sent: {exc}", "22021") from None
        results = await self._exchange(payload, timeout, max_rows, extended=True)
        # Parse, Bind or Execute answers once (an error skips the rest up to Sync).
        return results[-1] if results else Result()

    async def _exchange(
        self,
        payload: bytes,
        timeout: float | None,  # noqa: ASYNC109 - the session bounds every exchange itself
        max_rows: int | None,
        *,
        extended: bool,
    ) -> list[Result]:
        if self.in_flight and self._broken is None:
            # An exchange was abandoned (its caller was cancelled): its answer would be
            # read as this one's.
            self._broken = "an earlier query of this session was abandoned"
        if self._broken is not None:
            raise InternalQueryFailed(self._broken)
        limit = self._timeout if timeout is None else timeout
        collector = _Collector(self._max_rows if max_rows is None else max(0, max_rows))
        self.in_flight = True
        self._side.write(payload)
        try:
            async with asyncio.timeout(limit):
                while True:
                    msg = await self._side.read()
                    if msg.type == 0x5A:  # Z ReadyForQuery
                        self.status = parse_ready_for_query(msg.body)
                        break
                    if msg.type == 0x47:  # G CopyInResponse: no data to give, refuse it
                        refusal = build.copy_fail("wardgate: COPY FROM STDIN is not supported here")
                        # The server ignored the Sync sent during COPY and now waits for one.
                        self._side.write(refusal + build.sync() if extended else refusal)
                    collector.feed(msg.type, msg.body)
        except TimeoutError:
            raise self._fail(f"the database did not answer within {limit:g} s", "57014") from None
        except ConnectionClosed:
            fatal = collector.fatal
            reason = (
                f"the database ended the session: {fatal.message}"
                if fatal is not None
                else "the database closed the connection"
            )
            raise self._fail(reason, fatal.sqlstate if fatal else "08006") from None
        except ProtocolError as exc:
            raise self._fail(f"the database sent something unreadable: {exc}") from None
        self.in_flight = False
        if collector.setting_problem is not None:
            raise self._fail(collector.setting_problem, "0A000")
        return collector.results

    def _fail(self, reason: str, sqlstate: str = "08006") -> InternalQueryFailed:
        self._broken = "the gateway's session was given up after an earlier failure"
        return InternalQueryFailed(reason, sqlstate)

    async def close(self, grace: float) -> None:
        """Terminate and close (idempotent enough: a closed transport ignores writes).
        A statement still running (its exchange abandoned: the caller was cancelled) is
        cancelled first, and the session counts as closed only once the server has
        closed the connection: closing the socket does not stop a running statement,
        and until it ends PostgreSQL may still resolve its names against a catalogue
        that DDL changed meanwhile (postgres/commit_barrier.py). That runs in a task of
        its own (``closed``), which a caller cancelled again does not stop."""
        if not self.in_flight:
            self._side.write(build.terminate())
            self._side.close()
            return
        if self.closed is None:
            self.closed = asyncio.get_running_loop().create_task(self._close_busy(grace))
        await asyncio.shield(self.closed)

    async def _close_busy(self, grace: float) -> None:
        host, port, pid, secret = self.cancel_to
        try:
            try:
                async with asyncio.timeout(grace):
                    await send_cancel(host, port, pid, secret)
            except (OSError, TimeoutError) as exc:
                log.warning("could not cancel an abandoned internal query: %s", exc)
            async with asyncio.timeout(grace):
                await self._side.terminate_when_done()
        except TimeoutError:
            log.warning(
                "the server did not end an abandoned internal query within %g s of its cancel",
                grace,
            )
        finally:
            self._side.close()


# The gateway's catalogue queries join pg_proc, pg_depend, pg_type and the like, and the
# planner's cost for them passes jit_above_cost: PostgreSQL then compiled the catalogue
# watch's query with LLVM on every look, about 0.5 s where the query itself takes 10-30
# ms, and sessions wait for that look after DDL through the gateway. Sessions that read
# the catalogue turn JIT off. And they resolve names in pg_catalog only: an operator or
# function in a schema of the role's search_path that matches the argument types
# exactly wins over a built-in that needs a coercion (`public.||(text, oid)` over
# `text || anynonarray`), and one such operator made the watch read the attacker's
# text in place of a rule's definition (attack14u).
CATALOG_READER: Mapping[str, str] = {"jit": "off", "search_path": "pg_catalog"}
# The longest a session of the gateway's own that reads a user's tables (a review's
# preview, masking discovery) waits for a lock (ms): a migration holding a table must
# not be held up by it, nor every reader of the tables it locked first queue behind it;
# below deadlock_timeout (1 s by default), so the migration is never a deadlock's victim.
LOCK_WAIT_MS = 500


@asynccontextmanager
async def internal_session(
    services: HasCredentials,
    connection: str,
    *,
    application_name: str,
    timeout: float | None = None,  # noqa: ASYNC109 - each exchange's default bound, not a wait
    max_rows: int = DEFAULT_MAX_ROWS,
    read_only: bool = False,
    settings: Mapping[str, str] | None = None,
) -> AsyncIterator[InternalSession]:
    """A session of the gateway's own on ``connection``, closed (Terminate) on the way out.

    ``timeout`` bounds each exchange (default: the configured connect_timeout); dialling
    is bounded by connect_timeout. ``settings``: server settings for the session, sent in
    the startup packet (CATALOG_READER). Raises InternalQueryFailed when the connection
    is not configured, its credential cannot be read, or the server cannot be reached.
    """
    config = services.config
    conn = config.connections.get(connection)
    if conn is None:
        raise InternalQueryFailed(f"connection {connection!r} is not configured")
    limit = config.limits.connect_timeout
    options = dict(settings or {})
    if read_only:
        # A principal whose roles can only read gets a server session that can only read.
        options["default_transaction_read_only"] = "on"
    try:
        upstream = await dial_connection(
            config,
            services.vault,
            connection,
            {
                "application_name": application_name,
                "client_encoding": "UTF8",
                **(
                    {"options": " ".join(f"-c {k}={v}" for k, v in options.items())}
                    if options
                    else {}
                ),
            },
            max_message_bytes=config.limits.max_message_bytes,
        )
    except UpstreamUnavailable as exc:
        raise InternalQueryFailed(
            f"connection {connection!r}: {exc.reason}", exc.sqlstate
        ) from None
    except SecretError:
        raise InternalQueryFailed(
            f"connection {connection!r}: the gateway cannot read its stored credential"
        ) from None
    for name, value in upstream.parameters.items():
        if (problem := _setting_problem(name, value)) is not None:
            upstream.side.write(build.terminate())
            upstream.side.close()
            raise InternalQueryFailed(f"connection {connection!r}: {problem}", "0A000")
    up = conn.pg
    session = InternalSession(
        upstream.side,
        timeout=limit if timeout is None else timeout,
        max_rows=max_rows,
        cancel_to=(up.host, up.port, upstream.pid, upstream.secret),
        parameters=upstream.parameters,
        backend=upstream.backend,
    )
    try:
        yield session
    finally:
        await session.close(limit)
