"""Acceptance suite of issue 14: every example of the issue driven through the real
gateway into a real PostgreSQL, judged by the server's own write log (`pg_diff.py`).

Invariants, checked on the server after each case: for `ro` (its role cannot write)
the write log stays empty and nothing else changed; for `rv` (its writes need a
review) every logged write is one an approval was used for, once. And `wardgate
policy check`, asked about the statement the wire judged, gives the same decision.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.conftest import Gateway
from tests.integration.pg_diff import (
    Reply,
    Target,
    Wire,
    approve,
    lazy_wires,
    make_target,
    policy_check,
    start_gateway,
    wire_decision,
)
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    yield from make_target()


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("diffgw"), target)
    yield gateway
    gateway.stop()


class Guard:
    """The server's state when a case began, and the writes approvals allow."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.start = target.last_id()
        self.snap = target.snapshot()
        self.approved: list[str] = []  # a text each allowed write's query contains

    def allow(self, query_part: str) -> None:
        self.approved.append(query_part)

    def check(self) -> list[tuple[int, str, str, str]]:
        writes = self.target.log(self.start)
        left = list(self.approved)
        for row in writes:
            match = next((a for a in left if a in row[3]), None)
            assert match is not None, f"a write no approval allows: {row}\nall: {writes}"
            left.remove(match)
        if not self.approved:
            assert self.target.snapshot() == self.snap
        return writes


@pytest.fixture
def guard(target: Target) -> Guard:
    return Guard(target)


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


q = build.query
BOTH = pytest.mark.parametrize("who", ["ro", "rv"])


# (principal, sql, what the wire did): checked against the CLI at the end of the module.
AGREEMENT: list[tuple[str, str, str]] = []


def agrees(gw: Gateway, who: str, sql: str, reply: Reply) -> None:
    """Note what the wire decided for SQL: `test_policy_check_agrees_with_the_wire`
    asks the CLI about every case in one process."""
    AGREEMENT.append((who, sql, wire_decision(reply)))


# -- 1. parse-relevant state changed in a pipeline ---------------------------------------

HIDDEN = (
    b"SELECT E'\xc3\x81\\'; BEGIN READ WRITE; UPDATE stock SET qty = 0 WHERE id = 1; COMMIT; --'"
)


@BOTH
def test_sjis_then_a_hidden_update_in_the_same_write(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    w = wires[who]
    reply = w.run(q("SET client_encoding TO 'SJIS'"), q(HIDDEN), ready=2)
    assert "wardgate:unreadable-encoding" in reply.text(), reply.text()
    # Extended protocol, same idea: SET executed, then the hidden text, one Sync.
    reply2 = w.run(
        build.parse("", "SET client_encoding TO 'SJIS'"),
        build.bind("", ""),
        build.execute(""),
        build.parse("", HIDDEN),
        build.bind("", ""),
        build.execute(""),
        build.sync(),
        ready=1,
    )
    assert reply2.errors(), reply2.kinds()
    assert w.show("client_encoding") == "UTF8"
    guard.check()
    agrees(gw, who, "SET client_encoding TO 'SJIS'", reply)


@BOTH
def test_big5_and_gbk_are_refused_too(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    for enc in ("BIG5", "GBK", "UHC", "GB18030", "JOHAB"):
        w = Wire(gw, who)
        try:
            # The second Query is not UTF-8: the session stays UTF-8, so the gateway
            # ends it as a protocol violation, or refuses it; either way nothing runs.
            reply = w.run(
                q(f"SET client_encoding = '{enc}'"),
                q(b"SELECT '\xa4\\'; UPDATE stock SET qty = 3 WHERE id = 1; --'"),
                ready=2,
            )
            assert reply.errors() and "UPDATE 1" not in reply.tags(), (enc, reply.text())
        except ConnectionError as exc:
            assert "08P01" in str(exc) or "unreadable-encoding" in str(exc), exc
        finally:
            w.close()
    guard.check()


# -- 2. last-wins options ----------------------------------------------------------------

EXPLAIN = "EXPLAIN (ANALYZE false, ANALYZE true) UPDATE stock SET qty = 7 WHERE id = 2"


@BOTH
def test_explain_whose_last_analyze_runs_the_update(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    reply = wires[who].run(q(EXPLAIN), ready=1)
    assert wire_decision(reply) == ("block" if who == "ro" else "review"), reply.text()
    assert reply.rows() == 0
    guard.check()
    agrees(gw, who, EXPLAIN, reply)


# -- 3. name maps updated before the server agrees ---------------------------------------


@BOTH
def test_parse_s1_then_a_refused_prepare_s1_then_execute_s1(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    update = "UPDATE stock SET qty = 99 WHERE id = 1"
    w = wires[who]
    # All at once, then one step at a time on a second session.
    piped = w.run(
        build.parse("s1", update),
        build.sync(),
        q("PREPARE s1 AS SELECT 1"),
        q("EXECUTE s1"),
        ready=3,
    )
    assert wire_decision(piped) != "allow" or who == "ro", piped.text()
    steps = Wire(gw, who)
    try:
        first = steps.run(build.parse("s1", update), build.sync(), ready=1)
        steps.run(q("PREPARE s1 AS SELECT 1"), ready=1)
        last = steps.run(q("EXECUTE s1"), ready=1)
    finally:
        steps.close()
    if who == "ro":
        assert wire_decision(first) == "block"  # judged at Parse
        agrees(gw, who, update, first)
    else:
        assert "42P05" in piped.codes() and wire_decision(last) == "review", last.text()
        agrees(gw, who, update, last)
    guard.check()


@pytest.mark.parametrize(
    "fetch",
    ["FETCH c1", "MOVE ALL IN c1", "FETCH ALL FROM c1", "DECLARE x CURSOR FOR SELECT 1; FETCH c1"],
)
def test_sql_fetch_of_a_protocol_portal_is_judged_by_what_the_portal_runs(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], fetch: str
) -> None:
    """Parse s1 = SELECT nextval('ticket_seq') (a write: its review waits for Execute),
    Bind portal c1, then SQL FETCH c1: PostgreSQL runs the portal, so the FETCH is the
    SELECT (found by the attack with SELECT bump(5): it ran with no review, as a read;
    a user function is now refused at Parse, attack14e, so a built-in write here)."""
    w = wires["rv"]
    assert not w.run(q("BEGIN"), ready=1).errors()
    bound = w.run(
        build.parse("s1", "SELECT nextval('ticket_seq')"),
        build.bind("c1", "s1"),
        build.sync(),
        ready=1,
    )
    assert not bound.errors(), bound.text()
    reply = w.run(q(fetch), ready=1)
    assert wire_decision(reply) == "review" and reply.rows() == 0, reply.text()
    w.run(q("ROLLBACK"), ready=1)
    guard.check()
    agrees(gw, "rv", "SELECT nextval('ticket_seq')", reply)


# -- 4. approvals bound to everything that decides what runs ----------------------------


def test_an_approval_of_execute_upd_1_11_does_not_run_upd_2_9999(
    gw: Gateway, guard: Guard, wires: dict[str, Wire]
) -> None:
    w = wires["rv"]
    prepare = q("PREPARE upd(int, int) AS UPDATE stock SET qty = $2 WHERE id = $1")
    approve(gw, w.run(prepare, ready=1).review_ids()[0])  # a PREPARE of a write is one
    assert w.run(prepare, ready=1).tags() == ["PREPARE"]
    first = w.run(q("EXECUTE upd(1, 11)"), ready=1)
    assert len(first.review_ids()) == 1, first.text()
    (review,) = first.review_ids()
    approve(gw, review)
    other = w.run(q("EXECUTE upd(2, 9999)"), ready=1)
    assert wire_decision(other) == "review" and other.review_ids() != [review], other.text()
    guard.allow("EXECUTE upd(1, 11)")
    assert w.run(q("EXECUTE upd(1, 11)"), ready=1).tags() == ["UPDATE 1"]
    again = w.run(q("EXECUTE upd(1, 11)"), ready=1)  # used once
    assert wire_decision(again) == "review", again.text()
    writes = guard.check()
    assert [r[2] for r in writes] == ["public.stock"]
    # policy check knows nothing of the session's upd: it reads the SQL the name holds
    agrees(gw, "rv", "UPDATE stock SET qty = 9999 WHERE id = 2", other)


@BOTH
@pytest.mark.parametrize(
    "execute",
    ["EXECUTE sel(bump(5))", "EXECUTE sel(json_scalar(1))", "EXECUTE sel(nextval('ticket_seq'))"],
)
def test_execute_arguments_are_judged_as_the_expressions_they_are(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str, execute: str
) -> None:
    """EXECUTE sel(bump(5)) with sel a harmless SELECT $1: the server evaluates the
    argument, so bump runs (found by the attack: rv wrote with no review, and only the
    read-only session stopped ro)."""
    w = wires[who]
    assert not w.run(q("PREPARE sel(int) AS SELECT $1"), ready=1).errors()
    reply = w.run(q(execute), ready=1)
    assert wire_decision(reply) == ("block" if who == "ro" else "review"), reply.text()
    assert "25006" not in reply.codes()  # the gate refused it, not the read-only session
    guard.check()
    agrees(gw, who, "SELECT " + execute.split("(", 1)[1][:-1], reply)


def test_parameters_beyond_1024_characters_are_bound_whole(
    gw: Gateway, guard: Guard, target: Target
) -> None:
    sql = "UPDATE stock SET note = %s WHERE id = 3"
    approved, other = "a" * 1500 + "X", "a" * 1500 + "Y"
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        review = _pending(conn, sql, (approved,))
        approve(gw, review)
        assert _pending(conn, sql, (other,)) != review
        guard.allow("UPDATE stock SET note = $1 WHERE id = 3")
        conn.execute(sql, (approved,))
    guard.check()
    with target.conn() as c:
        assert c.execute("select note from stock where id = 3").fetchone() == (approved,)


@BOTH
def test_a_binary_bool_byte_0x02_is_refused(guard: Guard, wires: dict[str, Wire], who: str) -> None:
    w = wires[who]
    for sql in ("UPDATE stock SET flag = $1 WHERE id = 4", "SELECT $1::bool"):
        reply = w.run(
            build.parse("", sql, (16,)),
            build.bind("", "", [b"\x02"], [1]),
            build.execute(""),
            build.sync(),
            ready=1,
        )
        assert reply.errors() and reply.rows() == 0, reply.kinds()
        if sql.startswith("SELECT"):
            assert "wardgate:ambiguous-parameter" in reply.text(), reply.text()
    guard.check()


@BOTH
def test_copy_from_stdin_never_loads_rows(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    copy = "COPY stock (id, qty) FROM STDIN"
    rows = b"d" + (4 + 7).to_bytes(4, "big") + b"11\t500\n"
    reply = wires[who].run(q(copy), rows, b"c\x00\x00\x00\x04", ready=1)
    assert wire_decision(reply) == "block", reply.text()
    if who == "rv":
        assert "wardgate:copy-from-review" in reply.text()
    with psycopg.connect(gw.dsn(who, "diff"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            with conn.cursor().copy(copy) as cp:
                cp.write_row((12, 600))
    guard.check()
    agrees(gw, who, copy, reply)


def test_an_approval_binds_the_search_path(gw: Gateway, guard: Guard) -> None:
    update = "UPDATE stock SET qty = 5 WHERE id = 6"
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        conn.execute("SET search_path = archive, public")
        review = _pending(conn, update)
        approve(gw, review)
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        _pending(conn, update)  # default search_path: another action
    guard.allow(update)
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        conn.execute("SET search_path = archive, public")
        conn.execute(update)
    assert [r[2] for r in guard.check()] == ["archive.stock"]


def test_an_approval_binds_the_settings_that_read_constants(gw: Gateway, guard: Guard) -> None:
    """'01/02/2026' is 2 January under DateStyle MDY and 1 February under DMY: an
    approval given in one session does not run the same text in a session that reads
    it the other way (found by the attack on the suite: only search_path and the role
    were bound)."""
    from tests.integration.test_reviews import cli_as

    update = "UPDATE events SET qty = 1 WHERE d = '01/02/2026'"
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        conn.execute("SET datestyle = 'ISO, MDY'")
        review = _pending(conn, update)
    shown = json.loads(cli_as(gw, "reviewer", "reviews", "show", review, "--json").stdout)
    assert shown["detail"]["context"]["DateStyle"] == "ISO, MDY", shown["detail"]
    approve(gw, review)
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        conn.execute("SET datestyle = 'ISO, DMY'")
        _pending(conn, update)  # another reading of the same text: another action
        conn.execute("SET timezone = 'Pacific/Kiritimati'")
        conn.execute("SET datestyle = 'ISO, MDY'")
        _pending(conn, update)  # TimeZone is bound too
    assert not guard.check()
    guard.allow(update)
    with psycopg.connect(gw.dsn("rv", "diff"), autocommit=True) as conn:
        conn.execute("SET datestyle = 'ISO, MDY'")
        conn.execute(update)
    assert [r[2] for r in guard.check()] == ["public.events"]
    with guard.target.conn() as c:
        rows = c.execute("select id, qty from events order by id").fetchall()
    assert rows == [(1, 1), (2, 0)]


@pytest.mark.parametrize(
    ("before", "sql"),
    [
        (None, "SET search_path = archive, public; UPDATE stock SET qty = 55 WHERE id = 8"),
        (None, "SET datestyle = 'ISO, DMY'; UPDATE events SET qty = 2 WHERE d = '01/02/2026'"),
        ("BEGIN; SET search_path = archive, public", "ROLLBACK; UPDATE stock SET qty = 56"),
        ("BEGIN; SAVEPOINT a; SET LOCAL timezone = 'UTC'", "ROLLBACK TO a; DELETE FROM events"),
        (None, "SELECT bump(1); UPDATE stock SET qty = 57 WHERE id = 8"),
    ],
)
def test_a_held_statement_never_follows_a_setting_change_in_its_query_string(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], before: str | None, sql: str
) -> None:
    """The review shows (and the approval binds) the settings read just before the
    string is sent; a SET, RESET, transaction end or routine earlier in the same string
    would change them before the held statement runs, so the string is refused (found
    by the attack: the reviewer saw search_path public, archive.stock changed)."""
    w = wires["rv"]
    if before is not None:
        assert not w.run(q(before), ready=1).errors()
    reply = w.run(q(sql), ready=1)
    assert wire_decision(reply) == "block" and not reply.review_ids(), reply.text()
    if "bump" not in sql:  # there the first statement, held itself, is what is said
        assert "wardgate:review-context" in reply.text(), reply.text()
    w.run(q("ROLLBACK"), ready=1)
    guard.check()


# -- 5. settings judged by what they do --------------------------------------------------

SETTINGS = [
    ("session_replication_role", "SET session_replication_role = replica"),
    ("log_statement", "SET log_statement = 'none'"),
    ("track_activities", "SET track_activities = off"),
    ("session_replication_role", "SELECT set_config('session_replication_role', 'replica', false)"),
    ("log_statement", "SET LOCAL log_statement TO none"),
]


@BOTH
@pytest.mark.parametrize(("name", "sql"), SETTINGS)
def test_settings_that_silence_triggers_or_logging(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str, name: str, sql: str
) -> None:
    w = wires[who]
    before = w.show(name)
    reply = w.run(q(sql), ready=1)
    assert wire_decision(reply) == "block", reply.text()
    assert w.show(name) == before
    guard.check()
    agrees(gw, who, sql, reply)


# -- 6. grammar version ------------------------------------------------------------------

JSON_CALLS = [
    "SELECT json_scalar(1)",
    "SELECT json_value('{\"a\": 1}', '$.a')",
    "SELECT json_serialize('x')",
]


@BOTH
@pytest.mark.parametrize("sql", JSON_CALLS)
def test_pg17_json_syntax_is_a_user_function_on_pg15(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str, sql: str
) -> None:
    reply = wires[who].run(q(sql), ready=1)
    assert wire_decision(reply) != "allow", reply.text()
    guard.check()
    agrees(gw, who, sql, reply)


@BOTH
def test_legacy_json_object_is_looked_up_in_the_search_path_on_pg15(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    """PostgreSQL 17's grammar reads json_object('a', 'b', 'c', 'd') as
    pg_catalog.json_object; PostgreSQL 15 resolves the bare name and runs
    public.json_object(text, text, text, text), which writes (found by the attack).
    `policy check` does not know the target's catalogue, so it is not asked here."""
    reply = wires[who].run(q("SELECT json_object('a', 'b', 'c', 'd')"), ready=1)
    assert wire_decision(reply) != "allow" and reply.rows() == 0, reply.text()
    assert "json_object" in reply.text()
    guard.check()


# -- 7. identifier semantics -------------------------------------------------------------

UNICODE_PATH = 'SET search_path = U&"pg_catalog\\00a0", appfuncs, pg_catalog'


@BOTH
def test_a_unicode_escaped_pg_catalog_does_not_shadow_lower(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], who: str
) -> None:
    w = wires[who]
    before = w.show("search_path")
    reply = w.run(q(UNICODE_PATH), q("SELECT lower('X')"), ready=2)
    first = Reply(reply.messages[: _first_ready(reply) + 1])
    assert wire_decision(first) == "block" and "search_path_shadowing" in first.text()
    assert w.show("search_path") == before
    guard.check()
    agrees(gw, who, UNICODE_PATH, first)


# -- 8. small ones -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM big_rows LIMIT ALL",
        "SELECT * FROM big_rows LIMIT NULL",
        "SELECT * FROM big_rows LIMIT NULL::int OFFSET 0",
    ],
)
def test_limit_all_and_null_are_no_limit(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], sql: str
) -> None:
    w = wires["ro"]
    reply = w.run(q(sql), ready=1)
    assert "big-needs-limit" in reply.text() and reply.rows() == 0, reply.text()
    bound = w.run(
        build.parse("", "SELECT * FROM big_rows LIMIT $1", (20,)),
        build.bind("", "", [None]),
        build.execute(""),
        build.sync(),
        ready=1,
    )
    assert "big-needs-limit" in bound.text() and bound.rows() == 0, bound.text()
    assert w.run(q("SELECT * FROM big_rows LIMIT 5"), ready=1).rows() == 5
    guard.check()
    agrees(gw, "ro", sql, reply)


@pytest.mark.parametrize(
    "sql",
    [
        "COPY big_rows TO STDOUT",
        "COPY (SELECT * FROM big_rows) TO STDOUT",
        "DECLARE bigc CURSOR WITH HOLD FOR SELECT * FROM big_rows",
    ],
)
def test_copy_to_and_cursors_are_reads_without_a_limit(
    gw: Gateway, guard: Guard, wires: dict[str, Wire], sql: str
) -> None:
    """The same guardrail: COPY t TO and a cursor over an unbounded SELECT hand over
    every row (found by the attack: only a top-level SELECT counted)."""
    w = wires["ro"]
    reply = w.run(q(sql), ready=1)
    assert "big-needs-limit" in reply.text(), reply.text()
    assert not any(k == b"d" for k, _ in reply.messages)  # no CopyData
    if sql.startswith("DECLARE"):
        assert w.run(q("FETCH ALL bigc"), ready=1).rows() == 0
    guard.check()
    agrees(gw, "ro", sql, reply)


# -- 3. policy check agrees with the wire -----------------------------------------------


def test_policy_check_agrees_with_the_wire(gw: Gateway, tmp_path: Path) -> None:
    """Every case above, as `wardgate policy test` cases (one process; the same
    `Gate.check` as `policy check`), and `policy check` itself for one case per
    decision."""
    if not AGREEMENT:
        pytest.skip("run with the example cases above (they collect what the wire did)")
    cases = [
        {"connection": "diff", "principal": who, "sql": sql, "expect": decision}
        for who, sql, decision in AGREEMENT
    ]
    path = tmp_path / "wire_cases.yaml"
    path.write_text(yaml.safe_dump(cases))
    result = gw.cli("policy", "test", str(path), check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(cases)} passed, 0 failed" in result.stdout
    for decision in sorted({d for _, _, d in AGREEMENT}):
        who, sql, _ = next(c for c in AGREEMENT if c[2] == decision)
        assert policy_check(gw, who, sql) == decision, sql


# -- helpers -----------------------------------------------------------------------------


def _first_ready(reply: Reply) -> int:
    return next(i for i, (k, _) in enumerate(reply.messages) if k == b"Z")


def _pending(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> str:
    from tests.integration.test_reviews import pending_error

    return pending_error(conn, sql, params)
