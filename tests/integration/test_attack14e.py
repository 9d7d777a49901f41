"""attack14e: values coerced to a type no statement text names. A domain whose CHECK calls
a user function runs that function for every value converted to it; the gate judged such
conversions only where the text casts (`3::touchy`). Here the type comes from a Parse's
parameter OIDs, from a SQL PREPARE's argument list, or from the row type of a table the
populate functions read values into. Each is driven through the real gateway into a real
PostgreSQL and judged by the write log of `pg_diff.py`'s target, not by the verdict.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Target, Wire, lazy_wires, make_target, start_gateway
from tests.integration.test_attack14c import _unchanged
from tests.integration.test_reviews import Api
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query
BOTH = pytest.mark.parametrize("who", ["ro", "rv"])

# Made by the database's owner before the gateway starts: a domain whose CHECK writes
# (stock row 7), a table of it, a table of an array of it.
EXTRA = """
create function public.audit_touch(int) returns bool language sql volatile as
    $$ update public.stock set qty = qty + 1000 where id = 7; select true $$;
create domain public.touchy as int check (public.audit_touch(value));
create table public.dt (d public.touchy);
create table public.holder (arr public.touchy[]);
create function public.imm_touch(int) returns int language plpgsql immutable as
    $$ begin perform public.bump(8); return $1; end $$;
create table public.defs (a int default public.imm_touch(1), b int);
"""


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    for made in make_target(EXTRA):
        with made.conn() as c:
            c.execute(
                "grant select, insert, update on public.dt, public.holder, public.defs"
                f' to "{made.role}"'
            )
        yield made


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("attack14e"), target)
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


@pytest.fixture(scope="module")
def oids(target: Target) -> dict[str, int]:
    with target.conn() as c:
        rows = c.execute(
            "select typname, oid::int from pg_type where typname in"
            " ('touchy', '_touchy', 'dt', 'int4')"
        ).fetchall()
    return {str(name): int(oid) for name, oid in rows}


def _wait_for_catalog_watch(w: Wire) -> None:
    """The catalogue watch reads which types run user code at start: until then a cast
    to touchy is a plain read (its documented window)."""
    deadline = time.monotonic() + 20
    while True:
        reply = w.run(q("select null::touchy"), ready=1)
        if "cast to touchy" in reply.text():  # not a catalogue still unread
            return
        assert time.monotonic() < deadline, "the catalogue watch never flagged touchy"
        time.sleep(0.3)


# -- a Parse declares a parameter's type by OID ------------------------------------------
# `select $1` with $1 declared as touchy (Parse's parameter type OIDs): the server
# converts the bound '3' to touchy at Bind, and the CHECK wrote stock row 7. The gate
# judged `select $1`, a read.


@BOTH
@pytest.mark.parametrize(
    ("declared", "value"), [("touchy", "3"), ("_touchy", "{3}"), ("dt", "(3)")]
)
def test_a_parameter_declared_as_a_checked_domain_is_refused(
    target: Target,
    wires: dict[str, Wire],
    oids: dict[str, int],
    who: str,
    declared: str,
    value: str,
) -> None:
    w = wires[who]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    reply = w.run(
        build.parse("", "select $1", (oids[declared],)),
        build.bind("", "", [value]),
        build.execute(""),
        build.sync(),
        ready=1,
    )
    assert "wardgate:parameter-type" in reply.text(), reply.text()
    assert reply.rows() == 0
    _unchanged(target, before, start)
    # Declared as its base type, or not at all, the same statement still reads.
    for types in [(oids["int4"],), (0,)]:
        reply = w.run(
            build.parse("", "select $1", types),
            build.bind("", "", ["3"]),
            build.execute(""),
            build.sync(),
            ready=1,
        )
        assert reply.errors() == [] and reply.rows() == 1, reply.text()


# -- SQL PREPARE's argument types are casts of every EXECUTE argument --------------------


@BOTH
def test_prepare_with_a_checked_domain_argument_is_judged_as_its_cast(
    target: Target, wires: dict[str, Wire], who: str
) -> None:
    # `prepare p(touchy) as select $1; execute p(3)`: the EXECUTE converts 3 to touchy.
    # PREPARE's argument list was not read as types, so both were reads.
    w = wires[who]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    reply = w.run(q("prepare p14e(touchy) as select $1; execute p14e(3)"), ready=1)
    assert "cast to touchy" in reply.text(), reply.text()
    assert reply.rows() == 0
    _unchanged(target, before, start)


# -- the populate functions read values as a row's column types -------------------------
# `x` is a (NULL) row of dt: json_populate_record(x, '{"d": 3}') converts 3 to touchy.

POPULATES = [
    """select json_populate_record(x, '{"d": 3}') from (values (1)) v left join dt x on false""",
    """select (jsonb_populate_record(x, '{"d": 3}')).d from (values (1)) v"""
    " left join public.dt x on false",
    """select * from (values (1)) v left join dt x on false,"""
    """ json_populate_recordset(x, '[{"d": 3}]')""",
    """select jsonb_populate_recordset(x, '[{"arr": [3]}]')"""
    " from (values (1)) v left join holder x on false",
]


@BOTH
def test_populating_a_row_of_a_checked_domain_is_a_call_of_user_code(
    target: Target, wires: dict[str, Wire], who: str
) -> None:
    w = wires[who]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    for sql in POPULATES:
        reply = w.run(q(sql), ready=1)
        assert "runs a user function" in reply.text(), (sql, reply.text())
        assert reply.rows() == 0, sql
    _unchanged(target, before, start)
    # A row of a table without such a type is still a read.
    reply = w.run(
        q("""select json_populate_record(s, '{"qty": 3}') from stock s where id = 1"""), ready=1
    )
    assert reply.errors() == [] and reply.rows() == 1, reply.text()


# -- values converted to a row or array type that holds one -------------------------------
# PostgreSQL resolves `coalesce(x, '(3)')` with x a row of dt to dt (record_in runs the
# CHECK of column d), and `x.arr = '{3}'`, `coalesce(x.arr, array[3])` or a UNION with
# holder.arr (touchy[]) to touchy[]: no cast anywhere. A plain domain column resolves
# to its base type (`d = '3'` is an int comparison), which stays a read.

CONVERSIONS = [
    "select coalesce(x, '(3)') from (values (1)) v left join dt x on false",
    "select coalesce(x.*, '(3)') from (values (1)) v left join dt x on false",
    "select coalesce(public.dt.*, '(3)') from (values (1)) v left join public.dt on false",
    "select x.arr = '{3}' from (values (1)) v left join holder x on false",
    "select coalesce(x.arr, array[3]) from (values (1)) v left join holder x on false",
    "select x.arr from holder x union all select array[3]",
]


@BOTH
def test_a_value_converted_to_a_row_or_array_of_a_checked_domain_runs_user_code(
    target: Target, wires: dict[str, Wire], who: str
) -> None:
    w = wires[who]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    for sql in CONVERSIONS:
        reply = w.run(q(sql), ready=1)
        assert "runs a user function" in reply.text(), (sql, reply.text())
        assert reply.rows() == 0, sql
    # The same through a parameter the server types from the column (Parse with 0).
    for sql, value in [
        ("select coalesce(x, $1) from (values (1)) v left join dt x on false", "(3)"),
        ("select x.arr = $1 from (values (1)) v left join holder x on false", "{3}"),
    ]:
        reply = w.run(
            build.parse("", sql),
            build.bind("", "", [value]),
            build.execute(""),
            build.sync(),
            ready=1,
        )
        assert "runs a user function" in reply.text(), (sql, reply.text())
    _unchanged(target, before, start)
    for sql in ["select * from dt", "select d from dt where d = '3'"]:
        reply = w.run(q(sql), ready=1)
        assert reply.errors() == [], (sql, reply.text())


# -- nothing of a held statement that runs user code reaches the server ------------------
# A statement that needs a review is held at Execute; its Parse and Bind went on. But
# parse analysis converts a literal cast to a row or array type (record_in, array_in:
# the domain's CHECK), and planning at Bind folds an IMMUTABLE function of constants:
# both wrote, and a Sync without any Execute committed it.


@pytest.mark.parametrize(
    "messages",
    [
        [build.parse("", "select '(3)'::dt")],
        [build.parse("", "select '{3}'::touchy[]")],
        [build.parse("", "select imm_touch(3)"), build.bind("", "")],
        [build.parse("", "select imm_touch($1)"), build.bind("", "", ["3"])],
        # A held write converts its literal to touchy[] while it is parsed.
        [build.parse("", "insert into holder values ('{3}')")],
        [build.parse("", "update holder set arr = '{3}' where false")],
        # The column default calls imm_touch: planning at Bind folds it.
        [build.parse("", "insert into defs (b) values ($1)"), build.bind("", "", ["1"])],
    ],
)
def test_a_held_statement_that_runs_user_code_is_not_parsed_before_approval(
    target: Target, wires: dict[str, Wire], messages: list[bytes]
) -> None:
    w = wires["rv"]
    _wait_for_catalog_watch(w)
    start, before = target.last_id(), target.snapshot()
    reply = w.run(*messages, build.sync(), ready=1)
    assert "wardgate:review-before-parse" in reply.text(), reply.text()
    _unchanged(target, before, start)
    # Sent whole as a simple Query, it is held for a review (and nothing runs).
    reply = w.run(q("select imm_touch(3)"), ready=1)
    assert reply.review_ids(), reply.text()
    _unchanged(target, before, start)
    # A held write without user code still goes through Parse and Bind, held at Execute.
    reply = w.run(
        build.parse("", "update stock set qty = $1 where id = 2"),
        build.bind("", "", ["3"]),
        build.execute(""),
        build.sync(),
        ready=1,
    )
    assert reply.review_ids() and reply.kinds().startswith(b"12"), reply.text()
    _unchanged(target, before, start)


def test_a_bind_does_not_plan_an_approved_prepare_that_runs_user_code(
    gw: Gateway, target: Target, wires: dict[str, Wire]
) -> None:
    # The approval of `PREPARE p AS SELECT imm_touch(3)` was for preparing it (which
    # runs nothing); each protocol Bind to p planned it, and planning ran imm_touch.
    w = wires["rv"]
    first = w.run(q("prepare p14e_imm as select imm_touch(3)"), ready=1)
    assert first.review_ids(), first.text()
    reviewer = Api(gw, "reviewer")
    reviewer.post(f"/reviews/{first.review_ids()[0]}/approve")
    reviewer.client.close()
    start, before = target.last_id(), target.snapshot()
    assert w.run(q("prepare p14e_imm as select imm_touch(3)"), ready=1).tags() == ["PREPARE"]
    reply = w.run(build.bind("", "p14e_imm"), build.sync(), ready=1)
    assert "wardgate:review-before-parse" in reply.text(), reply.text()
    _unchanged(target, before, start)
    w.run(q("deallocate p14e_imm"), ready=1)
