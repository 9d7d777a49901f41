"""A hostile agent under column masking, through the real gateway and PostgreSQL 15
(issue 16, attack pass i, on the fixes of pass h). The rewriter held for queries; these
routes went around it through what the upstream credential (a superuser here, as in
many deployments) lets a statement change, and gave the agent clear values of masked
columns (or an exact oracle on them) before the fixes on this branch:

- a write into a system catalog (``wagent`` may write, not run admin statements):
  ``UPDATE pg_catalog.pg_proc SET proname = 'upper' WHERE proname = 'query_to_xml'``,
  then ``upper('select pw from t', true, false, '')`` passed as the built-in ``upper``
  and ran the SELECT past the rewrite; ``UPDATE pg_attribute SET attname = 'x'`` renamed
  the masked column, and ``x`` was a column no rule names;
- ``CREATE FOREIGN TABLE ft (v text OPTIONS (column_name 'pw')) SERVER loopback OPTIONS
  (table_name 't')`` over a loopback postgres_fdw server an administrator had set up:
  the snapshot saw a table without rules, and every principal read ``t.pw`` through it;
- ``ALTER FUNCTION pg_catalog.query_to_xml(...) RENAME TO upper`` (``dagent`` may run
  admin statements): the same as the catalog write, through DDL;
- ``COPY t_o FROM PROGRAM 'psql -c "select pw from t"'`` (``dagent``): the program's
  output, the clear values, stored in a table without rules;
- ``ALTER TABLE t ADD FOREIGN KEY (pw) REFERENCES guesses (v)`` (``wagent``): it
  succeeds exactly when every value is among the guesses, an equality oracle that
  ``predicates: block`` refuses as ``WHERE pw = ...``;
- under a rule with ``predicates: allow`` (conditions may use the clear value, an
  oracle the rule accepts; the select list stays masked): ``mode() WITHIN GROUP (ORDER
  BY pa)`` and ``percentile_disc(0) WITHIN GROUP (ORDER BY pa)`` returned the clear
  value itself (their ORDER BY is their input), and ``INSERT ... ON CONFLICT (id) DO
  UPDATE SET notes = t.pa`` copied it into a column no rule masks.

Each test checks the result bytes and every error field for the clear values (and their
reverses)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER
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
      columns: ["*.{t}.email", "*.{t}.pw", "*.{t}.ssn"]
      strategy: partial
    - name: loose
      principal_kinds: [agent]
      connections: [it]
      columns: ["*.{t}.pa"]
      strategy: partial
      predicates: allow
"""
AGENT = "  agent: {kind: agent, groups: [agents], sponsor: dev}\n"
WRITER = (
    "  wagent: {kind: agent, groups: [engineers], sponsor: dev}\n"
    "  dagent: {kind: agent, groups: [dbas], sponsor: dev}\n"
)


@pytest.fixture(scope="module")
def t(it_database: str) -> str:
    table = f"i16_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(
            f"create table {table} (id int primary key, name text not null, email text, "
            "pw text, ssn int, notes text, pa text)"
        )
        conn.execute(
            f"insert into {table} values (1, 'Jane', %s, %s, %s, 'hello', %s)",
            (EMAIL, PW, SSN, PW),
        )
        # A table without rules the agents may write, and one of guesses.
        conn.execute(f"create table {table}_o (id int, v text)")
        conn.execute(f"create table {table}_g (v text primary key)")
        conn.execute(f"insert into {table}_g values ('nope'), (%s)", (PW,))
        # A plain unique index on the masked column (allowed to the agents too).
        conn.execute(f"create unique index on {table} (pw)")
        # A routine someone else made that reads the masked column.
        conn.execute(
            f"create function {table}_get(i int) returns text language sql stable "
            f"as 'select pw from {table} where id = i'"
        )
        # A loopback foreign server an administrator set up (for another purpose).
        conn.execute("create extension if not exists postgres_fdw")
        conn.execute(
            f"create server {table}_lo foreign data wrapper postgres_fdw options "
            f"(host '{PG_HOST}', port '{PG_PORT}', dbname '{it_database}')"
        )
        conn.execute(f"create user mapping for public server {table}_lo options (user '{PG_USER}')")
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
    with running_gateway(tmp_path_factory.mktemp("attack16i"), config) as gateway:
        yield gateway


def _leaks(values: Any) -> list[str]:
    text = repr(values)
    return [c for c in CLEAR if c in text]


def _error(exc: psycopg.Error) -> tuple[str, ...]:
    d = exc.diag
    fields = (d.message_detail, d.message_hint, d.context, d.internal_query, d.schema_name)
    return (str(exc), *(f or "" for f in fields))


def _run(conn: psycopg.Connection[Any], sql: str) -> Any:
    """Every result of ``sql`` (a Query string may hold several statements)."""
    try:
        cur = conn.execute(sql.encode())
        out = []
        while True:
            out.append(cur.fetchall() if cur.description else cur.statusmessage)
            if not cur.nextset():
                return out
    except psycopg.Error as exc:
        return _error(exc)


def _read_when_known(gw: Gateway, principal: str, sql: str) -> Any:
    """``sql`` as ``principal`` once the gateway has read the catalog again (a relation
    made a moment ago is refused until then)."""
    with psycopg.connect(gw.dsn(principal), autocommit=True) as conn:
        for _ in range(40):
            got = _run(conn, sql)
            if "catalog snapshot" not in repr(got) and "retry in a moment" not in repr(got):
                return got
            time.sleep(0.25)
    return got


def test_the_reviewer_sees_clear_values(gw: Gateway, t: str) -> None:
    """The fixture's control: the clear value is there to leak, for a principal without
    the rule, and masked for the agent."""
    with psycopg.connect(gw.dsn("reviewer"), autocommit=True) as conn:
        assert _run(conn, f"select pw from {t}") == [[(PW,)]]
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        assert not _leaks(_run(conn, f"select pw, reverse(pw) from {t}"))


@pytest.mark.parametrize(
    "steps",
    [
        # A built-in that runs SQL text, renamed to a built-in's name.
        [
            "begin",
            "update pg_catalog.pg_proc set proname = 'upper' where proname = 'query_to_xml'",
            "select upper('select pw from {t}', true, false, '')::text",
        ],
        # The masked column renamed in pg_attribute.
        [
            "begin",
            "update pg_attribute set attname = 'x' where attrelid = '{t}'::regclass "
            "and attname = 'pw'",
            "select reverse(x) from {t}",
        ],
        # The same through a CTE, and through MERGE and COPY FROM.
        [
            "begin",
            "with u as (update pg_catalog.pg_proc set proname = 'upper' "
            "where proname = 'query_to_xml' returning 1) select count(*) from u",
            "select upper('select pw from {t}', true, false, '')::text",
        ],
        [
            "begin",
            "merge into pg_catalog.pg_proc p using (select 1) s on p.proname = 'query_to_xml' "
            "when matched then update set proname = 'upper'",
            "select upper('select pw from {t}', true, false, '')::text",
        ],
    ],
)
def test_a_write_to_a_system_catalog_is_refused(gw: Gateway, t: str, steps: list[str]) -> None:
    """``wagent`` may write (no admin statements): with a superuser upstream credential a
    write into pg_proc or pg_attribute changed what the gateway judges by."""
    got: list[Any] = []
    with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
        for sql in steps:
            got.append(_run(conn, sql.format(t=t)))
        conn.execute(b"rollback")
    assert not _leaks(got), got
    assert "writing to the system catalog" in repr(got[1]), got
    assert "blocked by masking:secrets" in repr(got[1]), got


def test_a_write_through_a_view_over_a_system_catalog_is_refused(
    gw: Gateway, t: str, it_database: str
) -> None:
    """An automatically updatable view over pg_proc, made by the agent (DDL) and known to
    the snapshot, wrote pg_proc: the target was a view, not a system catalog."""
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            got.append(_run(conn, f"create view {t}_pv as select oid, proname from pg_proc"))
        got.append(_read_when_known(gw, "wagent", f"select count(*) > 0 from {t}_pv"))
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            for sql in (
                "begin",
                "update {t}_pv set proname = 'upper' where proname = 'query_to_xml'",
                "select upper('select pw from {t}', true, false, '')::text",
            ):
                got.append(_run(conn, sql.format(t=t)))
            conn.execute(b"rollback")
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"drop view if exists {t}_pv")
    assert not _leaks(got), got
    assert got[1] == [[(True,)]], got  # reading it is fine
    assert "writing to the system catalog pg_proc" in repr(got[3]), got


def test_copy_into_a_system_catalog_is_refused(gw: Gateway, t: str) -> None:
    got: Any = "COPY"
    try:
        with (
            psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn,
            conn.cursor().copy(b"copy pg_catalog.pg_description from stdin") as copy,
        ):
            copy.write(b"1\t1\t0\tx\n")
    except psycopg.Error as exc:
        got = _error(exc)
    assert "writing to the system catalog" in repr(got), got


@pytest.mark.parametrize(
    ("principal", "create"),
    [
        (
            "wagent",
            "create foreign table {t}_ft (id int, v text options (column_name 'pw')) "
            "server {t}_lo options (table_name '{t}')",
        ),
        # IMPORT FOREIGN SCHEMA is an admin statement to the gate; it keeps the remote
        # names, so a glob naming public.t would not match t_imp.t (here the glob is
        # *.t.pw: the imported table is masked, this form is refused only).
        (
            "dagent",
            "create schema {t}_imp; import foreign schema public limit to ({t}) "
            "from server {t}_lo into {t}_imp",
        ),
    ],
)
def test_a_foreign_table_over_the_masked_table_is_refused(
    gw: Gateway, t: str, it_database: str, principal: str, create: str
) -> None:
    """A foreign table through a loopback server an administrator set up read the masked
    table under a name no rule matches, for every principal (``wagent`` may run DDL)."""
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn(principal), autocommit=True) as conn:
            got.append(_run(conn, create.format(t=t)))
        if principal == "wagent":
            got.append(_read_when_known(gw, "wagent", f"select v, reverse(v) from {t}_ft"))
        else:
            got.append(_read_when_known(gw, "dagent", f"select pw, reverse(pw) from {t}_imp.{t}"))
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"drop foreign table if exists {t}_ft")
            conn.execute(f"drop schema if exists {t}_imp cascade")
    assert not _leaks(got), got
    assert "foreign tables, foreign servers and user mappings" in repr(got[0]), got


def test_changing_a_foreign_server_is_refused(gw: Gateway, t: str, it_database: str) -> None:
    """``dagent`` may run admin statements (CREATE SERVER); the server's options decide
    what every foreign table on it reads."""
    with psycopg.connect(gw.dsn("dagent"), autocommit=True) as conn:
        got = [
            _run(conn, f"alter server {t}_lo options (set dbname '{it_database}')"),
            _run(
                conn,
                f"create server {t}_lo2 foreign data wrapper postgres_fdw "
                f"options (host '{PG_HOST}')",
            ),
        ]
    assert all("foreign tables, foreign servers" in repr(g) for g in got), got


@pytest.mark.parametrize(
    "steps",
    [
        [
            "begin",
            "alter function pg_catalog.query_to_xml(text, boolean, boolean, text) rename to upper",
            "select upper('select pw from {t}', true, false, '')::text",
        ],
        # Someone else's routine over the masked column, moved into pg_catalog under a
        # built-in's name.
        [
            "begin",
            "alter function {t}_get(int) set schema pg_catalog",
            "alter function pg_catalog.{t}_get(int) rename to lower",
            "select lower(1)",
        ],
    ],
)
def test_renaming_a_routine_to_a_trusted_name_is_refused(
    gw: Gateway, t: str, steps: list[str]
) -> None:
    """``dagent`` may run admin statements; a routine renamed to a built-in's name passed
    as that built-in."""
    got: list[Any] = []
    with psycopg.connect(gw.dsn("dagent"), autocommit=True) as conn:
        for sql in steps:
            got.append(_run(conn, sql.format(t=t)))
        conn.execute(b"rollback")
    assert not _leaks(got), got
    assert "renaming functions, procedures" in repr(got), got


@pytest.mark.parametrize(
    "sql",
    [
        "copy {t}_o (v) from program "
        "'psql -h {host} -p {port} -U {user} -d {db} -Atc \"select pw from {t}\"'",
        "copy (select 1) to program 'cat > /dev/null'",
        "copy {t}_o (v) from '/dev/null'",
    ],
)
def test_copy_with_a_server_file_or_program_is_refused(
    gw: Gateway, t: str, it_database: str, sql: str
) -> None:
    """``dagent`` may run admin statements: a program run by COPY ran any SQL, and its
    output (the clear values) was stored in a table without rules."""
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("dagent"), autocommit=True) as conn:
            text = sql.format(t=t, host=PG_HOST, port=PG_PORT, user=PG_USER, db=it_database)
            got.append(_run(conn, text))
            got.append(_run(conn, f"select v, reverse(v) from {t}_o"))
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"delete from {t}_o")
    assert not _leaks(got), got
    assert "COPY to or from a server file or program" in repr(got[0]), got


@pytest.mark.parametrize(
    "sql",
    [
        "alter table {t} add constraint {t}_fk foreign key (pw) references {t}_g (v)",
        "alter table {t}_g add constraint {t}_fk foreign key (v) references {t} (pw)",
        "create table {t}_h (v text references {t} (pw))",
    ],
)
def test_a_foreign_key_on_a_masked_column_is_refused(
    gw: Gateway, t: str, it_database: str, sql: str
) -> None:
    """Whether the key validates says whether every masked value is among the guesses
    (or, a key to the column, whether a guess exists): the same answer for a right and a
    wrong guess, a refusal."""
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            for guess in (PW, "wrong"):
                with admin_conn(it_database) as admin:
                    admin.execute(f"truncate {t}_g")
                    admin.execute(f"insert into {t}_g values (%s)", (guess,))
                got.append(_run(conn, "begin"))
                got.append(_run(conn, sql.format(t=t)))
                got.append(_run(conn, "rollback"))
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"drop table if exists {t}_h")
            conn.execute(f"alter table {t} drop constraint if exists {t}_fk")
            conn.execute(f"alter table {t}_g drop constraint if exists {t}_fk")
    assert not _leaks(got), got
    assert got[1] == got[4], got  # no oracle: the same answer either way
    assert "a foreign key from or to the masked column" in repr(got[1]), got


def test_a_foreign_key_to_other_columns_still_works(gw: Gateway, t: str, it_database: str) -> None:
    with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
        got = [
            _run(conn, "begin"),
            _run(conn, f"create table {t}_k (person int references {t} (id))"),
            _run(conn, "rollback"),
        ]
    assert got == [["BEGIN"], ["CREATE TABLE"], ["ROLLBACK"]], got


@pytest.mark.parametrize(
    "steps",
    [
        ["select mode() within group (order by pa) from {t}"],
        ["select percentile_disc(0) within group (order by pa) from {t}"],
        [
            "insert into {t} (id, name) values (1, 'x') on conflict (id) "
            "do update set notes = {t}.pa",
            "select notes, reverse(notes) from {t}",
        ],
    ],
)
def test_predicates_allow_does_not_return_the_clear_value(
    gw: Gateway, t: str, it_database: str, steps: list[str]
) -> None:
    """``predicates: allow`` leaves a column clear in conditions (an oracle the rule
    accepts), not in what a statement returns or writes."""
    got: list[Any] = []
    try:
        with psycopg.connect(gw.dsn("wagent"), autocommit=True) as conn:
            for sql in steps:
                got.append(_run(conn, sql.format(t=t)))
            # A condition on the column is still allowed under this rule.
            allowed = _run(conn, f"select count(*) from {t} where pa like 'h%'")
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"update {t} set notes = 'hello'")
    assert not _leaks(got), got
    assert allowed == [[(1,)]], allowed


def test_a_view_someone_else_made_over_a_pinned_blocked_catalog_is_refused(
    gw: Gateway, t: str, it_database: str
) -> None:
    """A view over pg_authid (a pinned catalog: pg_depend records no dependency on it, so
    only the rule's range table shows it), made by an administrator, returned every
    role's password verifier to a principal under a masking rule, as pg_authid itself
    would (which is refused)."""
    role = f"{t}_r"
    with admin_conn(it_database) as conn:
        conn.execute(f"create role {role} password 'not-for-agents'")
        conn.execute(
            f"create view {t}_au as select rolname, rolpassword from pg_authid "
            f"where rolname = '{role}'"
        )
    try:
        with admin_conn(it_database) as conn:  # the control: it does hold the verifier
            (verifier,) = conn.execute(f"select rolpassword from {t}_au").fetchone() or ("",)
        assert str(verifier).startswith("SCRAM-SHA-256$"), verifier
        got = _read_when_known(gw, "agent", f"select rolpassword from {t}_au")
        assert "SCRAM-SHA-256$" not in repr(got), got
        assert "pg_catalog.pg_authid" in repr(got), got
    finally:
        with admin_conn(it_database) as conn:
            conn.execute(f"drop view if exists {t}_au")
            conn.execute(f"drop role if exists {role}")
