"""Column names from the catalog, for masking rules on ``schema.table.column``.

RowDescription names a column by table OID and attribute number, not by the alias the
query gave it, so a rule on ``public.customers.ssn`` catches ``select ssn as x``.
Names are looked up on a short-lived connection of the gateway's own (the client's
session is busy streaming its result) and cached per connection for a few minutes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from wardgate.postgres.internal import CATALOG_READER, InternalQueryFailed, internal_session

if TYPE_CHECKING:
    from wardgate.core.services import Services

_TTL = 300.0
_MAX_COLUMNS = 1600  # PostgreSQL's limit per table

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
    if connection not in services.config.connections:
        raise CatalogError(f"connection {connection!r} is no longer configured")
    # OIDs are integers from the server's own RowDescription: safe to inline.
    sql = (
        "SELECT c.oid, a.attnum, n.nspname || '.' || c.relname || '.' || a.attname "
        "FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid "
        f"WHERE c.oid IN ({', '.join(str(int(o)) for o in oids)}) "
        "AND a.attnum > 0 AND NOT a.attisdropped"
    )
    try:
        async with internal_session(
            services,
            connection,
            application_name="wardgate-catalog",
            max_rows=_MAX_COLUMNS * len(oids),
            settings=CATALOG_READER,  # its `||` on names: pg_catalog's, not a user's
        ) as session:
            results = await session.simple(sql)
    except InternalQueryFailed as exc:
        raise CatalogError(exc.reason) from None
    if not results:
        raise CatalogError("the catalog query returned nothing")
    result = results[0]
    if result.error is not None:
        raise CatalogError(result.error.message)
    if result.truncated:
        raise CatalogError("the catalog returned more columns than a table can have")
    rows = []
    for oid, attnum, qualified in result.rows:
        if oid is None or attnum is None or qualified is None:
            raise CatalogError("the catalog returned an incomplete row")
        rows.append((int(oid), int(attnum), qualified.lower()))
    return rows
