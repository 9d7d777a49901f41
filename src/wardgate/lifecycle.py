"""A worker's life as the platform sees it: readiness (``/readyz``) and draining on SIGTERM.

Draining, in order: ``/readyz`` turns 503 so load balancers stop sending clients; the
listeners stop accepting; sessions that are between transactions are ended at once (a
client pool reconnects, to another replica); busy ones (in a transaction, running a
statement, waiting for a review, an SSH command or shell) get up to ``limits.drain_timeout``
to finish, then are ended too. Reviews live in the store, so a statement whose session
ends while it waits stays pending: once approved, it runs when sent again, through any
gateway sharing the store.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from wardgate.store.db import Store

log = logging.getLogger("wardgate")

# A readiness probe that waits longer than this on the store calls it unreachable.
STORE_PING_TIMEOUT = 2.0
_DRAIN_POLL = 0.1


class Drainable(Protocol):
    def stop_accepting(self) -> None: ...

    def close_idle(self) -> int: ...


@dataclass
class Lifecycle:
    """What ``/readyz`` reports for this process."""

    draining: bool = False
    listening: dict[str, bool] = field(default_factory=dict)  # protocol -> accepting

    def not_ready(self, store: Store) -> list[str]:
        """Why this gateway should get no new clients now (empty: it is ready)."""
        problems = []
        if self.draining:
            problems.append("draining: the gateway is shutting down")
        problems += [
            f"the {protocol} listener is not accepting"
            for protocol, up in sorted(self.listening.items())
            if not up
        ]
        if (store_problem := ping_store(store)) is not None:
            problems.append(store_problem)
        return problems


def ping_store(store: Store) -> str | None:
    """None when the store answers a trivial query, else why not (no credentials)."""
    from sqlalchemy import text

    from wardgate.store.db import describe_error

    try:
        # A read transaction: on SQLite it takes no write lock, so probes never wait
        # behind (or hold up) the recorder.
        with store.session(write=False) as session:
            if store.dialect == "postgresql":
                timeout_ms = int(STORE_PING_TIMEOUT * 1000)
                # LOCAL: only this transaction; the pooled connection keeps its settings.
                session.execute(text(f"SET LOCAL statement_timeout = {timeout_ms}"))
            session.execute(text("SELECT 1"))
    except Exception as exc:
        return f"the store is not reachable: {describe_error(exc)}"
    return None


async def drain(
    lifecycle: Lifecycle,
    listeners: list[tuple[str, Drainable]],
    grace: float,
    hurry: asyncio.Event,
) -> int:
    """Stop taking clients and let open sessions end, for at most ``grace`` seconds (or
    until ``hurry`` is set: a second SIGTERM/SIGINT). Returns how many sessions were
    still busy at the end, for the caller to close."""
    lifecycle.draining = True
    for protocol, listener in listeners:
        listener.stop_accepting()
        lifecycle.listening[protocol] = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    busy = sum(listener.close_idle() for _, listener in listeners)
    if busy:
        log.info("draining: waiting up to %.0fs for %d busy sessions", grace, busy)
    while busy and not hurry.is_set() and loop.time() < deadline:
        try:
            async with asyncio.timeout(_DRAIN_POLL):
                await hurry.wait()
        except TimeoutError:
            pass
        busy = sum(listener.close_idle() for _, listener in listeners)
    if busy:
        log.warning("drain ended with %d sessions still busy: closing them", busy)
    return busy
