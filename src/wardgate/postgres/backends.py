"""The server backends a worker has open, written where the other workers can read them.

A worker that dies (kill -9, the OOM killer) leaves its backends running what it sent
them: PostgreSQL notices a closed client socket only when it next reads or writes it,
and a Query string or a pipeline it had already received runs on until then. Those
statements were judged against the catalogue of before; a DDL commit another worker
sends must not overtake them (commit_barrier.py, attack14o), and the other workers'
catalogue facts cannot be trusted until what they run has ended. So each worker notes
every backend it opens and closes in a small append-only file (``BackendLedger``; the
page cache keeps it through a kill -9), and when the supervisor reports a worker gone,
each surviving worker reads that worker's file and ends its backends that are still
there (`end_backends`): a CancelRequest with the backend's own key (which cannot reach
another backend) and ``pg_terminate_backend`` where the gateway's role may, again
until ``pg_stat_activity`` no longer shows them. Only then is the dead worker's row
of the board settled (ddl_board.py `DdlBoard.settle`); until then its DDL counts as
in flight and the other workers' commit barriers wait (refusing DDL at
``limits.connect_timeout``): fail closed.

A backend is known by its pid and the gateway's local port of its connection
(``pg_stat_activity.client_port``): a pid the server gave to a new backend after the
old one ended is not taken for it (``pg_terminate_backend`` is only sent to a match).
Behind a TCP forwarder the server sees another port: a backend with the pid that
started before ours logged in (by the server's clock, set against ours) counts as
ours and is cancelled, with its own key only, until it ends (attack14q).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wardgate.postgres.internal import HasCredentials

log = logging.getLogger("wardgate.postgres")

_COMPACT_AT = 4096  # lines: past this (and four times the live backends) the file is rewritten
RETRY = 1.0  # after a failed look at the server, the next one (s)
_NAG = 10.0  # how often a backend that will not end is reported again (s)


@dataclass(frozen=True, slots=True)
class Backend:
    connection: str
    pid: int
    port: int  # the gateway's local port of the connection; -1 unknown
    secret: bytes
    host: str = ""  # the server, as dialled (a reload may drop or move `connection`)
    server_port: int = 0
    started: float = 0.0  # time.time() once logged in: the backend started before

    def line(self) -> bytes:
        return _line(
            ["+", self.connection, self.pid, self.port, self.secret.hex(), self.host,
             self.server_port, self.started]
        )  # fmt: skip


class BackendLedger:
    """This process's open backends, one line per change in ``path`` (truncated at
    `open`: the worker that had it before is gone, and was dealt with)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._live: dict[tuple[str, int, int], Backend] = {}
        self._lines = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)

    def close(self) -> None:
        """At a clean exit; with no backend left open the file goes (nothing for the
        next start to end)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            if not self._live:
                self.path.unlink(missing_ok=True)

    def opened(self, backend: Backend) -> Callable[[], None]:
        """Note ``backend`` (before anything is sent to it); call what this returns once
        its connection is closed."""
        key = (backend.connection, backend.pid, backend.port)
        self._live[key] = backend
        if self._fd >= 0:
            os.write(self._fd, backend.line())
            self._lines += 1
        return lambda: self._closed(key)

    def _closed(self, key: tuple[str, int, int]) -> None:
        if self._live.pop(key, None) is None:
            return
        self._write(["-", *key])
        if self._lines > _COMPACT_AT and self._lines > 4 * len(self._live):
            self._compact()

    def _write(self, entry: list[object]) -> None:
        if self._fd < 0:
            return
        os.write(self._fd, _line(entry))
        self._lines += 1

    def _compact(self) -> None:
        """Rewrite the file with the live backends only (renamed over it: a crash
        leaves the old file or the new one, both true)."""
        new = self.path.with_suffix(".new")
        data = b"".join(b.line() for b in self._live.values())
        fd = os.open(new, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.replace(new, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd = fd
        self._lines = len(self._live)


def _line(entry: list[object]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode() + b"\n"


def read_ledger(path: Path) -> list[Backend]:
    """The backends ``path`` says were open when its worker stopped writing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    live: dict[tuple[str, int, int], Backend] = {}
    for raw in data.splitlines():
        try:
            entry = json.loads(raw)
            key = (str(entry[1]), int(entry[2]), int(entry[3]))
            if entry[0] == "+":
                live[key] = Backend(
                    *key, bytes.fromhex(entry[4]), str(entry[5]), int(entry[6]), float(entry[7])
                )
            elif entry[0] == "-":
                live.pop(key, None)
        except (ValueError, IndexError, TypeError):
            continue  # a line cut short by the crash: nothing was sent to that backend yet
    return list(live.values())


# One per process, set by the worker at start (serve.py); None: nothing is noted.
ledger: BackendLedger | None = None


def ledger_path(data_path: Path, index: int) -> Path:
    """Worker ``index``'s ledger."""
    return data_path / "backends" / f"w{index}"


# -- ending a dead worker's backends ------------------------------------------------------

_PRESENT_SQL = (
    "SELECT pid, coalesce(client_port, -1), "
    "pg_catalog.date_part('epoch', backend_start), pg_catalog.date_part('epoch', now()) "
    "FROM pg_catalog.pg_stat_activity WHERE pid OPERATOR(pg_catalog.=) ANY ($1::pg_catalog.int4[])"
)
_TERMINATE_SQL = (
    "SELECT pg_catalog.pg_terminate_backend(p) FROM pg_catalog.unnest($1::pg_catalog.int4[]) p"
)
# A backend the server shows with the pid of one of ours, but not the port (a TCP
# forwarder between the gateway and the server): ours when it started no later than
# this after ours logged in, by the server's clock set to ours; a pid given anew later.
_STARTED_MARGIN = 1.0
_UNREACHABLE_ROUNDS = 20  # keyed cancels sent where no configured connection reaches


async def end_backends(services: HasCredentials, backends: list[Backend], who: str) -> None:
    """Return once none of ``backends`` is running on its server: each is cancelled
    (a CancelRequest with its own key, which reaches no other backend and takes no
    connection slot) and terminated again every `RECANCEL` while ``pg_stat_activity``
    shows it. Never gives up while a configured connection reaches its server (the
    caller's wait is what fails closed); a look that fails is tried again every
    `RETRY`, the cancels going on meanwhile. A server no configured connection reaches
    any more (a reload) gets keyed cancels for a while: nothing through the gateway can
    reach it to race what it runs."""
    by_server: dict[tuple[str, int], list[Backend]] = {}
    for backend in backends:
        server = (backend.host, backend.server_port)
        if not backend.host:  # a line without its server: the connection's, as configured
            conn = services.config.connections.get(backend.connection)
            up = conn.pg if conn is not None and conn.type == "postgres" else None
            server = (up.host, up.port) if up is not None else ("", 0)
        by_server.setdefault(server, []).append(backend)
    await asyncio.gather(
        *(_end_on(services, server, group, who) for server, group in by_server.items())
    )


def _looker(services: HasCredentials, server: tuple[str, int], names: list[str]) -> str | None:
    """A configured connection that reaches ``server``, the backends' own first."""
    found = [
        name
        for name, conn in services.config.connections.items()
        if conn.type == "postgres" and (conn.pg.host, conn.pg.port) == server
    ]
    return next((n for n in names if n in found), found[0] if found else None)


async def _end_on(
    services: HasCredentials, server: tuple[str, int], backends: list[Backend], who: str
) -> None:
    from wardgate.postgres.commit_barrier import RECANCEL
    from wardgate.postgres.internal import InternalQueryFailed, internal_session

    loop = asyncio.get_running_loop()
    nag_at = loop.time() + _NAG
    said_at: float | None = None  # when a failed look was last logged
    left = backends
    connection = _looker(services, server, [b.connection for b in backends])
    if connection is None:
        log.warning(
            "%s: no configured connection reaches %s:%s any more, where it had %d server "
            "session(s); cancelling them, and nothing through the gateway reaches them",
            who, *server, len(left),
        )  # fmt: skip
        for _ in range(_UNREACHABLE_ROUNDS):
            await _cancel_all(server, left, RECANCEL)
            await asyncio.sleep(RECANCEL)
        return
    while True:
        try:
            async with internal_session(
                services, connection, application_name="wardgate: a dead worker's backends"
            ) as session:
                while True:
                    pids = "{" + ",".join(str(b.pid) for b in left) + "}"
                    result = await session.extended(_PRESENT_SQL, [pids], max_rows=len(left))
                    if result.error is not None:
                        raise InternalQueryFailed(result.error.message)
                    left, exact = _still_there(left, result.rows, time.time())
                    if not left:
                        return
                    await _cancel_all(server, left, RECANCEL)
                    if exact:
                        # Refused without the privilege (another role's backend): the
                        # cancel above still ends what it runs, then the closed socket.
                        pids = "{" + ",".join(str(b.pid) for b in exact) + "}"
                        await session.extended(_TERMINATE_SQL, [pids])
                    if loop.time() >= nag_at:
                        nag_at = loop.time() + _NAG
                        _nag(who, connection, left)
                    await asyncio.sleep(RECANCEL)
        except InternalQueryFailed as exc:
            if said_at is None or loop.time() >= said_at + _NAG:
                said_at = loop.time()
                log.warning(
                    "%s: cannot look at its backends on connection %r (%s); cancelling them "
                    "and trying again every %g s; DDL on that database waits until then",
                    who,
                    connection,
                    exc.reason,
                    RETRY,
                )
            # No session (the role's connection limit, say): a cancel needs none.
            deadline = loop.time() + RETRY
            while loop.time() < deadline:
                await _cancel_all(server, left, RECANCEL)
                await asyncio.sleep(RECANCEL)


def _still_there(
    backends: list[Backend], rows: tuple[tuple[str | None, ...], ...], now: float
) -> tuple[list[Backend], list[Backend]]:
    """Those of ``backends`` the server still shows (rows of `_PRESENT_SQL`, read at
    ``now``), and those of them shown with the port the gateway had (which
    ``pg_terminate_backend`` may end: no other backend is)."""
    shown: dict[int, list[tuple[int, float, float]]] = {}
    for pid, port, started, server_now in rows:
        shown.setdefault(int(str(pid)), []).append(
            (int(str(port)), float(str(started)), float(str(server_now)))
        )
    left, exact = [], []
    for b in backends:
        for at_port, since, server_time in shown.get(b.pid, ()):
            if b.port >= 0 and at_port == b.port:
                left.append(b)
                exact.append(b)
                break
            skew = server_time - now
            if b.port < 0 or not b.started or since - skew <= b.started + _STARTED_MARGIN:
                left.append(b)  # ours behind a forwarder, or one we cannot tell apart
                break
    return left, exact


async def _cancel_all(server: tuple[str, int], backends: list[Backend], limit: float) -> None:
    from wardgate.postgres.upstream import send_cancel

    async def one(b: Backend) -> None:
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(limit):
                await send_cancel(server[0], server[1], b.pid, b.secret)

    await asyncio.gather(*(one(b) for b in backends))


def _nag(who: str, connection: str, left: list[Backend]) -> None:
    log.warning(
        "%s: its backends %s on connection %r are still running although cancelled and "
        "terminated; DDL to that database is refused until they end (end them with "
        "pg_terminate_backend as a superuser)",
        who,
        ", ".join(str(b.pid) for b in left),
        connection,
    )
