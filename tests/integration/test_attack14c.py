"""attack14c: variants of issue 14's classes the earlier fixes missed, each driven through
the real gateway into a real PostgreSQL and judged by the server's own state (the write
log, sequences, locks and sessions of `pg_diff.py`'s target), for a principal whose role
cannot write (`ro`) and one whose writes need a review (`rv`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import PG_HOST, PG_PORT, Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire, diff_config, lazy_wires, make_target
from tests.integration.stall_proxy import StallProxy
from tests.integration.test_reviews import Api
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query
BOTH = pytest.mark.parametrize("who", ["ro", "rv"])

# Made by the database's owner before the gateway starts: a function of a row, the
# "computed field" idiom PostgreSQL documents (`s.touch` is `touch(s)`).
EXTRA = """
create function public.touch(public.stock) returns int language sql volatile as
    $$ update public.stock set qty = qty + 100 where id = $1.id; select $1.id $$;
create function public.to_archive(int) returns text language sql volatile as
    $$ select set_config('search_path', 'archive, public', false) $$;
"""


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    for made in make_target():
        with made.conn() as c:
            c.execute(EXTRA)
            c.execute("truncate audit.write_log")
        yield made


# A column rule, as docs/policy.md's `ssn-needs-review`: events.qty is not for agents.
QTY_RULE = """guardrails:
  - name: no-event-qty
    match: {tables: ["*.events"], columns: [qty]}
    verdict: block
    message: "events.qty is not for agents"
"""


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = diff_config(target).replace("guardrails:\n", QTY_RULE, 1)
    gateway = make_gateway(tmp_path_factory.mktemp("attack14c"), config)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


def _unchanged(target: Target, before: tuple[Any, ...], start: int) -> None:
    assert target.log(start) == [], target.log(start)
    assert target.snapshot() == before


def _advisory_locks(target: Target) -> int:
    with target.conn() as c:
        row = c.execute(
            "select count(*) from pg_locks l join pg_stat_activity a on a.pid = l.pid"
            " where l.locktype = 'advisory' and a.usename = %s",
            (target.role,),
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- a field selection is a function call ------------------------------------------------
# PostgreSQL reads `x.f` and `(x).f` as f(x) when x has no field f, whatever x's type:
# ('ticket_seq'::regclass).nextval is nextval('ticket_seq'), (3).bump is bump(3).

FIELD_CALLS = [
    "select (3).bump",  # a user function of an int (writes stock row 3)
    "select s.touch from stock s where s.id = 4",  # a user function of a row
    "select (s).touch from stock s where s.id = 4",
    "select ('ticket_seq'::regclass).nextval",  # a built-in that writes
    "select n.nextval from (select 'ticket_seq'::text as n) t",  # column.f
    "select (1::bigint).pg_advisory_lock",  # a lock held past the statement
]


@BOTH
def test_a_field_selection_that_calls_a_function_is_judged_as_the_call(
    target: Target, wires: dict[str, Wire], who: str
) -> None:
    start, before = target.last_id(), target.snapshot()
    for sql in FIELD_CALLS:
        reply = wires[who].run(q(sql), ready=1)
        assert any(e.get("M", "").startswith("wardgate:") for e in reply.errors()), (
            sql,
            reply.text(),
        )
    _unchanged(target, before, start)
    assert _advisory_locks(target) == 0


def test_a_session_before_the_catalogue_is_read_is_judged_as_the_worst_case(
    target: Target, tmp_path: Path
) -> None:
    """The catalogue watch's first look at the target hangs (its dial is accepted and
    never answered); a client connects meanwhile. Its session waits for that look
    (limits.connect_timeout), then runs judged as the worst case, every expression
    possibly user code: `(3).bump` is not a read for a read-only agent, nor is
    `select 1`, with a message saying why. Before, the gate judged with no user code
    known at all, and `(3).bump` wrote."""
    with StallProxy(PG_HOST, PG_PORT) as proxy:
        proxy.stall_new = True
        config = (
            diff_config(target)
            .replace(f"host: {PG_HOST}, port: {PG_PORT}", f"host: 127.0.0.1, port: {proxy.port}")
            .replace("limits: {", "limits: {connect_timeout: 2s, ")
        )
        gw = make_gateway(tmp_path, config)
        gw.start()
        try:
            deadline = time.monotonic() + 30
            while proxy.accepted == 0 and time.monotonic() < deadline:
                time.sleep(0.05)  # the watch has dialled, and hangs
            assert proxy.accepted > 0
            proxy.stall_new = False  # the client's own dial goes through
            start, before = target.last_id(), target.snapshot()
            with psycopg.connect(gw.dsn("ro", "diff"), autocommit=True) as conn:
                for sql in ("select (3).bump", "select 1"):
                    with pytest.raises(psycopg.errors.InsufficientPrivilege) as refused:
                        conn.execute(sql.encode())
                    assert "not read this connection's catalogue yet" in str(refused.value)
                assert conn.execute(b"begin").statusmessage == "BEGIN"  # no expression
            _unchanged(target, before, start)
        finally:
            gw.stop()


@BOTH
def test_ts_rewrite_of_a_query_text_is_not_a_read(
    target: Target, wires: dict[str, Wire], who: str
) -> None:
    # ts_rewrite(tsquery, text) runs the SELECT given as text (its other overload is
    # IMMUTABLE, which made the name a trusted read): here one that calls bump(2).
    start, before = target.last_id(), target.snapshot()
    reply = wires[who].run(
        q("select ts_rewrite('a'::tsquery, 'select ''a''::tsquery, bump(2)::text::tsquery')"),
        ready=1,
    )
    assert reply.review_ids() == [] and "blocked" in reply.text(), reply.text()
    _unchanged(target, before, start)


def test_a_field_selection_cannot_terminate_another_session(
    target: Target, wires: dict[str, Wire]
) -> None:
    # The read-only agent's upstream session may signal any backend of the role the
    # gateway dials: another principal's session, the gateway's own.
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=target.role, dbname=target.db, autocommit=True
    ) as victim:
        pid = victim.info.backend_pid
        reply = wires["ro"].run(q(f"select ({pid}).pg_terminate_backend"), ready=1)
        assert any(e.get("M", "").startswith("wardgate:") for e in reply.errors()), reply.text()
        assert victim.execute("select 1").fetchone() == (1,)


def test_plain_fields_of_rows_still_read(wires: dict[str, Wire]) -> None:
    reply = wires["ro"].run(
        q("select (s).qty, s.id from stock s where s.id = 1"),
        q("""select (jsonb_each('{"a": 1}')).key"""),
        ready=2,
    )
    assert reply.errors() == [], reply.text()
    assert reply.rows() == 2


# -- a startup search_path is split as the server splits it ------------------------------


@pytest.mark.parametrize(
    "value", ["appfuncs,pg_catalog", "appfuncs, pg_catalog", '"appfuncs",pg_catalog']
)
def test_a_startup_search_path_listing_pg_catalog_late_is_refused(gw: Gateway, value: str) -> None:
    options = "-c search_path=" + value.replace(" ", "\\ ")
    with pytest.raises(psycopg.OperationalError, match="pg_catalog after another schema"):
        psycopg.connect(gw.dsn("rv", "diff"), options=options).close()


# -- an approval of SQL EXECUTE binds what the name holds, however EXECUTE is sent ---------
# EXPLAIN ANALYZE EXECUTE s runs s; so does a Parse of the text `EXECUTE s`. An approval
# of either bound only the text: the agent prepared `s` again (a Parse is forwarded, its
# review waits for an Execute) and the approval ran the new statement.


def _explain_execute(w: Wire) -> Any:
    return w.run(q("EXPLAIN ANALYZE EXECUTE s"), ready=1)


def _execute_through_parse(w: Wire) -> Any:
    return w.run(
        build.parse("", "EXECUTE s"), build.bind("", ""), build.execute(""), build.sync(), ready=1
    )


@pytest.mark.parametrize("send", [_explain_execute, _execute_through_parse])
def test_an_approved_execute_does_not_run_a_statement_prepared_again(
    gw: Gateway, target: Target, wires: dict[str, Wire], send: Any
) -> None:
    w = wires["rv"]
    start = target.last_id()
    w.run(build.parse("s", "UPDATE stock SET qty = 7 WHERE id = 2"), build.sync(), ready=1)
    first = send(w)
    assert first.review_ids(), first.text()
    reviewer = Api(gw, "reviewer")  # the API, not the CLI: no process to start
    reviewer.post(f"/reviews/{first.review_ids()[0]}/approve")
    reviewer.client.close()
    again = w.run(
        build.close("S", "s"),
        build.parse("s", "UPDATE stock SET qty = 666 WHERE id = 5"),
        build.sync(),
        ready=1,
    )
    assert again.errors() == [], again.text()
    second = send(w)
    assert second.review_ids() and second.review_ids() != first.review_ids(), second.text()
    assert target.log(start) == []
    w.run(build.close("S", "s"), build.sync(), ready=1)


# -- a limit that bounds nothing ------------------------------------------------------------


def test_fetch_first_with_ties_is_no_limit(wires: dict[str, Wire]) -> None:
    # Ordered by a constant, every row ties with the first: all 50 rows of big_rows.
    w = wires["ro"]
    reply = w.run(q("select * from big_rows order by 1 fetch first 1 rows with ties"), ready=1)
    assert "big_rows is read with a LIMIT" in reply.text(), reply.text()
    assert reply.rows() == 0
    assert (
        w.run(q("select * from big_rows order by 1 fetch first 1 rows only"), ready=1).rows() == 1
    )


# -- startup options: the server splits them at any blank ------------------------------------
# libpq's `options` is split by the server at blanks not escaped by a backslash. The gateway
# unescaped `\<TAB>` into the value it allowed (application_name) and passed the tab on
# raw: the server read a second option there, any setting at all.


@pytest.mark.parametrize("blank", ["\t", "\n", "\v"])
def test_startup_options_cannot_smuggle_a_setting(gw: Gateway, blank: str) -> None:
    options = (
        f"-c application_name=a\\{blank}-c\\{blank}session_replication_role=replica"
        f" -c TimeZone=UTC\\{blank}--transform_null_equals=on"
    )
    with (
        pytest.raises(psycopg.OperationalError, match="control or non-ASCII"),
        psycopg.connect(gw.dsn("rv", "diff"), autocommit=True, options=options) as c,
    ):
        shown = [
            c.execute(f"show {name}").fetchone()
            for name in ("session_replication_role", "transform_null_equals")
        ]
        assert shown == [("origin",), ("off",)], f"the server took a smuggled setting: {shown}"


# -- settings changed through pg_settings ---------------------------------------------------


def test_an_update_of_pg_settings_is_a_setting_change(wires: dict[str, Wire]) -> None:
    # pg_settings' rule makes the UPDATE a set_config(): admin, blocked for `rv` (whose
    # role blocks admin) instead of held for a review as an ordinary write.
    w = wires["rv"]
    reply = w.run(
        q("update pg_settings set setting = 'replica' where name = 'session_replication_role'"),
        ready=1,
    )
    assert reply.review_ids() == [] and "blocked" in reply.text(), reply.text()
    assert w.show("session_replication_role") == "origin"


def test_a_field_call_may_change_the_review_context(target: Target, wires: dict[str, Wire]) -> None:
    # (1).to_archive sets search_path = archive, public: the UPDATE after it in the same
    # string would run on archive.stock while a review showed the path probed before.
    w = wires["rv"]
    reply = w.run(q("select (1).to_archive; update stock set qty = 5 where id = 6"), ready=1)
    # Refused whole (wardgate:review-context on the UPDATE), no review filed.
    assert reply.codes() == ["42501"] and reply.review_ids() == [], reply.text()
    assert w.show("search_path") == '"$user", public'


def test_an_execute_of_a_name_the_gateway_never_saw_prepared_is_not_held(
    wires: dict[str, Wire],
) -> None:
    # Nothing a reviewer could see or an approval could bind: refused, not held.
    reply = wires["rv"].run(q("EXECUTE prepared_elsewhere(1)"), ready=1)
    assert "wardgate:unknown-statement" in reply.text() and reply.review_ids() == [], reply.text()


# -- a column rule and the whole row ---------------------------------------------------------


def test_a_column_rule_sees_the_whole_row_and_its_fields(wires: dict[str, Wire]) -> None:
    # `e` alone is the whole row (qty in it), `(e).qty` the column: neither named qty as
    # a column to the gate, so a rule on events.qty let both read it.
    w = wires["ro"]
    for sql in (
        "select e from events e",
        "select row_to_json(e) from events e",
        "select (e).qty from events e",
        "select (e).* from events e",
    ):
        reply = w.run(q(sql), ready=1)
        assert "events.qty is not for agents" in reply.text() and reply.rows() == 0, (
            sql,
            reply.text(),
        )
    assert w.run(q("select id, d from events"), ready=1).rows() == 2
