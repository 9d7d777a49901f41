"""A hostile agent under column masking attacks the search_path resolution
(postgres/mask_path.py) and the statement-shape memory (postgres/mask_shape.py),
through the real gateway and PostgreSQL 15 with psycopg. The gateway and fixture tables
are test_mask_path's: public.<t>.email is masked (partial), other_<t>.<t> has no rule.

Each attack transforms the column (hex) so the result-column layer, which masks by the
RowDescription's table and column, does not catch it: only the rewrite protects it."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pglast.parser import parse_sql_json

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from tests.integration.test_mask_path import CLEAR_PUBLIC, MASKING, _agent
from tests.integration.test_mask_path import gw as gw  # noqa: F401 - the fixture
from tests.integration.test_mask_path import t as t  # noqa: F401 - the fixture
from wardgate.policy.mask_rules import ColumnRule
from wardgate.postgres.mask_rewrite import MaskCatalog, Refused, Table, rewrite

HEX = [e.encode().hex() for e in CLEAR_PUBLIC]


def _no_clear(conn: psycopg.Connection[Any], got: object) -> None:
    text = str(got)
    for clear, hexed in zip(CLEAR_PUBLIC, HEX, strict=True):
        assert clear not in text and hexed not in text, text


def _hex_emails(t: str) -> str:
    return f"select encode(convert_to(email, 'UTF8'), 'hex') as x from {t} order by id"


def _refused_or_masked(conn: psycopg.Connection[Any], sql: str, **kw: Any) -> None:
    try:
        got = conn.execute(sql.encode(), **kw).fetchall()
    except psycopg.errors.InsufficientPrivilege as exc:
        assert "Prepare it again" in str(exc), exc
        return
    _no_clear(conn, got)


def test_a_statement_prepared_under_one_path_and_executed_under_another(
    gw: Gateway, t: str
) -> None:
    """Fixed: PostgreSQL analyses a prepared statement again when the session's
    search_path changed since it was prepared (its plan cache), so a statement rewritten
    under the old path (other_<t> first: nothing to mask) read public.<t> in clear when
    executed after ``SET search_path = public``. Now Bind and EXECUTE rewrite it again
    under the session's paths of now and refuse it when that differs."""
    with _agent(gw, f"other_{t},public") as conn:
        conn.execute(f"prepare p16b as {_hex_emails(t)}".encode())
        conn.execute(b"set search_path = public")
        _refused_or_masked(conn, "execute p16b")
        assert conn.execute(b"show search_path").fetchone() == ("public",)
        _refused_or_masked(conn, "set search_path = public; execute p16b")
        conn.execute(b"deallocate p16b")
        conn.execute(f"prepare p16b as {_hex_emails(t)}".encode())  # prepared again: masked
        _no_clear(conn, conn.execute(b"execute p16b").fetchall())
    with _agent(gw, f"other_{t},public") as conn:  # the extended protocol: Parse, Bind
        other = ["other.one@example.net", "other.two@example.net"]
        first = conn.execute(_hex_emails(t).encode(), prepare=True).fetchall()
        assert first == [(e.encode().hex(),) for e in other]
        conn.execute(b"set search_path = public")
        _refused_or_masked(conn, _hex_emails(t), prepare=True)
    with _agent(gw, f"other_{t},public") as conn:  # one string: the SET, then EXECUTE
        conn.execute(f"prepare p16c as {_hex_emails(t)}".encode())
        _refused_or_masked(conn, "set search_path = public; execute p16c")
    with _agent(gw, f"other_{t},public") as conn:  # nothing changed: it runs, clear
        conn.execute(f"prepare p16d as {_hex_emails(t)}".encode())
        got = conn.execute(b"execute p16d").fetchall()
        assert got == [(e.encode().hex(),) for e in other]


def test_a_view_that_sets_the_search_path_behind_the_gateway(
    gw: Gateway, t: str, it_database: str
) -> None:
    # Any principal allowed DDL (or the agent itself in another session with ddl: allow)
    # leaves this behind; it reads no table, so no rule refuses it.
    trap = f"trap_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as admin:
        admin.execute(
            f"create view public.{trap} as "
            "select pg_catalog.set_config('search_path', 'public', false) as s"
        )
    with _agent(gw, f"other_{t},public") as conn:
        assert _retry(conn, f"select s from {trap}") == [("public",)]
        assert conn.execute(b"show search_path").fetchone() == ("public",)
        _no_clear(conn, conn.execute(_hex_emails(t).encode()).fetchall())


def test_a_relation_made_outside_the_gateway_is_read_at_its_first_miss(
    gw: Gateway, t: str, it_database: str
) -> None:
    """The masking snapshot learns of a table made outside the gateway when a statement
    first names it (the refusal says to retry), not at the catalog watch's next look,
    up to 30 seconds later."""
    late = f"late_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as admin:
        admin.execute(f"create table public.{late} (id int)")
        admin.execute(f"insert into public.{late} values (1)")
    with _agent(gw) as conn:
        try:
            conn.execute(f"select id from public.{late}".encode())
        except psycopg.errors.InsufficientPrivilege as exc:
            assert "not in the gateway's catalog snapshot" in str(exc), exc
        else:
            return  # the watch's own look came between the two: nothing to show
        started = time.monotonic()
        assert _retry(conn, f"select id from public.{late}") == [(1,)]
        assert time.monotonic() - started < 10


def _retry(conn: psycopg.Connection[Any], sql: str) -> Any:
    """The catalog snapshot may not know a relation made outside the gateway yet."""
    for _ in range(40):
        try:
            return conn.execute(sql.encode()).fetchall()
        except psycopg.errors.InsufficientPrivilege as exc:
            if "not in the gateway's catalog snapshot" not in str(exc):
                raise
            time.sleep(1)
    raise AssertionError(f"the snapshot never learnt of it: {sql}")


def test_an_operator_placed_before_pg_catalog_sees_the_clear_value(
    gw: Gateway, t: str, it_database: str
) -> None:
    """Fixed: the wardgate_mask functions ran, inlined, under the caller's search_path;
    a startup search_path that places a schema of the agent's before pg_catalog (a
    startup option is not judged like ``SET``) made ``v ~ '...'`` inside partial() call
    the agent's own ``~`` with the clear email (and ``||`` in hmac_hex with the key's
    pads). Now every operator in them is ``OPERATOR(pg_catalog.x)``; and since attack14c
    the gateway splits a startup search_path as the server does, so such a session is
    refused before it starts (`evil,pg_catalog,public` was one schema name to it)."""
    evil = f"evil_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as admin:  # DDL by anyone allowed it, earlier
        admin.execute(f"create schema {evil}")
        admin.execute(
            f"create function {evil}.m(a text, b text) returns boolean language plpgsql as "
            "$$ begin perform pg_catalog.set_config('x.leak', "
            "coalesce(pg_catalog.current_setting('x.leak', true), '') "
            "operator(pg_catalog.||) pg_catalog.encode(pg_catalog.convert_to(a, 'UTF8'), "
            "'hex') operator(pg_catalog.||) ',', false); "
            "return pg_catalog.textregexeq(a, b); end $$"
        )
        for op in ("~", "||"):
            admin.execute(
                f"create operator {evil}.{op} (leftarg = text, rightarg = text, "
                f"function = {evil}.m)"
            )
    try:
        with (
            pytest.raises(psycopg.OperationalError, match="pg_catalog after another schema"),
            _agent(gw, f"{evil},pg_catalog,public") as conn,
        ):
            got = conn.execute(f"select email from public.{t} order by id".encode()).fetchall()
            assert [str(r[0]) for r in got] == ["j****@*****.com", "o****@*****.org"]
            leak = conn.execute(b"select current_setting('x.leak', true)").fetchone()
            assert leak is not None and not leak[0], leak  # the agent's operator never ran
            _no_clear(conn, leak)
    finally:
        # A user `||` left in the shared database makes every later gateway judge `||`
        # as a user function (rightly), and other tests' reads become writes.
        with admin_conn(it_database) as admin:
            admin.execute(f"drop schema {evil} cascade")


def test_text_the_gateway_cannot_parse_is_refused_not_passed(it_database: str) -> None:
    """Fixed: the rewriter passed text its parser (libpg_query of PostgreSQL 17) refuses
    unchanged, trusting the server to refuse it too; but ``system_user`` is a reserved
    word since PostgreSQL 16, and PostgreSQL 15 takes it for a table alias and runs the
    statement. The gate blocks unparsable text by default, but a connection with
    ``on_parse_error: review`` sent an approved one unmasked. Now the rewriter refuses
    it for a masked principal."""
    table = f"u_{uuid.uuid4().hex[:8]}"
    sql = f"select system_user.email from {table} system_user"
    with admin_conn(it_database) as admin:
        admin.execute(f"create table {table} (email text)")
        admin.execute(f"insert into {table} values ('jane.doe@example.com')")
        assert admin.execute(sql.encode()).fetchall() == [("jane.doe@example.com",)]
    with pytest.raises(Exception):  # noqa: B017, PT011 - the gateway's parser refuses it
        parse_sql_json(sql)
    catalog = MaskCatalog.of([Table("public", table, "r", (("email", "text"),))])
    rules = (ColumnRule("r", f"public.{table}.email", "partial"),)
    with pytest.raises(Refused) as info:
        rewrite(sql, catalog, rules, (("public",),))
    assert "cannot parse" in info.value.reason


@pytest.fixture(scope="module")
def ddl_gw(it_database: str, t: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The same rules, for an agent whose role allows writes and DDL."""
    config = base_config(it_database).replace("agents: reader", "agents: engineer")
    gw = make_gateway(tmp_path_factory.mktemp("attack16b"), config + MASKING.replace("{t}", t))
    gw.start()
    yield gw
    gw.stop()


def test_create_table_as_execute_after_a_new_search_path(ddl_gw: Gateway, t: str) -> None:
    """Fixed: ``CREATE TABLE x AS EXECUTE p`` ran p analysed again under the new
    search_path (public.<t>, clear) into a table no rule masks; the EXECUTE inside it
    was not checked like a plain one. Now refused for a masked principal."""
    copy = f"x_{uuid.uuid4().hex[:8]}"
    with _agent(ddl_gw, f"other_{t},public") as conn:
        conn.execute(f"prepare p16e as {_hex_emails(t)}".encode())
        conn.execute(b"set search_path = public")
        try:
            conn.execute(f"create table public.{copy} as execute p16e".encode())
        except psycopg.errors.InsufficientPrivilege as exc:
            assert "CREATE TABLE AS EXECUTE" in str(exc), exc
            return
        _no_clear(conn, _retry(conn, f"select * from public.{copy}"))


def test_the_agent_plants_a_search_path_view_itself(ddl_gw: Gateway, t: str) -> None:
    """Since attack16h a view's query is judged as the principal's own query, where
    set_config() is refused: the trap cannot be planted through the gateway any more
    (one planted by someone else: test_a_view_that_sets_the_search_path_behind_the_gateway)."""
    trap = f"trap_{uuid.uuid4().hex[:8]}"
    with _agent(ddl_gw) as planter:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match=r"set_config\(\)"):
            planter.execute(
                f"create view public.{trap} as "
                "select pg_catalog.set_config('search_path', 'public', false) as s".encode()
            )
