"""A DDL commit waits until the statements other sessions sent before it are answered.

Why: the gate judges a statement with the catalogue facts it has (gate.CatalogFacts),
but PostgreSQL resolves the statement's names when it gets to them, and that can be
after a DDL commit another session sends later. A read that waits at parse for a lock
the DDL's transaction holds resolves ``(x).bump`` once the lock is free, after the
COMMIT, and finds the function that COMMIT made (test_attack14k); so does the second
statement of a Query string behind a slow first one, or a pipelined Parse. The
catalogue window (`CatalogFacts.committing`) only covers statements judged after the
DDL is sent.

So before a batch that may commit DDL goes to the server (relay_state.py
`_may_commit`; an MCP query's `changing_catalogue`), every statement that another
session forwarded to the same database before it must be answered. New ones wait
already: the connection is `changing` from the moment the batch is marked. A
statement still running after DRAIN_GRACE is cancelled (its client gets PostgreSQL's
57014), which also ends a read waiting for the DDL's own locks (it would wait for the
COMMIT that waits for it). If some are still unanswered at ``limits.connect_timeout``
(a client that does not read its results holds its answer in the gateway), the DDL is
not sent: its session ends and its transaction rolls back (fail closed).

With several workers the other workers' sessions count too: the board
(ddl_board.py) carries the question and each worker's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from wardgate.postgres.backends import end_backends, ledger_path, read_ledger
from wardgate.postgres.upstream import send_cancel

if TYPE_CHECKING:
    from wardgate.core.services import Services
    from wardgate.ddl_board import DdlBoard
    from wardgate.postgres.backends import Backend
    from wardgate.postgres.wire import UpstreamSide

log = logging.getLogger("wardgate.postgres")

DRAIN_GRACE = 0.5  # how long a DDL commit lets earlier statements finish before cancelling (s)
_POLL = 0.002  # how often a drain looks at what it waits for (s)
RECANCEL = 0.1  # past the grace, how often what still runs is cancelled again (s)
# Past the grace, how long cancels are tried before a session's server session is
# ended (s): a client that pipelined hundreds of slow statements outlasts one cancel
# per RECANCEL (attack14p), and its backend is then terminated (backends.py).
END_AFTER = 1.0

CancelTo = tuple[str, int, int, bytes]  # host, port, backend pid, secret


class Flight(Protocol):
    """A session that forwards statements to a connection: a relay, an MCP query."""

    session_id: str
    connection: str
    cancel_to: CancelTo | None
    backend: Backend | None  # its server session, to end it (END_AFTER)

    def flight(self, before: int) -> tuple[int, int]:
        """(sent, answered): requests written to the server and requests answered, both
        only ever growing; in flight while the first is larger. For a drain whose own
        batch was judged at ``before`` (`time.monotonic_ns`), a batch of this flight
        held for its own drain since earlier counts as sent: it was judged before, and
        must not reach the server after that drain's commit (attack14o). One held
        since later does not (it waits for this one's drain, not the other way round)."""
        ...

    def nudge(self) -> None:
        """Make the server send what it has answered and holds (an open extended batch
        is answered only at a Sync or a Flush: attack14m)."""
        ...


class Refused(Exception):
    """The DDL may not be sent: statements judged before it did not end."""


class CommitBarrier:
    """This process's sessions in flight, and the drains DDL commits wait for."""

    def __init__(self) -> None:
        self._flights: set[Flight] = set()
        self._board: DdlBoard | None = None
        self._answering: dict[int, int] = {}  # asker -> the request number being answered
        self._ending: set[int] = set()  # dead workers whose backends this process ends

    def add(self, flight: Flight) -> None:
        self._flights.add(flight)

    def discard(self, flight: Flight) -> None:
        self._flights.discard(flight)

    def landed(self, flight: Flight, closing: asyncio.Future[None] | None) -> None:
        """``flight``'s owner is done with it; it leaves once ``closing`` (its server
        session's close, which waits for the server to end what it runs) is done."""
        if closing is None or closing.done():
            self.discard(flight)
        else:
            closing.add_done_callback(lambda _: self.discard(flight))

    def leave(
        self,
        services: Services,
        flight: Flight,
        upstream: UpstreamSide,
        gone: Callable[[], None],
    ) -> None:
        """A session ends with requests unanswered: the server goes on with them until
        it reads the Terminate after them (or, with a Query string, after its last
        statement), and resolves their names then (attack14m: a client that sent a slow
        string and closed). ``flight`` stays in flight until the server has closed the
        connection (a drain cancels it as any other); then it leaves, and ``gone`` is
        called."""

        async def wait() -> None:
            try:
                await upstream.terminate_when_done()
            finally:
                self.discard(flight)
                gone()

        services.tasks.spawn(wait(), name=f"leaving-{flight.session_id}")

    def serve(self, services: Services, board: DdlBoard) -> None:
        """Answer the other workers' questions (ddl_board.py) from now on."""
        self._board = board
        asyncio.get_running_loop().add_reader(board.wake_fd, self._asked, services)

    def needed(self, names: tuple[str, ...], besides: Flight | None) -> bool:
        """Whether a DDL commit on ``names`` must wait: other workers may have sessions
        in flight (they are asked), or this one has."""
        return self._board is not None or bool(self._in_flight(names, besides, time.monotonic_ns()))

    async def drain(
        self,
        services: Services,
        connection: str,
        names: tuple[str, ...],
        besides: Flight | None,
        since: int,
    ) -> None:
        """Wait until what every other session sent to ``names`` so far is answered,
        and what they hold judged before ``since`` (when the DDL's own batch was judged,
        `time.monotonic_ns`: one clock for every process), cancelling what runs past
        DRAIN_GRACE. Raises Refused at the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + services.config.limits.connect_timeout
        board = self._board
        number = board.ask(database_key(services, connection), since) if board is not None else 0
        left = await self._drain_here(services, names, besides, since, deadline, connection)
        if left:
            raise Refused(_refusal(services, connection, left))
        while board is not None:
            done = board.answered(number)
            if done:
                return
            if done is False or loop.time() >= deadline:
                raise Refused(_refusal(services, connection, 0))
            await asyncio.sleep(_POLL)

    async def _drain_here(
        self,
        services: Services,
        names: tuple[str, ...] | None,
        besides: Flight | None,
        since: int,
        deadline: float,
        connection: str,
    ) -> int:
        """This process's part of a drain; how many were left unanswered at ``deadline``."""
        loop = asyncio.get_running_loop()
        waiting = self._in_flight(names, besides, since)
        if not waiting:
            return 0
        for flight, _ in waiting:
            flight.nudge()
        cancel_at = loop.time() + DRAIN_GRACE
        end_at = cancel_at + END_AFTER
        told: set[Flight] = set()
        ended: set[Flight] = set()
        while waiting:
            await asyncio.sleep(_POLL)
            waiting = [(f, sent) for f, sent in waiting if _still(self._flights, f, sent, since)]
            now = loop.time()
            if waiting and now >= cancel_at:
                # Again every RECANCEL: a cancel ends the statement running, and a
                # client may have pipelined more (attack14o: fifteen slow queries).
                cancel_at = now + RECANCEL
                for flight, _ in waiting:
                    _cancel(services, flight, connection, loud=flight not in told)
                    told.add(flight)
                    if now >= end_at and flight not in ended:
                        ended.add(flight)
                        _end(services, flight, connection)
            if waiting and now >= deadline:
                return len(waiting)
        return 0

    def _in_flight(
        self, names: tuple[str, ...] | None, besides: Flight | None, since: int
    ) -> list[tuple[Flight, int]]:
        found = []
        for flight in self._flights:
            if flight is besides or (names is not None and flight.connection not in names):
                continue
            sent, answered = flight.flight(since)
            if sent > answered:
                found.append((flight, sent))
        return found

    def _asked(self, services: Services) -> None:
        board = self._board
        assert board is not None
        for index in board.gone():
            if index not in self._ending:
                self._ending.add(index)
                services.tasks.spawn(
                    self._end_dead_worker(services, index), name="commit-barrier-dead-worker"
                )
        for asker, number, database, since in board.questions():
            if self._answering.get(asker, 0) >= number:
                continue  # being answered (a later request of the asker supersedes it)
            self._answering[asker] = number
            services.tasks.spawn(
                self._answer(services, asker, number, database, since),
                name="commit-barrier-answer",
            )

    async def _answer(
        self, services: Services, asker: int, number: int, database: int, since: int
    ) -> None:
        board = self._board
        assert board is not None
        names = None
        if database:
            names = tuple(
                name
                for name, conn in services.config.connections.items()
                if conn.type == "postgres" and database_key(services, name) == database
            )
        deadline = asyncio.get_running_loop().time() + services.config.limits.connect_timeout
        left = await self._drain_here(services, names, None, since, deadline, f"worker {asker}")
        board.answer(asker, number, ok=not left)
        if self._answering.get(asker) == number:
            del self._answering[asker]

    async def _end_dead_worker(self, services: Services, index: int) -> None:
        """Worker ``index`` died: once every backend it had is ended (backends.py), its
        row of the board is settled."""
        board = self._board
        assert board is not None
        left = read_ledger(ledger_path(services.config.data_path, index))
        log.warning(
            "worker %d died with %d server session(s) open; ending them before DDL through "
            "the other workers may commit, and before their catalogue is trusted again",
            index,
            len(left),
        )
        await end_backends(services, left, f"worker {index}")
        board.settle(index)
        log.warning("worker %d: its server sessions have ended", index)


def _still(flights: set[Flight], flight: Flight, sent: int, since: int) -> bool:
    """Whether a drain still waits for ``flight``, in flight with ``sent`` requests when
    it began: not once they are answered, nor once the flight holds a batch for a drain
    of its own judged after ``since`` and has nothing else at the server (that drain
    waits for this one; waiting for each other, both were refused: attack14n)."""
    if flight not in flights:
        return False
    now, answered = flight.flight(since)
    return answered < sent and now > answered


def database_key(services: Services, connection: str) -> int:
    """A number for the name of the database ``connection`` reaches (never 0), the same
    in every worker: DDL through one connection changes what every connection to a
    database of that name sees (catalog_watch.py `sharing_database`)."""
    conn = services.config.connections.get(connection)
    database = getattr(conn.upstream, "database", None) if conn is not None else None
    return zlib.crc32(str(database).encode()) | 1 << 32


def _cancel(services: Services, flight: Flight, why: str, *, loud: bool) -> None:
    """Cancel what ``flight`` runs now on the server (PostgreSQL ignores a cancel that
    reaches an idle session); ``loud``: say so (once per flight and drain)."""
    if loud:
        _say_cancelled(flight, why)
    target = flight.cancel_to
    if target is None:
        return

    async def send() -> None:
        try:
            async with asyncio.timeout(5):
                await send_cancel(*target)
        except (OSError, TimeoutError) as exc:
            log.warning(
                "session %s: the cancel did not reach the server: %s", flight.session_id, exc
            )

    services.tasks.spawn(send(), name="commit-barrier-cancel")


def _end(services: Services, flight: Flight, why: str) -> None:
    """End ``flight``'s server session: cancels did not end what it runs in END_AFTER
    (a pipeline of slow statements; a client that does not read its results). Its
    client gets PostgreSQL's 57P01 and loses the session; the DDL goes on."""
    backend = flight.backend
    if backend is None:
        return
    log.warning(
        "session %s: ending its server session on %r: DDL through %s waits for the "
        "statements it sent, which are still running after %.1f s of cancels",
        flight.session_id,
        flight.connection,
        why if why.startswith("worker") else repr(why),
        END_AFTER,
    )
    services.tasks.spawn(
        end_backends(services, [backend], f"session {flight.session_id}"),
        name="commit-barrier-end-session",
    )


def _say_cancelled(flight: Flight, why: str) -> None:
    log.warning(
        "session %s: cancelling its statement on %r: DDL through %s is about to commit "
        "to the same database, and this statement was judged against the catalogue before "
        "it and is still running after %.1f s",
        flight.session_id,
        flight.connection,
        why if why.startswith("worker") else repr(why),
        DRAIN_GRACE,
    )


def _refusal(services: Services, connection: str, left: int) -> str:
    seconds = services.config.limits.connect_timeout
    who = f"{left} statement(s) of other sessions" if left else "statements on another worker"
    return (
        f"wardgate: DDL not sent: {who} on the database of connection {connection!r}, "
        f"judged before this DDL, were still unanswered after {seconds:g} s although "
        "cancelled; PostgreSQL would resolve their names after the DDL commits, against a "
        "catalogue the gateway did not judge them by, so this session ends and its "
        "transaction rolls back. Retry once they have finished (a client that does not "
        "read its results keeps them unanswered)"
    )
