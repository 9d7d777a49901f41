"""Sampling a PostgreSQL connection's columns for masking discovery.

One session of the gateway's own, dialled with the connection's credential, read-only
(``default_transaction_read_only`` and a ``BEGIN READ ONLY`` transaction that is rolled
back), every statement under ``statement_timeout``. Each user table (and materialised
view) gives at most ``rows`` rows, all its sampled columns in one query, as text, in a
transaction of its own: reading a table locks it (ACCESS SHARE) to the end of the
transaction, and one transaction over every table kept a migration's ALTER of any
table already read waiting until the whole discovery ended (with every reader of that
table queued behind it). A lock wait gives up after LOCK_WAIT_MS: that table is
reported as not sampled, like one the role may not read or that timed out.
"""

from __future__ import annotations

from wardgate.masking.discovery import ColumnSample
from wardgate.postgres.internal import (
    CATALOG_READER,
    LOCK_WAIT_MS,
    HasCredentials,
    InternalQueryFailed,
    Result,
    internal_session,
)

# Columns of types that cannot carry a sensitive value are not sampled: booleans,
# dates and times, intervals, UUIDs, geometric and network-free internal types.
_COLUMNS = """
select n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod)
from pg_catalog.pg_attribute a
join pg_catalog.pg_class c on c.oid = a.attrelid
join pg_catalog.pg_namespace n on n.oid = c.relnamespace
join pg_catalog.pg_type t on t.oid = a.atttypid
where c.relkind in ('r', 'p', 'm') and a.attnum > 0 and not a.attisdropped
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg\\_toast%' and n.nspname not like 'pg\\_temp%'
  and t.typcategory not in ('B', 'D', 'T', 'G') and a.atttypid <> 'uuid'::regtype
  and has_table_privilege(c.oid, 'select')
order by 1, 2, a.attnum
"""
MAX_COLUMNS = 20_000


class DiscoveryFailed(Exception):
    pass


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def sample_columns(
    services: HasCredentials,
    connection: str,
    *,
    rows: int = 200,
    statement_timeout: float = 5.0,
) -> tuple[list[ColumnSample], list[tuple[str, str]]]:
    """The sampled non-null values of every user column of ``connection``, and the
    tables not sampled, each with the server's reason."""
    conf = services.config.connections.get(connection)
    if conf is None or conf.type != "postgres":
        raise DiscoveryFailed(f"connection {connection!r} is not a configured postgres connection")
    timeout_ms = max(1, round(statement_timeout * 1000))
    begin = (
        f"begin transaction read only; set local statement_timeout = {timeout_ms}; "
        f"set local lock_timeout = {min(timeout_ms, LOCK_WAIT_MS)}"
    )
    try:
        async with internal_session(
            services,
            connection,
            application_name="wardgate-masking-discover",
            timeout=statement_timeout + 5.0,
            max_rows=max(rows, MAX_COLUMNS),
            read_only=True,
            settings=CATALOG_READER,  # the listing's names resolve in pg_catalog only
        ) as session:
            _raise_on_error(await session.simple(begin))
            (listing,) = _raise_on_error(await session.simple(_COLUMNS))
            await session.simple("rollback")
            tables: dict[tuple[str, str], list[tuple[str, str]]] = {}
            for schema, table, column, type_name in listing.rows:
                assert schema and table and column and type_name
                tables.setdefault((schema, table), []).append((column, type_name))
            samples: list[ColumnSample] = []
            skipped: list[tuple[str, str]] = []
            for (schema, table), columns in tables.items():
                select = ", ".join(f"{_ident(c)}::text" for c, _ in columns)
                _raise_on_error(await session.simple(begin))
                # Rows with at least one value; a table sample of a large table would be
                # better spread, but LIMIT is bounded and works on every relation kind.
                result = await session.extended(
                    f"select {select} from {_ident(schema)}.{_ident(table)} limit {int(rows)}",
                    max_rows=rows,
                )
                await session.simple("rollback")  # its lock goes with it
                if result.error is not None:
                    # One unreadable table (a permission, a timeout, a lock) does not
                    # stop the rest; it is reported.
                    skipped.append((f"{schema}.{table}", _skip_reason(result)))
                    continue
                for i, (column, type_name) in enumerate(columns):
                    values = tuple(v for r in result.rows if (v := r[i]) is not None)
                    samples.append(ColumnSample(f"{schema}.{table}.{column}", type_name, values))
            return samples, skipped
    except InternalQueryFailed as exc:
        raise DiscoveryFailed(exc.reason) from None


def _skip_reason(result: Result) -> str:
    assert result.error is not None
    if result.error.sqlstate == "55P03":
        return (
            f"another session holds a lock on it (a migration?); discovery waits at most "
            f"{LOCK_WAIT_MS} ms for a lock: run it again later"
        )
    return result.error.message


def _raise_on_error(results: list[Result]) -> list[Result]:
    for result in results:
        if result.error is not None:
            raise DiscoveryFailed(f"the database refused: {result.error.message}")
    return results
