"""What the classifier says a statement does: a table of statements and expectations."""

from __future__ import annotations

import dataclasses

import pytest

from wardgate.policy.sql import _parse_and_classify, classify, classify_keyed

CASES = [
    # (sql, class, a kind that must be present)
    ("select 1", "read", "select"),
    ("SELECT * FROM t WHERE a = 'drop table t'", "read", "select"),
    ("select 1 -- ; drop table t", "read", "select"),
    ("select /* ; delete from t */ 1", "read", "select"),
    ("select /* nested /* ; drop table t */ still comment */ 1", "read", "select"),
    ("select $$; drop table t$$", "read", "select"),
    ('select "drop table t" from "delete"', "read", "select"),
    ("insert into t values (1)", "write", "insert"),
    ("update t set a = 1 where id = 2", "write", "update"),
    ("update t set a = 1", "write", "update_without_where"),
    ("delete from t", "write", "delete_without_where"),
    ("with d as (delete from t returning *) select * from d", "write", "delete"),
    ("select * into t2 from t", "write", "select_into"),
    ("select * from t for update", "write", "select_for_update"),
    ("explain analyze delete from t where a = 1", "write", "explain_analyze"),
    ("explain delete from t where a = 1", "read", "explain"),
    ("prepare p as delete from t where a = $1", "write", "prepare"),
    ("execute p(1)", "write", "execute"),
    ("select pg_terminate_backend(123)", "admin", "function:pg_terminate_backend"),
    ("select pg_read_file('/etc/passwd')", "admin", "function:pg_read_file"),
    ("select set_config('role', 'x', false)", "admin", "function:set_config"),
    ("select nextval('s')", "write", "function:nextval"),
    ("select query_to_xml('delete from t', true, true, '')", "admin", "function:query_to_xml"),
    ("do $$ begin delete from t; end $$", "admin", "do_block"),
    ("copy t to program 'curl evil'", "admin", "copy_to_program"),
    ("copy t to '/tmp/x'", "admin", "copy_file"),
    ("copy t from stdin", "write", "copy_from"),
    ("copy t to stdout", "read", "copy_to"),
    ("copy (delete from t returning *) to stdout", "write", "delete"),
    ("set role admin", "admin", "set_role"),
    ("reset role", "read", "reset_role"),
    ("set session authorization default", "read", "reset_role"),
    ("set role none", "admin", "set_role"),
    ("reset all", "read", "set"),
    ("select set_config('jit', 'off', false)", "read", "function:set_config"),
    # The setting is a parameter: judged with its value at Execute (see test_gate.py).
    ("select set_config($1, 'off', false)", "read", "set_config_param:1"),
    ("select set_config('client_encoding', $1, false)", "read", "set_config_param:1"),
    ("select set_config('jit', $1::text, false)", "read", "set"),
    ("set standard_conforming_strings = off", "admin", "parser_setting"),
    ("set local standard_conforming_strings to on", "read", "parser_setting_unchanged"),
    ("set standard_conforming_strings to default", "admin", "parser_setting"),
    ("set standard_conforming_strings to 'tr'", "admin", "parser_setting"),
    ("reset standard_conforming_strings", "admin", "parser_setting"),
    ("select set_config('standard_conforming_strings', 'off', false)", "admin", "parser_setting"),
    ("select pg_notify('ch', 'payload')", "write", "function:pg_notify"),
    ("set transaction read write", "write", "read_only_off"),
    ("set transaction read only", "read", "transaction_mode"),
    ("set session characteristics as transaction read write", "write", "read_only_off"),
    ("begin read write", "write", "read_only_off"),
    ("start transaction isolation level serializable", "read", "transaction_mode"),
    ("set session authorization admin", "admin", "set_session"),
    ("set default_transaction_read_only = off", "write", "read_only_off"),
    ("set transaction_read_only = off", "write", "read_only_off"),
    ("set search_path = public", "read", "set"),
    ("set search_path = evil, pg_catalog", "admin", "search_path_shadowing"),
    # One quoted item of a SET list is one schema name, commas and all (the server
    # quotes it): this path is the single schema "evil, pg_catalog", no shadowing.
    ("set search_path to 'evil, pg_catalog'", "read", "search_path"),
    ("set search_path to evil, pg_catalog", "admin", "search_path_shadowing"),
    ("set search_path = 'pg_catalog, x', evil, pg_catalog", "admin", "search_path_shadowing"),
    # A no-break space is part of the name for the server, not a blank to trim.
    (
        'set search_path = U&"pg_catalog\\00a0", appfuncs, pg_catalog',
        "admin",
        "search_path_shadowing",
    ),
    (
        "select set_config('search_path', 'evil, pg_catalog', false)",
        "admin",
        "search_path_shadowing",
    ),
    ("select set_config('search_path', 'pg_catalog, evil', false)", "read", "search_path"),
    (
        "select set_config('search_path', '\"PG_CATALOG\", pg_catalog', false)",
        "admin",
        "search_path_shadowing",
    ),
    (
        "select set_config('search_path', E'pg_catalog\\u00a0, x, pg_catalog', false)",
        "admin",
        "search_path_shadowing",
    ),
    # Last-wins options: PostgreSQL applies the last ANALYZE; the gateway reads the stricter.
    (
        "explain (analyze false, analyze true) update t set a = 1 where id = 1",
        "write",
        "explain_analyze",
    ),
    (
        "explain (analyze true, analyze false) update t set a = 1 where id = 1",
        "write",
        "explain_analyze",
    ),
    ("explain (analyze 'off') update t set a = 1 where id = 1", "read", "explain"),
    # Settings by what they do (pg_settings context and category).
    ("set session_replication_role = replica", "admin", "privileged_setting"),
    ("set log_statement = 'none'", "admin", "privileged_setting"),
    ("set track_activities = off", "admin", "privileged_setting"),
    ("set transform_null_equals = on", "admin", "setting:transform_null_equals"),
    ("set restrict_nonsystem_relation_kind = ''", "admin", "privileged_setting"),
    ("reset session_replication_role", "admin", "privileged_setting"),
    (
        "select set_config('session_replication_role', 'replica', false)",
        "admin",
        "privileged_setting",
    ),
    ("set work_mem = '64MB'", "read", "set"),
    ("set statement_timeout = 5000", "read", "set"),
    ("set application_name = 'job'", "read", "set"),
    ("set pgaudit.log = 'none'", "read", "setting:pgaudit.log"),  # the gate raises it
    ("set client_encoding to 'LATIN1'", "read", "client_encoding"),
    ("set names 'latin1'", "read", "client_encoding"),
    ("set client_encoding to 'SJIS'", "admin", "unreadable_encoding"),
    ("set client_encoding to 'EUC_TW'", "admin", "unreadable_encoding"),
    ("reset client_encoding", "read", "client_encoding"),
    ("discard all", "read", "client_encoding"),
    # LIMIT ALL and LIMIT NULL bound nothing.
    ("select * from t limit all", "read", "no_limit"),
    ("select * from t limit null", "read", "no_limit"),
    ("select * from t limit (select 5)", "read", "no_limit"),
    ("select * from t limit 5", "read", "limited"),
    ("select * from t limit $1", "read", "limit_param:1"),
    # COPY TO and cursors hand over every row their query reads.
    ("copy t to stdout", "read", "no_limit"),
    ("copy (select * from t) to stdout", "read", "no_limit"),
    ("declare c cursor for select * from t", "read", "no_limit"),
    # A limit bounds what reaches the client: one row may collect every row (attack14d).
    ("select array_agg(a) from t limit 1", "read", "no_limit"),
    ("select string_agg(a, ',') over () from t limit 1", "read", "no_limit"),
    ("select array(select a from t)", "read", "no_limit"),
    ("select (select count(*) from t)", "read", "no_limit"),
    ("with c as (select json_agg(t) j from t) select * from c limit 1", "read", "no_limit"),
    ("select * from (select xmlagg(x) from t) s limit 1", "read", "no_limit"),
    ("prepare p as select * from t", "read", "no_limit"),
    ("select (select count(*) from t limit 1)", "read", "no_limit"),
    ("select sum(a::numeric * 1000::numeric ^ a) from t limit 1", "read", "no_limit"),
    ("select * from (select * from t) s limit 1", "read", "limited"),
    ("select * from (select * from t limit 5) s", "read", "limited"),
    (
        "with recursive r(i, a) as (select 0, '' union all"
        " select i + 1, a || (select b from t offset i limit 1) from r) select a from r limit 1",
        "read",
        "no_limit",
    ),
    # Syntax that PostgreSQL 14/15 read as calls of user-definable functions.
    ("select json_scalar(1)", "read", "user_definable:json_scalar"),
    ("select json_object()", "read", "user_definable:json_object"),
    ("select json_value('{}', '$.a')", "read", "user_definable:json_value"),
    ("select merge_action()", "read", "user_definable:merge_action"),
    (
        "select * from json_table('{}', '$' columns (a int path '$.a')) j",
        "read",
        "user_definable:json_table",
    ),
    # Statements that were unknown before.
    ("create type pair as (a int, b text)", "ddl", "create"),
    ("create rule r as on insert to t do instead nothing", "ddl", "create"),
    ("refresh materialized view mv", "write", "refresh"),
    ("set constraints all deferred", "read", "set_constraints"),
    ("alter table t disable trigger all", "admin", "controls_off"),
    ("alter table t disable row level security", "admin", "controls_off"),
    ("alter table t enable replica trigger audit", "admin", "controls_off"),
    ("alter table t enable trigger audit", "ddl", "alter"),
    ("alter default privileges grant select on tables to public", "admin", "grant"),
    ("set search_path = pg_catalog, evil", "read", "search_path"),
    ("select set_config('search_path', 'x, pg_catalog', false)", "admin", "search_path_shadowing"),
    ("reset search_path", "read", "search_path"),
    ("explain select my_func(1) from secrets", "read", "explain"),
    ("drop table t", "ddl", "drop"),
    ("truncate t", "ddl", "truncate"),
    ("create table t (a int)", "ddl", "create"),
    ("alter table t add column b int", "ddl", "alter"),
    ("create index on t (a)", "ddl", "create"),
    ("grant select on t to bob", "admin", "grant"),
    ("create role bob", "admin", "create_role"),
    ("vacuum t", "admin", "vacuum"),
    ("lock table t", "write", "lock"),
    ("call p()", "write", "call"),
    ("begin", "read", "transaction"),
    ("commit", "read", "transaction"),
    ("show search_path", "read", "show"),
    ("listen ch", "read", "listen"),
    ("notify ch", "write", "notify"),
    ("selec 1", "unknown", "parse_error"),
]


@pytest.mark.parametrize(("sql", "klass", "kind"), CASES)
def test_classification(sql: str, klass: str, kind: str) -> None:
    (info,) = classify(sql)
    assert info.klass == klass, info
    assert kind in info.kinds, info


def test_every_statement_of_a_string_counts() -> None:
    infos = classify("select 1; drop table t; select 2")
    assert [i.klass for i in infos] == ["read", "ddl", "read"]
    assert [i.text for i in infos] == ["select 1", "drop table t", "select 2"]


def test_statement_texts_survive_multibyte_characters() -> None:
    infos = classify("select 'żółw'; select 'ñ'")
    assert [i.text for i in infos] == ["select 'żółw'", "select 'ñ'"]


def test_statements_differing_in_literals_share_a_class_but_do_blocks_do_not() -> None:
    assert classify("select * from t where a = 1")[0].klass == "read"
    assert classify("select * from t where a = 2")[0].klass == "read"
    # DO bodies are literals: never served from the fingerprint cache.
    first = classify("do $$ begin perform 1; end $$")
    second = classify("do $$ begin drop table t; end $$")
    assert first[0].text and second[0].text


def test_empty_query_has_no_statements() -> None:
    assert classify("") == ()
    assert classify(" ; ") == ()


def test_the_fingerprint_cache_never_lends_one_statements_class_to_another() -> None:
    """Fingerprints ignore literals and some options (BEGIN vs BEGIN READ WRITE share one).

    Warm the cache with every statement of the table, then each must still get exactly
    what a fresh parse gives it. Except ``types``: a fingerprint reads ``5::mood`` as a
    constant, so the gate judges by text where types matter (``by_fingerprint``).
    """
    for sql, _, _ in CASES:
        classify(sql)
    for sql, _, _ in CASES:
        (cached,) = classify(sql)
        (fresh,) = _parse_and_classify(sql)
        (by_text,) = classify_keyed(sql, by_fingerprint=False)[1]
        assert by_text.types == fresh.types, sql
        assert dataclasses.replace(cached, text="", types=()) == dataclasses.replace(
            fresh, text="", types=()
        ), sql


TABLES = [
    # (sql, tables read, tables written, functions)
    ("select a from s.t join u on true", ("s.t", "u"), (), ()),
    ("insert into t select * from u", ("u",), ("t",), ()),
    ("update t set a = f(b) from u where t.id = u.id", ("u",), ("t",), ("f",)),
    ("delete from t using u where t.a = u.a", ("u",), ("t",), ()),
    ("with c as (select 1) select * from c, real_t", ("real_t",), (), ()),
    ("with d as (delete from t returning *) select * from d", (), ("t",), ()),
    ("select * into x from t", ("t",), ("x",), ()),
    ("copy t to stdout", ("t",), (), ()),
    ("copy t from stdin", (), ("t",), ()),
    ("truncate a, s.b", (), ("a", "s.b"), ()),
    ("drop table s.t, u", (), ("s.t", "u"), ()),
    (
        "select pg_catalog.now(), evil.now(), lower('x')",
        (),
        (),
        ("pg_catalog.now", "evil.now", "lower"),
    ),
    ("merge into t using u on t.a = u.a when matched then delete", ("u",), ("t",), ()),
]


@pytest.mark.parametrize(("sql", "read", "written", "functions"), TABLES)
def test_tables_and_functions(
    sql: str, read: tuple[str, ...], written: tuple[str, ...], functions: tuple[str, ...]
) -> None:
    (info,) = classify(sql)
    assert sorted(info.tables_read) == sorted(read)
    assert sorted(info.tables_written) == sorted(written)
    assert sorted(info.functions) == sorted(functions)


@pytest.mark.parametrize(
    ("sql", "analyzes"),
    [
        ("explain delete from t", False),
        ("explain analyze delete from t", True),
        ("explain (analyze) delete from t", True),
        ("explain (analyze true) delete from t", True),
        ("explain (analyze false) delete from t", False),
        ("explain (analyze off) delete from t", False),
        ("explain (analyze 0) delete from t", False),
    ],
)
def test_explain_analyze_runs_the_statement(sql: str, analyzes: bool) -> None:
    (info,) = classify(sql)
    assert (info.klass == "write") is analyzes, info


def test_execute_arguments_are_the_expressions_the_server_evaluates() -> None:
    from wardgate.policy.sql import execute_arguments

    assert execute_arguments("EXECUTE upd(1, 11)") == "SELECT 1, 11"
    assert execute_arguments("EXECUTE sel(bump(5))") == "SELECT bump(5)"
    assert execute_arguments("EXECUTE plain") is None
    assert execute_arguments("SELECT 1") is None
