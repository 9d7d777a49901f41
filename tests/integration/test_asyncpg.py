"""asyncpg (extended protocol only, binary formats, its own pipelining) and query
cancellation through the real gateway to the real server."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.integration.conftest import Gateway, admin_conn


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def with_conn(
    gateway: Gateway, fn: Callable[[asyncpg.Connection], Awaitable[Any]], principal: str = "dev"
) -> Any:
    async def main() -> Any:
        conn = await asyncpg.connect(gateway.dsn(principal), timeout=10)
        try:
            return await asyncio.wait_for(fn(conn), 30)
        finally:
            await conn.close()

    return asyncio.run(main())


def count_rows(it_database: str, table: str) -> int:
    with admin_conn(it_database) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


def running_queries(marker: str) -> list[tuple[Any, ...]]:
    """Statements containing `marker` that the real server is executing right now."""
    with admin_conn() as conn:
        return conn.execute(
            "select pid, state, query from pg_stat_activity "
            "where state = 'active' and query like %s and pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchall()


def wait_until_not_running(marker: str, within: float = 2.0) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + within
    while True:
        rows = running_queries(marker)
        if not rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


# -- queries ----------------------------------------------------------------------------


def test_fetch_and_types(gateway: Gateway) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(
            "select g, g::text || $1 from generate_series(1, $2::int) g", "!", 300
        )
        assert [tuple(r) for r in rows] == [(g, f"{g}!") for g in range(1, 301)]
        row = await conn.fetchrow(
            "select $1::jsonb, $2::float8, $3::bytea, $4::uuid, null::text",
            '{"a": 1}',
            12.5,
            b"\x00\xff",
            uuid.UUID(int=7),
        )
        assert tuple(row) == ('{"a": 1}', 12.5, b"\x00\xff", uuid.UUID(int=7), None)
        assert await conn.fetchval("select repeat('y', 2000000)") == "y" * 2_000_000

    with_conn(gateway, body)


@pytest.mark.parametrize("kind", ["array", "enum"])
def test_type_introspection(gateway: Gateway, kind: str) -> None:
    enum = unique("apg_mood")

    async def body(conn: asyncpg.Connection) -> None:
        await conn.execute(f"create type {enum} as enum ('sad', 'ok', 'happy')")
        # Arrays (even int[]) and any type asyncpg has no built-in codec for make it
        # introspect the catalogue, with JIT turned off around the query:
        # SELECT current_setting('jit'), set_config('jit', 'off', false).
        try:
            if kind == "array":
                assert await conn.fetchval("select $1::int[]", [1, 2]) == [1, 2]
                assert await conn.fetchval("select array['a', null]") == ["a", None]
            else:
                assert await conn.fetchval(f"select $1::{enum}", "happy") == "happy"
                assert await conn.fetchval(f"select array['ok', 'sad']::{enum}[]") == ["ok", "sad"]
        except asyncpg.InsufficientPrivilegeError as exc:
            pytest.fail(
                f"asyncpg cannot use {kind} values through wardgate: its type introspection "
                "calls set_config('jit', 'off', false), which the classifier treats as an "
                f"admin function whatever the setting. Gateway said: {exc}"
            )

    with_conn(gateway, body)


def test_prepared_statement_reuse(gateway: Gateway) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        stmt = await conn.prepare("select $1::int * 2 as doubled, $2::text as label")
        assert [a.name for a in stmt.get_attributes()] == ["doubled", "label"]
        for i in range(20):
            assert tuple(await stmt.fetchrow(i, f"l{i}")) == (i * 2, f"l{i}")
        assert await stmt.fetchval(21, "x") == 42
        # asyncpg's own statement cache re-uses named statements for repeated queries.
        for i in range(5):
            assert await conn.fetchval("select $1::int + 1000", i) == i + 1000

    with_conn(gateway, body)


def test_cursor_with_prefetch_in_transaction(gateway: Gateway) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            # Iteration fetches 37 rows per Execute: the server answers PortalSuspended.
            got = [r[0] async for r in conn.cursor("select generate_series(1, 1000)", prefetch=37)]
            assert got == list(range(1, 1001))
            cur = await conn.cursor("select g from generate_series(1, $1::int) g", 100)
            assert [r[0] for r in await cur.fetch(10)] == list(range(1, 11))
            assert await cur.forward(50) == 50
            assert (await cur.fetchrow())[0] == 61
            assert [r[0] for r in await cur.fetch(100)] == list(range(62, 101))
        assert await conn.fetchval("select 'after cursor'") == "after cursor"

    with_conn(gateway, body)


def test_executemany(gateway: Gateway, it_database: str) -> None:
    t = unique("apg_many")

    async def body(conn: asyncpg.Connection) -> None:
        await conn.execute(f"create table {t} (id int primary key, name text)")
        await conn.executemany(
            f"insert into {t} values ($1, $2)", [(i, f"n{i}") for i in range(1000)]
        )
        assert await conn.fetchval(f"select count(*) from {t}") == 1000
        # A failure in the middle rolls back the whole batch (it is one implicit transaction).
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.executemany(
                f"insert into {t} values ($1, $2)", [(2000, "a"), (1, "dup"), (2001, "b")]
            )
        assert await conn.fetchval(f"select count(*) from {t}") == 1000

    with_conn(gateway, body)
    assert count_rows(it_database, t) == 1000


def test_blocked_statements(gateway: Gateway, it_database: str) -> None:
    t = unique("apg_block")
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {t} (id int)")

    async def body(conn: asyncpg.Connection) -> None:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="blocked by role:reader"):
            await conn.executemany(f"insert into {t} values ($1)", [(1,), (2,)])
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="blocked by role:reader"):
            await conn.execute(f"insert into {t} values (3)")  # no args: simple protocol
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="blocked by role:reader"):
            await conn.prepare(f"delete from {t} where id = $1")
        async with conn.transaction():
            assert await conn.fetchval(f"select count(*) from {t}") == 0
        assert await conn.fetchval("select 'usable'") == "usable"

    with_conn(gateway, body, principal="agent")
    assert count_rows(it_database, t) == 0


def test_copy(gateway: Gateway, tmp_path: Any) -> None:
    t = unique("apg_copy")
    records = [(i, f"name {i}", None if i % 11 == 0 else i * 1.5) for i in range(10_000)]

    async def body(conn: asyncpg.Connection) -> None:
        await conn.execute(f"create table {t} (id int, name text, score float8)")
        result = await conn.copy_records_to_table(t, records=records)
        assert result == "COPY 10000"
        rows = await conn.fetch(f"select * from {t} order by id")
        assert [tuple(r) for r in rows] == records
        buf = io.BytesIO()
        result = await conn.copy_from_query(
            f"select id, name from {t} where id < $1 order by id", 500, output=buf
        )
        assert result == "COPY 500"
        assert buf.getvalue().decode().splitlines() == [f"{i}\tname {i}" for i in range(500)]
        out = tmp_path / "table.csv"
        result = await conn.copy_from_table(t, output=str(out), format="csv")
        assert result == "COPY 10000"
        assert len(out.read_text().splitlines()) == 10_000
        back = unique("apg_copyback")
        await conn.execute(f"create table {back} (id int, name text, score float8)")
        result = await conn.copy_to_table(back, source=str(out), format="csv")
        assert result == "COPY 10000"
        diff = await conn.fetchval(f"select count(*) from (table {t} except table {back}) d")
        assert diff == 0

    with_conn(gateway, body)


def test_pool_acquire_and_release(gateway: Gateway) -> None:
    async def main() -> list[int]:
        pool = await asyncpg.create_pool(gateway.dsn("dev"), min_size=1, max_size=3)
        try:

            async def one(i: int) -> int:
                async with pool.acquire() as conn:
                    return int(await conn.fetchval("select $1::int", i))

            return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(10))), 20)
        finally:
            await pool.close()

    try:
        got = asyncio.run(main())
    except asyncpg.InsufficientPrivilegeError as exc:
        pytest.fail(
            "asyncpg's pool cannot release a connection through wardgate: its reset query "
            "(SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;) is blocked "
            "because the classifier calls RESET ALL an admin 'set_role'; PostgreSQL's RESET ALL "
            f"never resets role or session_authorization (GUC_NO_RESET_ALL). Gateway said: {exc}"
        )
    assert got == list(range(10))


# -- cancellation -----------------------------------------------------------------------


def test_asyncpg_timeout_cancels_server_query(gateway: Gateway) -> None:
    marker = unique("apg_cancel")

    async def body(conn: asyncpg.Connection) -> float:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetch(f"select pg_sleep(10), '{marker}'"), 0.5)
        # asyncpg sent a CancelRequest through the gateway; the session is usable at once.
        assert await conn.fetchval("select 'usable'") == "usable"
        assert await conn.fetchval("select $1::int", 5) == 5
        return time.monotonic() - started

    elapsed = with_conn(gateway, body)
    assert elapsed < 5, f"the cancelled query held the session for {elapsed:.1f} s"
    assert wait_until_not_running(marker) == [], "pg_sleep(10) still runs on the real server"


def test_asyncpg_timeout_argument_cancels(gateway: Gateway) -> None:
    marker = unique("apg_cancel_to")

    async def body(conn: asyncpg.Connection) -> None:
        with pytest.raises(TimeoutError):
            await conn.execute(f"select pg_sleep(10), '{marker}'", timeout=0.3)
        assert await conn.fetchval("select 2") == 2

    with_conn(gateway, body)
    assert wait_until_not_running(marker) == []


@pytest.mark.parametrize("method", ["cancel", "cancel_safe"])
def test_psycopg_cancel_from_another_thread(gateway: Gateway, method: str) -> None:
    marker = unique("pg3_cancel")
    with psycopg.connect(gateway.dsn("dev"), autocommit=True) as conn:

        def cancel_soon() -> None:
            deadline = time.monotonic() + 5
            while not running_queries(marker) and time.monotonic() < deadline:
                time.sleep(0.05)
            getattr(conn, method)()

        thread = threading.Thread(target=cancel_soon)
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises(errors.QueryCanceled):
                conn.execute(f"select pg_sleep(10), '{marker}'")
        finally:
            thread.join(10)
        assert time.monotonic() - started < 5
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert wait_until_not_running(marker) == []
