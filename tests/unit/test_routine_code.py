"""Which triggers and rules may run DDL (policy/routine_code.py): a write to a database
with one counts as DDL (Gate.changes_catalogue), so the reading must err towards "may"
and must not flag the audit triggers most databases have."""

from __future__ import annotations

import pytest

from wardgate.policy.routine_code import ddl_reason, trigger_function_reason

AUDIT = """begin
    insert into audit.write_log (kind, object, query)
    values (tg_op, tg_table_schema || '.' || tg_table_name, current_query());
    new.total := coalesce(new.a, 0)::numeric(10, 2) + 1;
    if (new.x > 0) then return new; end if;
    perform pg_catalog.set_config('app.x', '1', true);
    return null;
end"""


def test_an_audit_trigger_runs_no_ddl() -> None:
    assert ddl_reason(AUDIT) is None
    assert trigger_function_reason("plpgsql", "audit", AUDIT) is None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("begin execute format('create function %I() ...', new.n); return new; end", "EXECUTE"),
        ("begin perform public.mk(new.n); return new; end", "public.mk()"),
        ('begin select "MkFn"(1) into x; return new; end', "MkFn()"),
        ("begin perform mk(new.n); return new; end", "mk()"),  # unqualified: a user one
        ("begin create table t2 (i int); return new; end", "CREATE"),
        ("begin call public.p(); return new; end", "CALL"),
        ("begin perform query_to_xml('select 1', true, true, ''); end", "query_to_xml()"),
        ("begin perform dblink_exec('create function f() ...'); end", "dblink_exec()"),
        ("begin do $d$ begin null; end $d$; return new; end", "DO"),
    ],
)
def test_code_that_may_run_ddl_is_found(body: str, why: str) -> None:
    reason = ddl_reason(body)
    assert reason is not None and why in reason, reason


def test_user_casts_and_operators_count() -> None:
    body = "begin new.t := new.a::public.money2; return new; end"
    assert ddl_reason(body) is None
    assert "public.money2" in str(ddl_reason(body, user_types={"public.money2", "money2"}))
    assert "===" in str(ddl_reason("begin x := a === b; end", user_operators={"==="}))
    assert "+" in str(ddl_reason("begin x := a + b; end", user_operators={"+"}))


def test_an_unqualified_built_in_name_a_user_routine_shares_counts() -> None:
    body = "begin new.n := lower(new.n); return new; end"
    assert ddl_reason(body) is None
    assert "lower()" in str(ddl_reason(body, user_routines={"lower"}))
    qualified = "begin new.n := pg_catalog.lower(new.n); return new; end"
    assert ddl_reason(qualified, user_routines={"lower"}) is None


def test_other_languages_cannot_be_read_and_built_ins_run_none() -> None:
    assert "plpython3u" in str(trigger_function_reason("plpython3u", "public", "plpy.execute(...)"))
    assert "c" in str(trigger_function_reason("c", "public", "my_trigger"))
    assert trigger_function_reason("internal", "pg_catalog", "tsvector_update_trigger") is None


def test_a_rule_is_read_after_its_do_and_a_trigger_in_its_when() -> None:
    rule = "CREATE RULE r AS ON INSERT TO public.t DO ALSO SELECT public.mk(new.id);"
    assert "public.mk()" in str(ddl_reason(rule, part="rule"))
    quiet = "CREATE RULE r AS ON INSERT TO public.t DO ALSO INSERT INTO log (id) VALUES (new.id);"
    assert ddl_reason(quiet, part="rule") is None
    assert ddl_reason("CREATE RULE r AS ON DELETE TO t DO INSTEAD NOTHING;", part="rule") is None
    head = "CREATE TRIGGER t AFTER INSERT ON public.x FOR EACH ROW"
    tail = "EXECUTE FUNCTION public.f()"
    assert ddl_reason(f"{head} WHEN ((new.id > 0)) {tail}", part="when") is None
    assert "public.g()" in str(
        ddl_reason(f"{head} WHEN ((public.g(new.id) > 0)) {tail}", part="when")
    )
    assert ddl_reason(f"{head} {tail}", part="when") is None


def test_text_that_cannot_be_scanned_may_run_ddl() -> None:
    assert ddl_reason("begin x := 'unterminated; end") is not None


def test_attack14s_readings() -> None:
    """What attack14s got past the first reading: a keyword-named routine after a dot,
    a user routine named like a PL/pgSQL word, a user type named anywhere, a rule's
    WHERE, and text past 63 bytes (the watch's query once cut it: a unit here, the
    query's column types in tests/integration/test_attack14s.py)."""
    assert "public.values()" in str(ddl_reason("begin perform public.values(new.n); end"))
    assert "query()" in str(ddl_reason("begin perform query(new.n); end", user_routines={"query"}))
    typed = {"public.dom", "dom"}
    assert "public.dom" in str(
        ddl_reason("begin x := CAST(v AS public.dom); end", user_types=typed)
    )
    assert "dom" in str(ddl_reason("declare v dom; begin v := new.n; end", user_types=typed))
    rule = "CREATE RULE r AS ON INSERT TO t WHERE (public.mk(new.n) = 1) DO ALSO NOTIFY x;"
    assert "public.mk()" in str(ddl_reason(rule, part="rule"))
    long = "begin\n" + "-- " + "x" * 200 + "\n perform public.mk(new.n); return new; end"
    assert "public.mk()" in str(ddl_reason(long))


def test_the_writes_that_reach_code_that_may_run_ddl() -> None:
    """Only writes that may reach such code count (attack14s measured 0.6 s per write
    when every write did): its own table, what reaches it (a parent, a cascading
    foreign key, a view: `reaches` rows) and a table whose unflagged trigger writes
    to it."""
    from wardgate.postgres.catalog_watch import _ddl_by_writes

    code = [
        (
            "trigger public plpgsql",
            "public.flag",
            "begin perform public.mk(new.n); return new; end",
        ),
        ("trigger audit plpgsql", "public.audited", "begin insert into audit.log values (1); end"),
        ("trigger audit plpgsql", "public.feeds", "begin insert into public.flag values (1); end"),
        ("reaches", "public.parent", "public.flag"),
        ("reaches", "public.other", "public.unrelated"),
    ]
    why, tables = _ddl_by_writes(code, set(), set(), frozenset())
    assert "public.mk()" in why and tables == {"flag", "feeds", "parent"}
    assert _ddl_by_writes(code[1:], set(), set(), frozenset()) == ("", frozenset())
    unknown = ("trigger audit plpgsql", "public.t", "begin update only public.x set a = 1; end")
    assert _ddl_by_writes([*code[:1], unknown], set(), set(), frozenset())[1] == {"flag"}
    domain = ("write_code public plpgsql", "", "begin perform public.mk(1); end")
    assert "*" in _ddl_by_writes([domain], set(), set(), frozenset())[1]


def test_a_definition_the_watch_could_not_read_counts_where_writes_reach_it() -> None:
    """A rule, a trigger's WHEN or a BEGIN ATOMIC body is read after the catalogue
    query, each giving up on a lock within LOCK_TIMEOUT_MS (catalog_watch._DEFINITIONS):
    one not read is the worst case for the writes that reach it, and only for those."""
    from wardgate.postgres.catalog_watch import (
        _ddl_by_writes,
        deferred,
        marker,
        with_definitions,
    )

    mark = marker()
    assert mark != marker()  # one per look: no catalogue text can carry the next one
    rows = [
        ("rule", "public.src", f"{mark}r16400"),
        ("trigger_when", "public.tw", f"{mark}t16401"),
        ("write_code public sql", "public.ck", f"{mark}f16402"),
        ("write_code public sql", "public.ck2", f"{mark}f16402"),
        ("trigger public plpgsql", "public.plain", "begin return new; end"),
        ("reaches", "public.parent", "public.src"),
    ]
    assert deferred(rows, mark) == {
        "f16402": "SELECT pg_catalog.pg_get_functiondef($1::pg_catalog.oid)",
        "r16400": "SELECT pg_catalog.pg_get_ruledef($1::pg_catalog.oid)",
        "t16401": "SELECT pg_catalog.pg_get_triggerdef($1::pg_catalog.oid)",
    }
    rule = "CREATE RULE r AS ON INSERT TO public.src DO ALSO INSERT INTO public.dst VALUES (1)"
    filled = with_definitions(rows, mark, {"r16400": rule})
    assert filled[0] == ("rule", "public.src", rule) and filled[4] == rows[4]
    why, tables = _ddl_by_writes(filled, set(), set(), frozenset())
    assert "a trigger's WHEN on public.tw: its definition could not be read yet" in why
    assert tables == {"tw", "ck", "ck2"}
    # Read, the rule writes a plain table: nothing there, nor through `parent`.
    everything = with_definitions(
        rows, mark, {"r16400": rule, "t16401": "CREATE TRIGGER ...", "f16402": "x"}
    )
    assert "could not be read" not in _ddl_by_writes(everything, set(), set(), frozenset())[0]
    # Unread, the rule counts for its table and what reaches it.
    unread = with_definitions(rows[:1] + rows[5:], mark, {})
    assert _ddl_by_writes(unread, set(), set(), frozenset())[1] == {"src", "parent"}


@pytest.mark.parametrize(
    ("body", "tables"),
    [
        ("begin insert into audit.log (a) values (1); end", {"log"}),
        ("begin update only public.x set a = 1; delete from y where true; end", {"x", "y"}),
        (
            "begin select 1 from t for update; insert into z values (1) on conflict do update set a = 1; end",
            {"z"},
        ),
        ("begin merge into m using s on true when matched then delete; end", {"m"}),
        ("begin copy t from stdin; end", {"t"}),
        ("begin select 1; end", set()),
    ],
)
def test_written_tables(body: str, tables: set[str]) -> None:
    from wardgate.policy.routine_code import written_tables

    assert written_tables(body) == tables
