"""A hostile agent under column masking, through the real gateway and PostgreSQL 15
(issue 16, attack pass h, on the fixes of pass g). Four routes gave an agent whose role
may run DDL (``wagent``, group engineers; ``dagent`` may also run admin statements)
clear values of masked columns before the fixes on this branch:

- ``CREATE OR REPLACE VIEW v0 AS SELECT id, pw AS name FROM t``, where ``v0`` is a view
  the catalog snapshot knows as clean (it read ``t.name``), then ``SELECT name FROM v0``
  in the same transaction (or the same Query string): the snapshot cannot see the new
  body, so the read was not refused and the result column, named ``v0.name``, matched
  no rule: ``hunter2`` in clear. A temporary view of the clean view's name likewise;
- ``ALTER VIEW v0 RENAME TO x; ALTER VIEW vm RENAME TO v0`` (``vm`` a view over the
  masked column, refused to read), then a read of ``v0`` in the same transaction;
- ``ALTER DOMAIN d ADD CHECK (reverse(VALUE)::int > 0)`` over the domain of a masked
  column: the server checks every stored value, and the error echoes it
  (``invalid input syntax for type integer: "2retnuh"``); also ``NOT VALID`` and then
  ``VALIDATE CONSTRAINT``;
- ``CREATE STATISTICS s ON (reverse(pw)::int), id FROM t`` and ``ANALYZE t``: the
  expression is computed over the clear values, and the error echoes them;
- ``ALTER SCHEMA crm RENAME TO crm2`` under a rule ``crm.k.pw``: the table left the
  rule, and every principal (the read-only ``agent`` too) read ``crm2.k.pw`` clear;
- a routine someone else made that reads the masked column (refused in a query) as a
  column default of a table without rules (``ALTER TABLE o ADD COLUMN w text DEFAULT
  get_pw(1)``: the next INSERT stored the clear value) or in a CHECK (its error echoed
  it), and in ``COPY ... FROM STDIN WHERE reverse(get_pw(1))::int > 0`` (echoed too).

Each test checks the result bytes and every error field for the clear values (and
their reverses)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, running_gateway

PW, SSN, EMAIL = "hunter2", 123456789, "jane.doe@example.com"
CLEAR = (PW, PW[::-1], str(SSN), str(SSN)[::-1], EMAIL, EMAIL[::-1])

MASKING = """
masking:
  rules:
    - {name: content, principal_kinds: [agent], connections: [it], entities: [all], strategy: partial}
    - name: secrets
      principal_kinds: [agent]
      connections: [it]
      columns: ["*.{t}.email", "*.{t}.pw", "*.{t}.ssn", "*.{t}_d.pw", "{t}_s.{t}_k.pw"]
      strategy: partial
"""
AGENT = "  agent: {kind: agent, groups: [agents], sponsor: dev}\n"
WRITER = (
    "  wagent: {kind: agent, groups: [engineers], sponsor: dev}\n"
    "  dagent: {kind: agent, groups: [dbas], sponsor: dev}\n"
)


@pytest.fixture(scope="module")
def t(it_database: str) -> str:
    table = f"h16_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(
            f"create table {table} (id int primary key, name text not null, email text, "
            "pw text, ssn int, notes text)"
        )
        conn.execute(
            f"insert into {table} values (1, 'Jane', %s, %s, %s, 'hello')", (EMAIL, PW, SSN)
        )
        # A view the snapshot knows as clean, and one over the masked column.
        conn.execute(f"create view {table}_v0 as select id, name from {table}")
        conn.execute(f"create view {table}_vm as select id, pw as name from {table}")
        # A masked column of a domain type.
        conn.execute(f"create domain {table}_dom as text")
        conn.execute(f"create table {table}_d (id int, pw {table}_dom)")
        conn.execute(f"insert into {table}_d values (1, %s)", (PW,))
        # A rule naming its schema.
        conn.execute(f"create schema {table}_s")
        conn.execute(f"create table {table}_s.{table}_k (id int, pw text)")
        conn.execute(f"insert into {table}_s.{table}_k values (1, %s)", (PW,))
        # A routine someone else made that reads the masked column, and a table without
        # rules the agent may change.
        conn.execute(
            f"create function {table}_get(i int) returns text language sql stable "
            f"as 'select pw from {table} where id = i'"
        )
        conn.execute(f"create table {table}_o (id int, v text)")
        conn.execute(f"insert into {table}_o values (0, 'x')")
    return table


@pytest.fixture(scope="module")
def gw(it_database: str, t: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = base_config(it_database)
    for old, new in (
        (AGENT, AGENT + WRITER),
        ("engineers: {}, approvers: {}}", "engineers: {}, approvers: {}, dbas: {}}"),
        ("roles: {agents: reader, engineers: engineer}", "roles: {agents: reader, "
         "engineers: engineer, dbas: dba}"),
        ("roles:\n", "roles:\n  dba: {read: allow, write: allow, ddl: allow, admin: allow}\n"),
    ):  # fmt: skip
        assert old in config, old
        config = config.replace(old, new)
    config += MASKING.replace("{t}", t)
    with running_gateway(tmp_path_factory.mktemp("attack16h"), config) as gateway:
        yield gateway


def _leaks(values: Any) -> list[str]:
    text = repr(values)
    return [c for c in CLEAR if c in text]


def _error(exc: psycopg.Error) -> tuple[str, ...]:
    d = exc.diag
    fields = (d.message_detail, d.message_hint, d.context, d.internal_query, d.schema_name)
    return (str(exc), *(f or "" for f in fields))


def _run(conn: psycopg.Connection[Any], sql: str, prepare: bool | None = None) -> Any:
    """Every result of ``sql`` (a Query string may hold several statements)."""
    try:
        cur = conn.execute(sql.encode(), prepare=prepare)
        out = []
        while True:
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
            if not cur.nextset():
                return out
    except psycopg.Error as exc:
        return _error(exc)


def _restore_views(database: str, t: str) -> None:
    with admin_conn(database) as conn:
        conn.execute(f"create or replace view {t}_v0 as select id, name from {t}")


@pytest.mark.parametrize("prepare", [None, True])
@pytest.mark.parametrize(
    "steps",
    [
        # The snapshot's clean view, replaced; read in the same transaction.
        [
            "begin",
            "create or replace view {t}_v0 as select id, pw as name from {t}",
            "select name, reverse(name) from {t}_v0",
        ],
        # The same in one Query string (an implicit transaction).
        [
            "create or replace view {t}_v0 as select id, pw as name from {t}; "
            "select name, reverse(name) from {t}_v0",
        ],
        # A temporary view of the clean view's name (the temporary schema comes first).
        [
            "begin",
            "create temp view {t}_v0 as select id, reverse(pw) as name from {t}",
            "select name from {t}_v0",
        ],
        # The view over the masked column, renamed to the clean view's name.
        [
            "begin",
            "alter view {t}_v0 rename to {t}_v1",
            "alter view {t}_vm rename to {t}_v0",
            "select name, reverse(name) from {t}_v0",
        ],
    ],
)
def test_a_view_changed_in_the_transaction_is_not_read_clear(
    gw: Gateway, t: str, it_database: str, steps: list[str], prepare: bool | None
) -> None:
    if prepare and ";" in steps[0]:
        pytest.skip("one Query string: the simple protocol only")
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            for sql in steps:
                got.append(_run(conn, sql.format(t=t), prepare=prepare))
            conn.execute(b"rollback")
    finally:
        _restore_views(it_database, t)
    assert not _leaks(got), got
    assert "blocked by masking:secrets" in repr(got), got


def test_a_clean_view_can_still_be_created(gw: Gateway, t: str, it_database: str) -> None:
    """A view over columns no rule masks is created as before (its names pinned)."""
    with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
        got = [
            _run(conn, "begin"),
            _run(conn, f"create or replace view {t}_v0 as select id, upper(name) as name from {t}"),
            _run(conn, f"select name from {t}_v0"),
            _run(conn, "rollback"),
        ]
    assert got == [["BEGIN"], ["CREATE VIEW"], [[("JANE",)]], ["ROLLBACK"]], got


@pytest.mark.parametrize(
    "steps",
    [
        ["alter domain {t}_dom add constraint {t}_c check (reverse(value)::int > 0)"],
        [
            "alter domain {t}_dom add constraint {t}_c check (reverse(value)::int > 0) not valid",
            "alter domain {t}_dom validate constraint {t}_c",
        ],
    ],
)
def test_a_domain_check_over_a_masked_column_is_refused(
    gw: Gateway, t: str, it_database: str, steps: list[str]
) -> None:
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            for sql in steps:
                got.append(_run(conn, sql.format(t=t)))
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"alter domain {t}_dom drop constraint if exists {t}_c")
    assert not _leaks(got), got
    assert "blocked by masking:secrets" in repr(got[0]), got


def test_an_expression_statistic_over_a_masked_column_is_refused(
    gw: Gateway, t: str, it_database: str
) -> None:
    """ANALYZE computes the expression over the clear values; its error echoed them."""
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("dagent"), autocommit=True) as conn:
            got.append(_run(conn, f"create statistics {t}_s on (reverse(pw)::int), id from {t}"))
            got.append(_run(conn, f"analyze {t}"))
            # Statistics of plain columns hold values only pg_statistic_ext_data shows.
            got.append(_run(conn, f"create statistics {t}_p on pw, id from {t}"))
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"drop statistics if exists {t}_s")
            conn.execute(f"drop statistics if exists {t}_p")
    assert not _leaks(got), got
    assert "blocked by masking:secrets" in repr(got[0]), got
    assert got[1:] == [["ANALYZE"], ["CREATE STATISTICS"]], got


def test_renaming_the_schema_a_rule_names_is_refused(gw: Gateway, t: str, it_database: str) -> None:
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            got.append(_run(conn, f"alter schema {t}_s rename to {t}_s2"))
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            renamed = "ALTER SCHEMA" in repr(got[0])
            for _ in range(20 if renamed else 1):  # refused until the snapshot has it
                got.append(_run(conn, f"select pw, reverse(pw) from {t}_s2.{t}_k"))
                if "not in the gateway's catalog snapshot" not in repr(got[-1]):
                    break
                time.sleep(0.25)
    finally:
        with admin_conn(it_database) as conn:
            if conn.execute(
                "select 1 from pg_namespace where nspname = %s", (f"{t}_s2",)
            ).fetchone():
                conn.execute(f"alter schema {t}_s2 rename to {t}_s")
    assert not _leaks(got), got
    assert "renaming schema" in repr(got[0]) and "'secrets'" in repr(got[0]), got


@pytest.mark.parametrize(
    "steps",
    [
        [
            "alter table {t}_o add column w text default {t}_get(1)",
            "insert into {t}_o (id) values (1)",
            "select w, reverse(w) from {t}_o",
        ],
        ["alter table {t}_o add constraint {t}_c check (reverse({t}_get(1))::int > 0)"],
        ["create table {t}_n (id int, w text default {t}_get(1))"],
    ],
)
def test_a_user_routine_in_ddl_is_refused(
    gw: Gateway, t: str, it_database: str, steps: list[str]
) -> None:
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            for sql in steps:
                got.append(_run(conn, sql.format(t=t)))
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"alter table {t}_o drop column if exists w")
            conn.execute(f"alter table {t}_o drop constraint if exists {t}_c")
            conn.execute(f"drop table if exists {t}_n")
            conn.execute(f"delete from {t}_o where id <> 0")
    assert not _leaks(got), got
    assert "is not a built-in function" in repr(got[0]), got


@pytest.mark.parametrize(
    "where",
    ["reverse({t}_get(1))::int > 0", "pg_stat_get_backend_activity(1) is not null"],
)
def test_a_routine_in_copy_from_where_is_refused(
    gw: Gateway, t: str, it_database: str, where: str
) -> None:
    """COPY ... FROM ... WHERE runs on the server; a routine refused in a query ran there."""
    got: Any = "COPY"
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            sql = f"copy {t}_o from stdin where {where.format(t=t)}"
            with conn.cursor().copy(sql.encode()) as copy:
                copy.write(b"1\tx\n")
    except psycopg.Error as exc:
        got = _error(exc)
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"delete from {t}_o where id <> 0")
    assert not _leaks(got), got
    assert "blocked by masking:secrets" in repr(got), got


@pytest.mark.parametrize(
    "steps",
    [
        ["create cast (int4 as text) with function {t}_get(int4)", "select 1::text"],
        ["create operator ### (rightarg = int4, function = {t}_get)", "select ### 1"],
    ],
)
def test_creating_a_cast_or_operator_over_a_routine_is_refused(
    gw: Gateway, t: str, steps: list[str]
) -> None:
    """``dagent`` may run admin statements (CREATE CAST, CREATE OPERATOR): the new cast
    or operator called someone else's routine over a masked column in the same
    transaction, before any snapshot listed it."""
    got: list[Any] = []
    with psycopg.connect(gw.dsn("dagent"), autocommit=True) as conn:
        got.append(_run(conn, "begin"))
        for sql in steps:
            got.append(_run(conn, sql.format(t=t)))
        conn.execute(b"rollback")
    assert not _leaks(got), got
    assert "casts, operators" in repr(got[1]), got
