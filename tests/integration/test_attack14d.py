"""attack14d: the two holes issue 14's earlier rounds left open, and variants of its classes
found by a read-only agent with real clients, each driven through the real gateway into a
real PostgreSQL and judged by what the server did or returned (the write log and
snapshot of `pg_diff.py`'s target, the rows that reached the client), not by the verdict.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Target, Wire, lazy_wires, make_target, start_gateway
from tests.integration.test_attack14c import _unchanged
from tests.integration.test_reviews import Api
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query
BOTH = pytest.mark.parametrize("who", ["ro", "rv"])

# Made by the database's owner before the gateway starts. safe_functions lists
# public.peek and public.only_here (both only read); appfuncs.peek writes, and so does
# public."Peek" (a quoted name is another routine than peek).
EXTRA = """
create function public.peek(int) returns int language sql volatile as $$ select $1 $$;
create function appfuncs.peek(int) returns int language sql volatile as
    $$ update public.stock set qty = qty + 1000 where id = 3; select $1 $$;
create function public."Peek"(int) returns int language sql volatile as
    $$ update public.stock set qty = qty + 1000 where id = 4; select $1 $$;
create function public.only_here(int) returns int language sql volatile as $$ select $1 $$;
"""
SAFE = "safe_functions: [public.peek, public.only_here]\n"


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    yield from make_target(EXTRA)


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("attack14d"), target, SAFE)
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


def _refused(reply: Any) -> bool:
    return any(e.get("M", "").startswith(("wardgate:", "big_rows")) for e in reply.errors()) or (
        bool(reply.review_ids())
    )


# -- 1. without_limit: a read is bounded by what reaches the client ---------------------
# big_rows has 50 rows; the rig's guardrail `big-needs-limit` blocks reading it without
# a LIMIT. A LIMIT on rows bounds nothing when one row collects every row's values, and
# a sub-query, a CTE or a prepared SELECT reads as much as the statement around it.

UNBOUNDED = [
    "select array(select id from big_rows)",
    "select array_agg(id) from big_rows",
    "select array_agg(id) from big_rows limit 1",
    "select string_agg(id::text, ',') from big_rows limit 1",
    "select json_agg(b) from big_rows b limit 1",
    "select jsonb_agg(b) from big_rows b limit 1",
    "select xmlagg(xmlelement(name i, id)) from big_rows limit 1",
    "select array_agg(id) over () from big_rows limit 1",
    "select (select count(*) from big_rows)",
    "select (select string_agg(id::text, ',') from big_rows limit 1)",
    "with c as (select array_agg(id) a from big_rows) select * from c limit 1",
    "select * from (select array_agg(id) from big_rows) s limit 1",
    "select a from stock, lateral (select array_agg(id) a from big_rows) s limit 1",
    "select x from (values ((select array_agg(id) from big_rows))) v(x) limit 1",
    "select * from coalesce((select array_agg(id) from big_rows)) c limit 1",
    "select (select count(*) from big_rows limit null)",
    "select (select count(*) from big_rows limit all)",
    "select * from big_rows offset 0",
    # Any aggregate's one value is computed from every row: this sum is every id.
    "select sum(id::numeric * 1000::numeric ^ id) from big_rows limit 1",
    "select count(*) from big_rows limit 1",
    "select (select count(*) from big_rows limit 1)",
    "select max(id) filter (where id > 0) from big_rows limit 1",
    # A recursive CTE is a loop: each step adds one row's value to what it carries on.
    "with recursive r(i, acc) as (select 0, ''::text union all select i + 1, acc || ','"
    " || (select id::text from big_rows order by id offset i limit 1) from r where i < 50)"
    " select acc from r order by i desc limit 1",
]


@pytest.mark.parametrize("sql", UNBOUNDED)
def test_a_collected_or_nested_unbounded_read_is_no_limit(wires: dict[str, Wire], sql: str) -> None:
    reply = wires["ro"].run(q(sql), ready=1)
    assert "big_rows is read with a LIMIT" in reply.text(), (sql, reply.text())
    assert reply.rows() == 0  # none of big_rows' values reached the client


def test_bounded_reads_of_big_rows_still_run(wires: dict[str, Wire]) -> None:
    w = wires["ro"]
    for sql, rows in [
        ("select id from big_rows limit 3", 3),
        ("select * from (select * from big_rows) s limit 2", 2),
        ("with c as (select * from big_rows) select * from c limit 2", 2),
        ("select (select id from big_rows order by id limit 1)", 1),
        ("select id % 5 from big_rows group by 1 limit 3", 3),
        ("select id from big_rows where id in (select id from stock) limit 4", 4),
    ]:
        reply = w.run(q(sql), ready=1)
        assert reply.errors() == [], (sql, reply.text())
        assert reply.rows() == rows, sql


def test_a_limit_at_one_depth_is_not_taken_for_another_by_the_cache(
    wires: dict[str, Wire],
) -> None:
    # LIMIT 1 and LIMIT NULL share a fingerprint; a verdict cached for the first must not
    # serve the second, at any depth.
    w = wires["ro"]
    assert (
        w.run(
            q("select (select array_agg(id) from (select id from big_rows limit 1) s)"), ready=1
        ).rows()
        == 1
    )
    reply = w.run(
        q("select (select array_agg(id) from (select id from big_rows limit null) s)"), ready=1
    )
    assert "big_rows is read with a LIMIT" in reply.text() and reply.rows() == 0, reply.text()


@pytest.mark.parametrize("prepare", [False, True])
def test_execute_of_a_prepared_unbounded_select_is_no_limit(gw: Gateway, prepare: bool) -> None:
    # PREPARE p AS SELECT * FROM big_rows was a `prepare` (no limit kind), and EXECUTE p,
    # judged as what p prepares, returned all 50 rows. Now the PREPARE is refused (as a
    # DECLARE of it is), whether sent as a simple Query or through Parse/Bind/Execute.
    rows: list[Any] = []
    with psycopg.connect(gw.dsn("ro", "diff"), autocommit=True) as c:
        with pytest.raises(psycopg.Error, match="big_rows is read with a LIMIT"):
            c.execute("prepare p14d as select * from big_rows", prepare=prepare)
            rows = c.execute("execute p14d", prepare=prepare).fetchall()
        assert rows == []
        assert c.execute("select id from big_rows limit 2").fetchall() == [(1,), (2,)]


def test_a_cursor_or_copy_of_a_collected_read_is_no_limit(wires: dict[str, Wire]) -> None:
    w = wires["ro"]
    for sql in [
        "copy (select array_agg(id) from big_rows limit 1) to stdout",
        "begin; declare c14 cursor for select string_agg(id::text, ',') from big_rows limit 1;"
        " fetch all c14; commit",
    ]:
        reply = w.run(q(sql), ready=1)
        assert "big_rows is read with a LIMIT" in reply.text(), (sql, reply.text())
        assert reply.rows() == 0 and b"d" not in reply.kinds(), sql
        w.run(q("rollback"), ready=1)


# -- 2. safe_functions: a qualified entry covers only a call that resolves to it --------


def _wait_for_catalog_watch(w: Wire) -> None:
    """The catalogue watch reads which schemas hold which routines at start: until then
    a bare call of a name listed only qualified is unknown (the stricter reading)."""
    deadline = time.monotonic() + 20
    while True:
        reply = w.run(q("select only_here(1)"), ready=1)
        if reply.errors() == []:
            return
        assert time.monotonic() < deadline, reply.text()
        time.sleep(0.5)


def test_a_bare_call_of_a_safe_name_another_schema_holds_is_not_safe(
    target: Target, wires: dict[str, Wire]
) -> None:
    # safe_functions: [public.peek]; appfuncs.peek writes. With appfuncs first on the
    # search_path (pg_catalog still first: allowed), a bare peek(1) runs appfuncs.peek.
    w = wires["rv"]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    reply = w.run(q("set search_path = appfuncs, public"), ready=1)
    assert reply.errors() == [], reply.text()
    reply = w.run(q("select peek(1)"), ready=1)
    assert reply.review_ids(), reply.text()  # a call of an unknown function: a write
    # The same name written as the listed one is still safe, and runs public.peek.
    reply = w.run(q("select public.peek(2)"), ready=1)
    assert reply.errors() == [] and reply.rows() == 1, reply.text()
    w.run(q("reset search_path"), ready=1)
    _unchanged(target, before, start)


def test_a_quoted_name_is_not_the_listed_lower_case_one(
    target: Target, wires: dict[str, Wire]
) -> None:
    # public."Peek" is another routine than public.peek: PostgreSQL folds only unquoted
    # names. The gate lower-cased every function name, so it was "safe".
    w = wires["rv"]
    start, before = target.last_id(), target.snapshot()
    for sql in ['select public."Peek"(1)', 'select "public"."Peek"(1)', 'select U&"Pe\\0065k"(1)']:
        reply = w.run(q(sql), ready=1)
        assert _refused(reply), (sql, reply.text())
    _unchanged(target, before, start)


# -- 3. an approval binds the settings that change the text a value becomes -------------
# bytea_output and xmlbinary ("Statement Behavior", any user may set them) were not in
# the review context: approved with the defaults, the same UPDATE stored another text
# after the agent changed them.


@pytest.mark.parametrize(
    ("setting", "sql", "approved"),
    [
        (
            "bytea_output = escape",
            "update stock set note = '\\x41'::bytea::text where id = 2",
            "\\x41",
        ),
        (
            "xmlbinary = hex",
            "update stock set note = xmlelement(name b, 'AB'::bytea)::text where id = 2",
            "<b>QUI=</b>",
        ),
    ],
)
def test_an_approval_binds_how_values_become_text(
    gw: Gateway, target: Target, setting: str, sql: str, approved: str
) -> None:
    w = Wire(gw, "rv")
    try:
        first = w.run(q(sql), ready=1)
        assert first.review_ids(), first.text()
        reviewer = Api(gw, "reviewer")
        reviewer.post(f"/reviews/{first.review_ids()[0]}/approve")
        reviewer.client.close()
        assert w.run(q(f"set {setting}"), ready=1).errors() == []
        start = target.last_id()
        again = w.run(q(sql), ready=1)
        assert again.review_ids() and again.review_ids() != first.review_ids(), again.text()
        assert target.log(start) == []
        # Under the settings it was approved with, the approval runs it, once.
        w.run(q(f"reset {setting.split(' ')[0]}"), ready=1)
        ran = w.run(q(sql), ready=1)
        assert ran.errors() == [], ran.text()
        with target.conn() as c:
            assert c.execute("select note from public.stock where id = 2").fetchone() == (approved,)
            c.execute("update public.stock set note = null where id = 2")
    finally:
        w.close()
