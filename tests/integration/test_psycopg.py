"""psycopg 3 (sync and async) through the real gateway to the real server.

Every protocol path psycopg uses is exercised: the simple query protocol (queries
without parameters, and `ClientCursor`, which binds on the client), the extended
protocol (server-side parameters, binary results, named prepared statements), libpq
pipeline mode, COPY both ways, and asynchronous messages (notices, notifications,
parameter status).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg import errors

from tests.integration.conftest import Gateway, admin_conn

BLOCKED = "wardgate: blocked by"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def dev(gateway: Gateway) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(gateway.dsn("dev"), autocommit=True) as conn:
        yield conn


@pytest.fixture
def agent(gateway: Gateway) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(gateway.dsn("agent"), autocommit=True) as conn:
        yield conn


def run(conn: psycopg.Connection[Any], sql: str, protocol: str) -> psycopg.Cursor[Any]:
    """Run `sql` (no parameters) with the given wire protocol.

    - simple: a Query message (ClientCursor binds parameters itself, so it always does)
    - extended: unnamed Parse/Bind/Describe/Execute/Sync (binary results force it)
    - prepared: a named Parse, then Bind/Execute against it
    """
    if protocol == "simple":
        cur: psycopg.Cursor[Any] = psycopg.ClientCursor(conn)
        return cur.execute(sql)
    if protocol == "extended":
        return conn.cursor(binary=True).execute(sql, prepare=False)
    assert protocol == "prepared"
    return conn.cursor().execute(sql, prepare=True)


PROTOCOLS = ["simple", "extended", "prepared"]


def count_rows(it_database: str, table: str) -> int:
    with admin_conn(it_database) as conn:
        row = conn.execute(f"select count(*) from {table}").fetchone()
        assert row is not None
        return int(row[0])


# -- queries and parameters -------------------------------------------------------------


def test_sync_types_round_trip_server_side_params(dev: psycopg.Connection[Any]) -> None:
    values: tuple[Any, ...] = (
        42,
        "héllo wörld ✓",
        None,
        Decimal("12345.678901"),
        dt.date(2024, 2, 29),
        dt.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        [1, 2, 3],
        b"\x00\x01\xffbinary",
        True,
        3.5,
    )
    placeholders = ", ".join(["%s"] * len(values))
    for binary in (False, True):
        cur = dev.cursor(binary=binary)
        row = cur.execute(f"select {placeholders}", values).fetchone()
        assert row == values, f"binary={binary}"
    row = dev.execute("select %s::jsonb", (json.dumps({"a": [1, None]}),)).fetchone()
    assert row == ({"a": [1, None]},)
    rows = dev.execute("select g, g * %s from generate_series(1, %s) g", (3, 1000)).fetchall()
    assert rows == [(g, g * 3) for g in range(1, 1001)]


def test_multi_statement_simple_query(dev: psycopg.Connection[Any], it_database: str) -> None:
    t = unique("pg3_multi")
    cur = dev.execute(
        f"create table {t} (id int); insert into {t} values (1), (2); select sum(id) from {t}"
    )
    # One result per statement, as PostgreSQL sends them.
    assert cur.statusmessage == "CREATE TABLE"
    assert cur.nextset() and cur.statusmessage == "INSERT 0 2"
    assert cur.nextset() and cur.fetchone() == (3,)
    assert not cur.nextset()
    assert count_rows(it_database, t) == 2


def test_async_connection(gateway: Gateway) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(
            gateway.dsn("agent"), autocommit=True
        ) as conn:
            cur = await conn.execute("select %s::text || 'b', 41 + %s", ("a", 1))
            assert await cur.fetchone() == ("ab", 42)
            with pytest.raises(errors.InsufficientPrivilege, match="blocked by role:reader"):
                await conn.execute("create table pg3_async_nope (a int)")
            cur = await conn.execute("select 'still usable'")
            assert await cur.fetchone() == ("still usable",)
            async with conn.cursor(name="pg3_async_named") as named:
                # A server-side cursor: DECLARE inside a transaction, then FETCHes.
                async with conn.transaction():
                    await named.execute("select generate_series(1, 500)")
                    got = [r[0] async for r in named]
            assert got == list(range(1, 501))

    asyncio.run(main())


def test_prepared_statements_are_reused(dev: psycopg.Connection[Any]) -> None:
    query = "select %s::int * 2, 'prep-' || %s::text"
    for i in range(8):
        assert dev.execute(query, (i, i), prepare=True).fetchone() == (i * 2, f"prep-{i}")
    names = dev.execute(
        "select name from pg_prepared_statements where statement like %s",
        ("%'prep-'%",),
    ).fetchall()
    assert len(names) == 1, f"expected one server-side prepared statement, got {names}"
    # Automatic preparation (prepare_threshold) goes through the same path.
    dev.prepare_threshold = 0
    for i in range(3):
        assert dev.execute("select %s::int + 100", (i,)).fetchone() == (i + 100,)


def test_executemany(dev: psycopg.Connection[Any], it_database: str) -> None:
    t = unique("pg3_many")
    dev.execute(f"create table {t} (id int primary key, name text)")
    with dev.cursor() as cur:
        cur.executemany(f"insert into {t} values (%s, %s)", [(i, f"n{i}") for i in range(500)])
    assert count_rows(it_database, t) == 500


# -- pipeline mode ----------------------------------------------------------------------


def _pipeline_with_failure(
    conn: psycopg.Connection[Any], table: str, bad_sql: str
) -> dict[str, Any]:
    """Two sync points; the second segment fails in the middle. Returns what happened."""
    raised: list[psycopg.Error] = []

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except psycopg.Error as exc:
            raised.append(exc)
            return None

    insert = f"insert into {table} values (%s)"
    with conn.pipeline() as p:
        attempt(lambda: conn.execute(insert, (1,)))
        attempt(lambda: conn.execute(insert, (2,)))
        attempt(p.sync)
        attempt(lambda: conn.execute(insert, (3,)))
        attempt(lambda: conn.execute(bad_sql))
        attempt(lambda: conn.execute(insert, (5,)))
        attempt(p.sync)
        attempt(lambda: conn.execute(insert, (6,)))
        final = attempt(lambda: conn.execute(f"select array_agg(id order by id) from {table}"))
    assert final is not None, f"the statement after the sync point failed: {raised}"
    return {
        "rows": final.fetchone()[0],
        "errors": [type(e) for e in raised],
        "messages": [str(e) for e in raised],
        "after": conn.execute("select 'usable'").fetchone(),
    }


def test_pipeline_block_matches_postgres_semantics(
    dev: psycopg.Connection[Any], it_database: str
) -> None:
    # What PostgreSQL itself does with a failing statement in a pipeline.
    direct_table = unique("pg3_pipe_direct")
    with admin_conn(it_database) as direct:
        direct.execute(f"create table {direct_table} (id int)")
        expected = _pipeline_with_failure(direct, direct_table, "select 1/0")

    t = unique("pg3_pipe")
    dev.execute(f"create table {t} (id int)")
    got = _pipeline_with_failure(dev, t, f"drop table {t}")

    # The server runs the segments before and after the sync point; in the failed
    # segment, the statement before the error is rolled back with its implicit
    # transaction and those after it are skipped until the sync point.
    assert expected["rows"] == [1, 2, 6], expected
    assert got["rows"] == expected["rows"], (got, expected)
    first = [e for e in got["errors"] if e is not errors.PipelineAborted]
    assert first == [errors.InsufficientPrivilege], got
    assert any(BLOCKED in msg for msg in got["messages"]), got
    assert set(got["errors"]) - {errors.InsufficientPrivilege} <= {errors.PipelineAborted}
    assert got["after"] == ("usable",)
    assert count_rows(it_database, t) == 3  # the table was not dropped


def test_pipeline_many_statements(dev: psycopg.Connection[Any], it_database: str) -> None:
    t = unique("pg3_pipemany")
    dev.execute(f"create table {t} (id int, v text)")
    with dev.pipeline():
        curs = [
            dev.execute(f"insert into {t} values (%s, %s) returning id", (i, str(i)))
            for i in range(200)
        ]
        check = dev.execute(f"select count(*) from {t}")
    assert [c.fetchone() for c in curs] == [(i,) for i in range(200)]
    assert check.fetchone() == (200,)
    assert count_rows(it_database, t) == 200


# -- COPY -------------------------------------------------------------------------------


def test_copy_10k_rows_both_ways(dev: psycopg.Connection[Any]) -> None:
    t = unique("pg3_copy")
    dev.execute(f"create table {t} (id int, name text, payload text)")
    rows = [(i, f"name {i} ✓", None if i % 13 == 0 else "x" * (i % 97)) for i in range(10_000)]
    with dev.cursor() as cur:
        with cur.copy(f"copy {t} (id, name, payload) from stdin") as copy:
            for row in rows:
                copy.write_row(row)
        assert cur.rowcount == 10_000
        with cur.copy(f"copy (select id, name, payload from {t} order by id) to stdout") as copy:
            copy.set_types(["int4", "text", "text"])
            back = list(copy.rows())
    assert back == rows
    with dev.cursor() as cur:
        with cur.copy(f"copy {t} to stdout (format binary)") as copy:
            copy.set_types(["int4", "text", "text"])
            binary = sorted(copy.rows(), key=lambda r: r[0])
    assert binary == rows


def test_copy_from_blocked_for_reader(
    agent: psycopg.Connection[Any], dev: psycopg.Connection[Any], it_database: str
) -> None:
    t = unique("pg3_copyro")
    dev.execute(f"create table {t} (id int)")
    with agent.cursor() as cur:
        with pytest.raises(errors.InsufficientPrivilege, match="blocked by role:reader"):
            with cur.copy(f"copy {t} from stdin") as copy:
                copy.write_row((1,))
        # Reading with COPY is a read.
        with cur.copy(f"copy {t} to stdout") as copy:
            assert list(copy.rows()) == []
    assert agent.execute("select 1").fetchone() == (1,)
    assert count_rows(it_database, t) == 0


# -- transactions -----------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_block_inside_transaction_aborts_it(
    gateway: Gateway, it_database: str, protocol: str
) -> None:
    t = unique("pg3_tx")
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {t} (id int)")
    with psycopg.connect(gateway.dsn("dev")) as conn:  # not autocommit: BEGIN is implicit
        conn.execute(f"insert into {t} values (%s)", (1,))
        with pytest.raises(errors.InsufficientPrivilege, match="blocked by guardrail:no-drop"):
            run(conn, f"drop table {t}", protocol)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(errors.InFailedSqlTransaction):
            conn.execute("select 1")
        conn.rollback()
        assert conn.execute(f"select count(*) from {t}").fetchone() == (0,)
        conn.execute(f"insert into {t} values (%s)", (2,))
        conn.commit()
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select array_agg(id) from {t}").fetchone() == ([2],)


def test_transaction_commit_and_rollback(gateway: Gateway, it_database: str) -> None:
    t = unique("pg3_txok")
    with psycopg.connect(gateway.dsn("dev")) as conn:
        conn.execute(f"create table {t} (id int)")
        conn.commit()
        with conn.transaction():
            conn.execute(f"insert into {t} values (1)")
            with pytest.raises(errors.UniqueViolation), conn.transaction():  # a savepoint
                conn.execute(f"alter table {t} add primary key (id)")
                conn.execute(f"insert into {t} values (1)")
            conn.execute(f"insert into {t} values (2)")
        conn.commit()
    assert count_rows(it_database, t) == 2


# -- big messages -----------------------------------------------------------------------


def test_row_larger_than_a_megabyte(dev: psycopg.Connection[Any]) -> None:
    row = dev.execute("select repeat('x', 3000000), 'after'").fetchone()
    assert row is not None
    assert len(row[0]) == 3_000_000 and set(row[0]) == {"x"} and row[1] == "after"
    rows = dev.execute(
        "select g, repeat(chr(64 + g), 1500000) from generate_series(1, 3) g"
    ).fetchall()
    assert [(g, len(s), s[0]) for g, s in rows] == [(g, 1_500_000, chr(64 + g)) for g in (1, 2, 3)]
    assert dev.execute("select 1").fetchone() == (1,)


def test_bytea_param_larger_than_a_megabyte(dev: psycopg.Connection[Any]) -> None:
    t = unique("pg3_blob")
    dev.execute(f"create table {t} (id int, data bytea)")
    blob = bytes(range(256)) * 8192  # 2 MiB
    dev.execute(f"insert into {t} values (%s, %s)", (1, blob))
    digest = dev.execute(f"select md5(data), length(data) from {t}").fetchone()
    assert digest == (hashlib.md5(blob).hexdigest(), len(blob))
    back = dev.execute(f"select data from {t}").fetchone()
    assert back is not None and bytes(back[0]) == blob
    # A large text parameter in text format too.
    text = "é" * 700_000
    assert dev.execute("select length(%s::text)", (text,)).fetchone() == (700_000,)


# -- asynchronous messages --------------------------------------------------------------


def test_notices(dev: psycopg.Connection[Any]) -> None:
    notices: list[tuple[str | None, str | None]] = []
    # A Diagnostic is only valid inside the callback: copy what matters out of it.
    dev.add_notice_handler(lambda d: notices.append((d.severity_nonlocalized, d.message_primary)))
    t = unique("pg3_notice")
    dev.execute(f"create table if not exists {t} (id int)")
    dev.execute(f"create table if not exists {t} (id int)")
    assert notices == [("NOTICE", f'relation "{t}" already exists, skipping')]
    fn = unique("pg3_notice_fn")
    dev.execute(
        f"create function {fn}(n int) returns int language plpgsql as "
        f"$$ begin raise notice 'hello %', n; raise warning 'careful'; return n * 2; end $$"
    )
    assert dev.execute(f"select {fn}(%s)", (21,)).fetchone() == (42,)
    assert notices[1:] == [("NOTICE", "hello 21"), ("WARNING", "careful")]


def test_listen_notify_between_sessions(gateway: Gateway, dev: psycopg.Connection[Any]) -> None:
    channel = unique("pg3_chan")
    with psycopg.connect(gateway.dsn("agent"), autocommit=True) as listener:
        listener.execute(f"listen {channel}")
        dev.execute(f"notify {channel}, 'first'")
        dev.execute("select pg_notify(%s, %s)", (channel, "second"))
        with dev.transaction():
            dev.execute(f"notify {channel}, 'on commit'")
        got = [(n.channel, n.payload) for n in listener.notifies(timeout=5, stop_after=3)]
        assert got == [(channel, "first"), (channel, "second"), (channel, "on commit")]
        # NOTIFY is a write: the read-only agent cannot send one.
        with pytest.raises(errors.InsufficientPrivilege, match="blocked by role:reader"):
            listener.execute(f"notify {channel}, 'nope'")
        assert listener.execute("select 1").fetchone() == (1,)


def test_parameter_status(gateway: Gateway, it_database: str) -> None:
    app = unique("pg3_app")
    with psycopg.connect(gateway.dsn("dev"), autocommit=True, application_name=app) as conn:
        info = conn.info
        assert info.parameter_status("application_name") == app
        assert info.parameter_status("server_version")
        assert info.parameter_status("client_encoding") == "UTF8"
        conn.execute("set application_name = 'pg3-renamed'")
        assert info.parameter_status("application_name") == "pg3-renamed"
        conn.execute("set timezone = 'Asia/Tokyo'")
        assert info.parameter_status("TimeZone") == "Asia/Tokyo"
        assert info.timezone.key == "Asia/Tokyo"  # type: ignore[attr-defined]
        pid = conn.execute("select pg_backend_pid()").fetchone()
        with admin_conn() as admin:
            row = admin.execute(
                "select application_name from pg_stat_activity where pid = %s", pid
            ).fetchone()
        assert row == ("pg3-renamed",)


def test_twenty_concurrent_async_sessions(gateway: Gateway) -> None:
    async def session(i: int) -> tuple[int, int]:
        principal = "agent" if i % 2 else "dev"
        async with await psycopg.AsyncConnection.connect(
            gateway.dsn(principal), autocommit=True
        ) as conn:
            total = 0
            for j in range(10):
                cur = await conn.execute("select %s::int * %s::int", (i, j))
                row = await cur.fetchone()
                assert row is not None
                total += row[0]
            cur = await conn.execute("select sum(g) from generate_series(1, %s) g", (i * 100,))
            assert await cur.fetchone() == ((i * 100) * (i * 100 + 1) // 2 or None,)
            with pytest.raises(errors.InsufficientPrivilege):
                await conn.execute("drop table pg3_concurrent_nope")
            cur = await conn.execute("select pg_backend_pid()")
            row = await cur.fetchone()
            assert row is not None
            assert total == i * 45
            return i, row[0]

    async def main() -> list[tuple[int, int]]:
        return await asyncio.wait_for(asyncio.gather(*(session(i) for i in range(20))), 30)

    results = asyncio.run(main())
    assert sorted(i for i, _ in results) == list(range(20))
    assert len({pid for _, pid in results}) == 20  # one upstream backend per session


# -- blocked statements never reach the server ------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blocked_drop_never_reaches_server(
    dev: psycopg.Connection[Any], it_database: str, protocol: str
) -> None:
    t = unique("pg3_nodrop")
    dev.execute(f"create table {t} (id int)")
    dev.execute(f"insert into {t} values (1)")
    with pytest.raises(errors.InsufficientPrivilege) as info:
        run(dev, f"drop table {t}", protocol)
    assert "wardgate: blocked by guardrail:no-drop: Destructive DDL is blocked" in str(info.value)
    assert info.value.sqlstate == "42501"
    assert count_rows(it_database, t) == 1
    with pytest.raises(
        errors.InsufficientPrivilege, match="blocked by guardrail:delete-needs-where"
    ):
        run(dev, f"delete from {t}", protocol)
    assert count_rows(it_database, t) == 1
    assert run(dev, f"select count(*) from {t}", protocol).fetchone() == (1,)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_blocked_write_never_reaches_server(
    agent: psycopg.Connection[Any], dev: psycopg.Connection[Any], it_database: str, protocol: str
) -> None:
    t = unique("pg3_noins")
    dev.execute(f"create table {t} (id int); create sequence {t}_seq")

    def sequence_state() -> tuple[Any, ...] | None:
        with admin_conn(it_database) as conn:
            return conn.execute(f"select last_value, is_called from {t}_seq").fetchone()

    before = sequence_state()
    # nextval() has an effect even when the statement later fails or is rolled back, so
    # an unchanged sequence proves the server never executed the statement at all.
    for sql in (
        f"insert into {t} values (nextval('{t}_seq'))",
        f"select nextval('{t}_seq')",
        f"with x as (insert into {t} values (nextval('{t}_seq')) returning id) select * from x",
        f"select 1; insert into {t} values (nextval('{t}_seq'))",
    ):
        if protocol != "simple" and ";" in sql:
            continue  # several statements in one string exist only in the simple protocol
        with pytest.raises(errors.InsufficientPrivilege, match="blocked by role:reader"):
            run(agent, sql, protocol)
        assert run(agent, "select 'ok'", protocol).fetchone() == ("ok",)
    assert sequence_state() == before
    assert count_rows(it_database, t) == 0
    # Server-side parameters do not change the verdict.
    with pytest.raises(errors.InsufficientPrivilege):
        agent.execute(f"insert into {t} values (%s)", (7,))
    assert count_rows(it_database, t) == 0


@pytest.mark.parametrize("principal", ["dev", "agent"])
def test_protocol_execute_of_sql_prepared_statement_is_judged_by_what_it_prepares(
    gateway: Gateway, principal: str
) -> None:
    """A statement made by SQL PREPARE can be run by SQL EXECUTE or by a protocol-level
    Bind/Execute. The gateway saw the PREPARE, so both are judged by what it prepares:
    a reader may run a prepared SELECT either way."""
    name = unique("pg3_sqlprep")
    with psycopg.connect(gateway.dsn(principal), autocommit=True) as conn:
        conn.execute(f"prepare {name} as select 'prepared by sql'")
        assert conn.execute(f"execute {name}").fetchone() == ("prepared by sql",)
        res = conn.pgconn.exec_prepared(name.encode(), [])  # Bind, Describe, Execute, Sync
        assert res.status == psycopg.pq.ExecStatus.TUPLES_OK, res.error_message
        assert res.get_value(0, 0) == b"prepared by sql"
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


@pytest.mark.parametrize("principal", ["dev", "agent"])
def test_sql_prepared_write_run_by_the_protocol_is_judged_as_a_write(
    gateway: Gateway, principal: str, it_database: str
) -> None:
    """For a reader the PREPARE of a write is refused already, so there is nothing to run."""
    t = unique("pg3_prepw")
    with admin_conn(it_database) as admin:
        admin.execute(f"create table {t} (a int)")
        admin.execute(f"grant all on {t} to public")
    with psycopg.connect(gateway.dsn(principal), autocommit=True) as conn:
        if principal == "agent":
            with pytest.raises(errors.InsufficientPrivilege):
                conn.execute(f"prepare w as insert into {t} values (1)")
            # Nothing was prepared under that name: the server refuses the Bind.
            res = conn.pgconn.exec_prepared(b"w", [])
            assert res.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"26000"
        else:
            conn.execute(f"prepare w as insert into {t} values (1)")
            res = conn.pgconn.exec_prepared(b"w", [])
            assert res.status == psycopg.pq.ExecStatus.COMMAND_OK, res.error_message
        assert conn.execute("select 'usable'").fetchone() == ("usable",)
    assert count_rows(it_database, t) == (1 if principal == "dev" else 0)


def test_large_messages_over_tls(gateway: Gateway) -> None:
    with psycopg.connect(gateway.dsn("dev", sslmode="require"), autocommit=True) as conn:
        assert conn.pgconn.ssl_in_use
        row = conn.execute("select md5(repeat('z', 3000000)), repeat('z', 3000000)").fetchone()
        assert row is not None and len(row[1]) == 3_000_000
        blob = bytes(range(256)) * 6000
        assert conn.execute("select md5(%s::bytea)", (blob,)).fetchone() == (
            hashlib.md5(blob).hexdigest(),
        )


def test_non_utf8_client_encoding(gateway: Gateway) -> None:
    """PostgreSQL converts from the client's encoding; LATIN1 clients send LATIN1 bytes."""
    with admin_conn() as direct:
        direct.execute("set client_encoding = 'LATIN1'")
        expected = direct.execute("select 'café', length('café')").fetchone()
    assert expected == ("café", 4)
    try:
        with psycopg.connect(gateway.dsn("dev"), autocommit=True, client_encoding="latin1") as conn:
            assert conn.info.encoding == "iso8859-1"
            assert conn.execute("select 'café', length('café')").fetchone() == expected
            assert conn.execute("select %s::text", ("naïve",)).fetchone() == ("naïve",)
    except psycopg.OperationalError as exc:
        pytest.fail(
            "a client whose client_encoding is LATIN1 loses its session at the first non-ASCII "
            "character: the gateway decodes every SQL string as UTF-8 and answers anything "
            f"else with a FATAL protocol violation. Gateway said: {exc}"
        )


@pytest.mark.parametrize("how", ["startup", "set"])
def test_encodings_the_gateway_cannot_read_safely_are_refused(gateway: Gateway, how: str) -> None:
    """In SJIS a multibyte character can end in a quote byte: misreading it would let a
    statement hide inside a string literal. A session asking for it at startup is
    refused; a SET of it is refused as a statement and the session goes on, unchanged."""
    if how == "startup":
        with pytest.raises(
            psycopg.OperationalError, match="client_encoding 'SJIS' is not supported"
        ):
            psycopg.connect(gateway.dsn("dev"), client_encoding="sjis")
        return
    with psycopg.connect(gateway.dsn("dev"), autocommit=True) as conn:
        for sql in (
            "set client_encoding = 'SJIS'",
            "set names 'big5'",
            "select set_config('client_encoding', 'GBK', false)",
        ):
            with pytest.raises(
                psycopg.errors.InsufficientPrivilege, match="wardgate:unreadable-encoding"
            ):
                conn.execute(sql)
        # The server never switched: the session goes on in UTF8.
        assert conn.execute("show client_encoding").fetchone() == ("UTF8",)
        assert conn.execute("select 1").fetchone() == (1,)
