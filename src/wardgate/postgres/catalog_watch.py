"""User routines that share a name with a built-in the gate trusts, per connection.

``select lower(5)`` calls ``pg_catalog.lower`` only if no other ``lower`` fits an integer
better: a VOLATILE ``public.lower(int)`` (or one in any schema a search_path may list
after pg_catalog) wins, and it may write. The classifier judges names, not argument
types, so the gate must know which trusted names have such overloads on each target.
This watch looks them up in every worker process: at start, every ``INTERVAL`` seconds,
and right after a DDL statement ran through this worker; found names are judged as
unknown functions (writes) on that connection (``Gate.facts``). Creating such a routine
through the gateway is itself an ``admin`` statement (kind ``shadows_builtin``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from wardgate.policy.functions import BUILTIN_READ_ONLY
from wardgate.postgres.internal import internal_session

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.postgres")

INTERVAL = 30.0
# Aggregates whatever their declared volatility: their state function may write.
_QUERY = """
SELECT DISTINCT lower(p.proname), n.nspname FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND (p.provolatile = 'v' OR p.prokind = 'a')
"""


class CatalogWatch:
    """One per worker process (``services.state(CatalogWatch)``)."""

    def __init__(self) -> None:
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """A DDL statement ran: look again now."""
        self._poked.set()

    async def run(self, services: Services, *, loud: bool) -> None:
        """Forever: refresh every PostgreSQL connection's facts. ``loud``: log what is
        found (one worker does, so the log says it once)."""
        while True:
            self._poked.clear()
            for name, conn in list(services.config.connections.items()):
                if conn.type == "postgres":
                    await self._refresh(services, name, loud)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), INTERVAL)

    async def _refresh(self, services: Services, connection: str, loud: bool) -> None:
        try:
            async with internal_session(
                services, connection, application_name="wardgate-catalog-watch", timeout=10
            ) as session:
                result = await session.extended(_QUERY, max_rows=100_000)
        except Exception as exc:  # noqa: BLE001 - the target may be down; try again later
            log.debug("connection %r: catalog watch failed: %s", connection, exc)
            return
        if result.error is not None:
            return
        found = {(str(row[0]), str(row[1])) for row in result.rows if row[0] in BUILTIN_READ_ONLY}
        names = frozenset(n for n, _ in found)
        if services.gate.facts.set_shadowed(connection, names) and names and loud:
            where = ", ".join(sorted(f"{schema}.{n}" for n, schema in found)[:20])
            log.warning(
                "connection %r: user routines share names with built-ins the policy trusts "
                "as read-only (%s); calls of these names are judged as calls of unknown "
                "functions (writes) on this connection. Rename them, or make them "
                "STABLE/IMMUTABLE if they only read",
                connection,
                where,
            )
