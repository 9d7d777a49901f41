"""Column names from the catalog, for masking rules on ``schema.table.column``.

RowDescription names a column by table OID and attribute number, not by the alias the
query gave it, so a rule on ``public.customers.ssn`` catches ``select ssn as x``.
Names are looked up on a short-lived connection of the gateway's own (the client's
session is busy streaming its result) and cached per connection for a few minutes.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from wardgate.protocols.postgres import build
from wardgate.protocols.postgres.decode import parse_error_fields
from wardgate.proxy.pg_upstream import dial_connection

if TYPE_CHECKING:
    from wardgate.proxy.services import Services

_TTL = 300.0

Names = dict[tuple[int, int], str]  # (table oid, attnum) -> schema.table.column


class CatalogError(Exception):
    pass


class ColumnNames:
    def __init__(self) -> None:
        self._cache: dict[tuple[str, int], tuple[float, dict[int, str]]] = {}

    def known(self, connection: str, table_oids: set[int]) -> Names | None:
        """The names of these tables' columns, or None when one must be looked up."""
        now = time.monotonic()
        names: Names = {}
        for oid in table_oids:
            entry = self._cache.get((connection, oid))
            if entry is None or entry[0] < now:
                return None
            names.update({(oid, attnum): name for attnum, name in entry[1].items()})
        return names

    async def fetch(self, services: Services, connection: str, table_oids: set[int]) -> None:
        """Look these tables up and cache them; raises CatalogError."""
        rows = await _query_catalog(services, connection, sorted(table_oids))
        expires = time.monotonic() + _TTL
        found: dict[int, dict[int, str]] = {oid: {} for oid in table_oids}
        for oid, attnum, qualified in rows:
            found.setdefault(oid, {})[attnum] = qualified
        for oid, columns in found.items():
            self._cache[(connection, oid)] = (expires, columns)


async def _query_catalog(
    services: Services, connection: str, oids: list[int]
) -> list[tuple[int, int, str]]:
    config = services.config
    if connection not in config.connections:
        raise CatalogError(f"connection {connection!r} is no longer configured")
    upstream = await dial_connection(
        config,
        services.vault,
        connection,
        {"application_name": "wardgate-catalog"},
        max_message_bytes=16 * 1024 * 1024,
    )
    side = upstream.side
    # OIDs are integers from the server's own RowDescription: safe to inline.
    sql = (
        "SELECT c.oid, a.attnum, n.nspname || '.' || c.relname || '.' || a.attname "
        "FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        f"WHERE c.oid IN ({', '.join(str(int(o)) for o in oids)}) "
        "AND a.attnum > 0 AND NOT a.attisdropped"
    )
    rows: list[tuple[int, int, str]] = []
    error: str | None = None
    try:
        side.write(build.query(sql))
        while True:
            msg = await asyncio.wait_for(side.read(), config.limits.connect_timeout)
            if msg.type == ord("D"):
                rows.append(_row(msg.body))
            elif msg.type == ord("E"):
                error = parse_error_fields(msg.body).message
            elif msg.type == ord("Z"):
                break
    finally:
        side.write(build.terminate())
        side.close()
    if error is not None:
        raise CatalogError(error)
    return rows


def _row(body: bytes) -> tuple[int, int, str]:
    values = []
    pos = 2
    for _ in range(3):
        size = int.from_bytes(body[pos : pos + 4], "big", signed=True)
        pos += 4
        values.append(body[pos : pos + size].decode("utf-8", "replace"))
        pos += size
    return int(values[0]), int(values[1]), values[2].lower()
