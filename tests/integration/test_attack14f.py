"""attack14f: attacks on the attack14e fixes. A domain whose CHECK calls a user function
(`touchy`, a domain over int) was judged only where a value is converted to a row or
array of it: a plain `touchy` column resolves to its base type when compared, so its
table did not count. But a write converts each value to the column's own type, and a
parameter PostgreSQL types from that column is bound as the domain: a held INSERT or
UPDATE sent as Parse + Bind + Sync (no Execute) ran the CHECK at Bind, before any
approval, and the Sync committed its write. And an array of that column is an array of
the domain: a read comparing it with a literal ran the CHECK. Judged by the write log of `pg_diff.py`'s
target, not by the verdict.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Target, Wire, lazy_wires, make_target, start_gateway
from tests.integration.test_attack14c import _unchanged
from tests.integration.test_attack14e import EXTRA, _wait_for_catalog_watch
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    for made in make_target(EXTRA):
        with made.conn() as c:
            c.execute(
                "grant select, insert, update, delete on public.dt, public.holder, public.defs"
                f' to "{made.role}"'
            )
        yield made


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("attack14f"), target)
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


# -- a held write whose parameter the server types as a checked domain -------------------
# `insert into dt values ($1)`: Parse with type 0, PostgreSQL types $1 as touchy (the
# column's type, not its base); Bind converts '3' to touchy, whose CHECK wrote stock
# row 7; Sync committed it. The write itself was held at Execute, which never came.


@pytest.mark.parametrize(
    "sql",
    [
        "insert into dt values ($1)",
        "insert into public.dt select $1",
        "update dt set d = $1 where false",
        "insert into dt values ($1) on conflict do nothing",
    ],
)
def test_a_held_write_binding_a_checked_domain_column_is_not_parsed(
    target: Target, wires: dict[str, Wire], sql: str
) -> None:
    w = wires["rv"]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    reply = w.run(build.parse("", sql), build.bind("", "", ["3"]), build.sync(), ready=1)
    assert "wardgate:review-before-parse" in reply.text(), reply.text()
    _unchanged(target, before, start)
    # Sent whole as a simple Query it is held for a review, and nothing runs.
    reply = w.run(q(sql.replace("$1", "3")), ready=1)
    assert reply.review_ids(), reply.text()
    _unchanged(target, before, start)
    # The read-only principal: blocked, as before.
    reply = wires["ro"].run(build.parse("", sql), build.bind("", "", ["3"]), build.sync(), ready=1)
    assert "42501" in reply.text(), reply.text()
    _unchanged(target, before, start)


# -- an array of a checked-domain column is an array of the domain ------------------------
# ARRAY[x.d], ARRAY(SELECT d FROM dt) and array_agg(d) have type touchy[] (a domain
# keeps its type inside an array): `= '{3}'` converts the literal with array_in, which
# runs touchy's CHECK while parsing. Polymorphic built-ins with two polymorphic
# arguments (array_position, width_bucket, lag) convert the other one likewise. The principal whose writes need a review reads
# freely: its CHECK wrote stock row 7. The read-only one was stopped only by the
# server's read-only transaction.

ARRAYS = [
    "select array[x.d] = '{3}' from (values (1)) v left join dt x on false",
    "select coalesce(array[x.d], '{3}') from (values (1)) v left join dt x on false",
    "select array(select d from dt) = '{3}'",
    "select array(select d from public.dt) || '{3}'",
    "select (select array_agg(d) from dt) = '{3}'",
    "select percentile_disc('{0.5}'::float8[]) within group (order by d) = '{3}' from dt",
    # Polymorphic built-ins resolve '{3}' (or '3') to the domain's (array) type.
    "select array_position('{3}', x.d) from (values (1)) v left join dt x on false",
    "select array_remove('{3}', x.d) from (values (1)) v left join dt x on false",
    "select width_bucket(x.d, '{3}') from (values (1)) v left join dt x on false",
    "select lag(x.d, 1, '3') over () from (values (1)) v left join dt x on false",
]


@pytest.mark.parametrize("who", ["ro", "rv"])
def test_an_array_of_a_checked_domain_column_is_a_call_of_user_code(
    target: Target, wires: dict[str, Wire], who: str
) -> None:
    w = wires[who]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    for sql in ARRAYS:
        reply = w.run(q(sql), ready=1)
        assert "runs a user function" in reply.text(), (sql, reply.text())
        assert reply.rows() == 0, sql
    reply = w.run(
        build.parse("", "select array(select d from dt) = $1"),
        build.bind("", "", ["{3}"]),
        build.execute(""),
        build.sync(),
        ready=1,
    )
    assert "runs a user function" in reply.text(), reply.text()
    _unchanged(target, before, start)
    # The column itself, and arrays of other tables, are still reads.
    for sql in [
        "select d from dt where d = '3'",
        "select array(select id from stock) = '{3}'",
        "select array_agg(qty) from stock",
    ]:
        reply = w.run(q(sql), ready=1)
        assert reply.errors() == [], (sql, reply.text())


# -- the generic input functions, called by name ------------------------------------------
# domain_in(text, type OID, typmod) reads a value as the type the OID names: touchy's
# CHECK ran, and no cast or type name is in the text (only a string or a number). They
# were judged read-only built-ins (STABLE).

TYPE_INPUTS = [
    "select count(domain_in('3', 'touchy'::regtype, -1))",
    "select count(pg_catalog.domain_in('3', 'public.touchy'::regtype::oid, -1))",
    "select count(array_in('{3}', 'touchy'::regtype, -1))",
    "select count(record_in('(3)', 'dt'::regtype, -1))",
]


@pytest.mark.parametrize("who", ["ro", "rv"])
def test_an_input_function_called_by_name_is_a_call_of_user_code(
    target: Target, wires: dict[str, Wire], oids: dict[str, int], who: str
) -> None:
    w = wires[who]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    for sql in [*TYPE_INPUTS, f"select count(domain_in('3', {oids['touchy']}, -1))"]:
        reply = w.run(q(sql), ready=1)
        assert "unknown_function" in reply.text(), (sql, reply.text())
        assert reply.rows() == 0, sql
    _unchanged(target, before, start)


@pytest.fixture(scope="module")
def oids(target: Target) -> dict[str, int]:
    with target.conn() as c:
        rows = c.execute(
            "select typname, oid::int from pg_type where typname = 'touchy'"
        ).fetchall()
    return {str(name): int(oid) for name, oid in rows}


def test_reads_and_plain_writes_still_work(
    gw: Gateway, target: Target, wires: dict[str, Wire]
) -> None:
    # Reading the table (its domain resolves to int when compared) stays a read, and a
    # held write into a table without such a column still goes through Parse and Bind.
    w = wires["rv"]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    for who in ("ro", "rv"):
        for sql, value in [("select * from dt where d = $1", "3"), ("select $1 from dt", "3")]:
            reply = wires[who].run(
                build.parse("", sql),
                build.bind("", "", [value]),
                build.execute(""),
                build.sync(),
                ready=1,
            )
            assert reply.errors() == [], (who, sql, reply.text())
    reply = w.run(
        build.parse("", "update stock set qty = $1 where id = 2"),
        build.bind("", "", ["3"]),
        build.execute(""),
        build.sync(),
        ready=1,
    )
    assert reply.review_ids() and reply.kinds().startswith(b"12"), reply.text()
    # psycopg 3 and asyncpg, parameterised, for both principals.
    for who in ("ro", "rv"):
        with psycopg.connect(gw.dsn(who, "diff"), autocommit=True) as conn:
            row = conn.execute("select qty from stock where id = %s", (1,)).fetchone()
            assert row is not None
            assert conn.execute("select count(*) from dt").fetchone() == (0,)

        async def run(who: str = who) -> None:
            conn = await asyncpg.connect(gw.dsn(who, "diff"), timeout=10)
            try:
                assert await conn.fetchval("select id from stock where id = $1", 2) == 2
                assert await conn.fetchval("select count(*) from dt where d = $1", 3) == 0
            finally:
                await conn.close()

        asyncio.run(run())
    _unchanged(target, before, start)
