"""A hostile agent under column masking, through the real gateway and PostgreSQL: each
test is an attack that got clear values (or the masking key) out before it was fixed.
The gateway and fixture table are test_mask_rewrite's."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn
from tests.integration.test_mask_rewrite import ROWS, _agent, _no_clear
from tests.integration.test_mask_rewrite import gw as gw  # noqa: F401 - the fixture

KID = (9, "Kid", "kid.secret@example.com", "6011 0009 9013 9424", "FR7630006000011234567890189", 1)


@pytest.fixture(scope="module")
def people(it_database: str) -> str:
    """test_mask_rewrite's table, and an inheritance child of it (created before the
    gateway starts, so its catalog snapshot knows it)."""
    table = f"people_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(
            f"create table {table} (id int primary key, name text, email text, "
            "card varchar(30), iban text, ssn int)"
        )
        for row in ROWS:
            conn.execute(f"insert into {table} values (%s, %s, %s, %s, %s, %s)", row)
        conn.execute(f"create table {table}_kid () inherits ({table})")
        conn.execute(f"insert into {table}_kid values (%s, %s, %s, %s, %s, %s)", KID)
        # The same name in another schema, with no masked column yet (the rules name
        # *.<table>.email): test_a_column_added_since_the_snapshot adds one.
        conn.execute(f"create schema late_{table}")
        conn.execute(f"create table late_{table}.{table} (id int, name text)")
    return table


def _refused(conn: psycopg.Connection[Any], sql: str, why: str) -> str:
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
        conn.execute(sql.encode())
    message = str(info.value)
    assert why in message and "wardgate: blocked by" in message, message
    assert conn.execute("select 1").fetchone() == (1,)  # the session goes on
    return message


def test_ts_rewrite_runs_no_sql_text_past_the_rewrite(
    gw: Gateway, people: str, it_database: str
) -> None:
    """ts_rewrite(tsquery, text) runs the SELECT in its text: the rewriter never saw the
    column references in it, so they read clear values (``'example.com' & 'jane.doe'``)."""
    leaks = [
        f"select ts_rewrite('a'::tsquery, 'select ''a''::tsquery, to_tsquery(''simple'', "
        f"replace(email, ''@'', '' & '')) from {people}')",
        f"select ts_rewrite('a'::tsquery, 'select ''a''::tsquery, to_tsquery(''simple'', "
        f"translate(card, '' '', ''-'')) from {people}')",
        f"select pg_catalog.ts_rewrite('a'::tsquery, 'select ''a''::tsquery, "
        f"to_tsquery(''simple'', replace(iban, ''DE'', ''x & ''))  from {people}')",
    ]
    with _agent(gw) as conn:
        for sql in leaks:
            message = _refused(conn, sql, "ts_rewrite")
            _no_clear(message)
        # The three-tsquery form runs no SQL, but the name is refused whole (fail closed).
        _refused(conn, "select ts_rewrite('a'::tsquery, 'a'::tsquery, 'b'::tsquery)", "ts_rewrite")
    # ts_rewrite is admin for everyone since attack14 (its text runs as SQL), so what
    # the agent would have read is shown by PostgreSQL directly.
    with admin_conn(it_database) as conn:
        clear = conn.execute(leaks[0]).fetchone()
    assert clear is not None and "jane.doe" in clear[0]


def _pseudonym(ipad: bytes, opad: bytes, value: str) -> str:
    inner = hashlib.sha256(ipad + ("pseudonym" + value).encode()).digest()
    return "tok_" + hashlib.sha256(opad + inner).hexdigest()[:12]


def test_masking_key_is_not_readable_through_search_path(gw: Gateway, people: str) -> None:
    """``SET search_path = wardgate_mask`` then ``TABLE key``: the key of the pseudonyms,
    with which an agent computes the pseudonym of any guess offline (a dictionary
    attack on IBANs, phone numbers, SSNs). The qualified name was refused already."""
    with _agent(gw) as conn:
        conn.execute("set search_path = wardgate_mask, public")
        for sql in ("select * from key", "table key", "select ipad, opad from key k"):
            _no_clear(_refused(conn, sql, "wardgate_mask"))
        conn.execute("reset search_path")
        _refused(conn, "select * from wardgate_mask.key", "wardgate_mask")
        tokens = conn.execute(f"select iban from {people} order by id").fetchall()
    # The attack it stops: with the key, a guess's pseudonym matches the agent's rows.
    with psycopg.connect(gw.dsn("reviewer"), autocommit=True) as conn:
        key = conn.execute("select ipad, opad from wardgate_mask.key").fetchone()
    assert key is not None
    assert tokens[0][0] == _pseudonym(bytes(key[0]), bytes(key[1]), ROWS[0][4])


def test_pg_stat_activity_query_under_another_name(gw: Gateway, people: str) -> None:
    """``pg_stat_activity a(c1, ..., c20, q)`` renames the query column: ``q`` was not
    recognised as the query, so other sessions' query texts (their literals) came back."""
    cols = ", ".join(f"c{i}" for i in range(1, 21))
    with psycopg.connect(gw.dsn("reviewer"), autocommit=True) as other:
        other.execute(f"select id from {people} where ssn = {ROWS[0][5]}")
        with _agent(gw) as conn:
            for sql in (
                f"select q from pg_stat_activity a({cols}, q) where q <> ''",
                f"select * from (select q from pg_catalog.pg_stat_activity a({cols}, q)) s",
            ):
                _no_clear(_refused(conn, sql, "pg_stat_activity"))
            rows = conn.execute("select query from pg_stat_activity where query <> ''").fetchall()
    _no_clear(rows)


def test_function_in_from_sees_the_tables_before_it_without_lateral(
    gw: Gateway, people: str
) -> None:
    """A function in FROM may refer to the items before it without LATERAL (PostgreSQL
    reads it as implicitly lateral): its column references were resolved only against
    the outer queries, so ``email`` there went unmasked (``jane.doe``, ``example.com``)."""
    with _agent(gw) as conn:
        got = [
            conn.execute(sql).fetchall()
            for sql in (
                f"select x from {people}, regexp_split_to_table(email, '@') x",
                f"select x from {people} p, regexp_split_to_table(p.card, ' ') x",
                f"select x from {people} join regexp_split_to_table(iban, '') x on true",
                f"select x from {people}, rows from (regexp_split_to_table(email, '[.@]')) x",
                f"select (select string_agg(x, '|') from {people}, regexp_split_to_table("
                "email, '@') x)",
            )
        ]
    _no_clear(got)
    parts = {v for rows in got for row in rows for v in row}
    assert not parts & {"jane.doe", "example.com", "4111", "jane", "DE89370400440532013000"}
    assert "j****" in parts  # masked values, split


def test_a_child_table_read_directly_is_masked_like_its_parent(gw: Gateway, people: str) -> None:
    """The rule names the parent (``*.people.email``); a partition or inheritance child
    holds the parent's rows, and read by its own name it came back clear."""
    with _agent(gw) as conn:
        direct = conn.execute(
            f"select regexp_split_to_table(email, '@'), translate(card, ' ', '-'), iban "
            f"from {people}_kid"
        ).fetchall()
        star = conn.execute(f"select * from {people}_kid").fetchall()
        parent = conn.execute(f"select email from {people} where id > 3").fetchall()
    blob = repr([direct, star])
    for clear in ("kid.secret", KID[2], "6011-0009", KID[3], KID[4]):
        assert clear not in blob, blob
    assert star[0][2] == parent[0][0] == "k****@*****.com"


def test_a_column_added_since_the_snapshot_is_not_read_through_star_or_whole_rows(
    gw: Gateway, people: str, it_database: str
) -> None:
    """The gateway's catalog snapshot lives up to 30 s. A column a rule masks added in
    that window (``email`` on a table that had no masked column) was not masked: ``*``
    was left to the server and whole rows were allowed, and a transformation of them
    (the result-layer detector sees only its pieces) came back clear."""
    late = f"late_{people}.{people}"
    with _agent(gw) as conn:
        assert conn.execute(f"select count(*) from {late}").fetchone() == (0,)  # snapshot
        with admin_conn(it_database) as admin:
            admin.execute(f"alter table {late} add column email text")
            admin.execute(f"insert into {late} values (1, 'Jane', %s)", (ROWS[0][2],))
        got = []
        for sql in (
            f"select (select string_agg(x, '|') from regexp_split_to_table(t::text, '@') x) "
            f"from {late} t",
            f"select regexp_split_to_table(s.email, '@') from (select * from {late}) s",
            f"select regexp_split_to_table(s.email, '@') from (select t.* from {late} t) s",
            f"select to_jsonb(t)::text from {late} t",
        ):
            try:
                got.append(conn.execute(sql).fetchall())
            except psycopg.Error as exc:  # refused, or the column left out of *
                got.append(str(exc))
        with conn.cursor().copy(f"copy {late} to stdout") as copy:
            copied = b"".join(bytes(chunk) for chunk in copy).decode()
        got.append(copied)
        assert copied == "1\tJane\n"  # the snapshot's columns; the new one left out
    blob = repr(got)
    assert "jane.doe" not in blob and ROWS[0][2] not in blob, blob


def test_functional_notation_on_a_whole_row(gw: Gateway, people: str) -> None:
    """``p.row_to_json`` is ``row_to_json(p)`` for PostgreSQL (a name that is no column
    of p is tried as a function of the whole row): the clear row came back."""
    cols = "q.row_to_json::text"
    with _agent(gw) as conn:
        for sql in (
            f"select p.row_to_json::text from {people} p",
            f"select regexp_split_to_table(p.row_to_json::text, '[@,]') from {people} p",
            f"select {people}.to_jsonb::text from {people}",
            f"select public.{people}.row_to_json::text from public.{people}",
            f"select {cols} from pg_stat_activity q",
        ):
            _no_clear(_refused(conn, sql, "whole-row"))
        # A column of the snapshot is no function call: still masked, not refused.
        assert conn.execute(f"select p.email from {people} p where p.id = 1").fetchone() == (
            "j****@*****.com",
        )
        assert conn.execute("select q.pid from pg_stat_activity q limit 1").fetchone()


def test_listen_is_refused_notify_payloads_are_not_masked(
    gw: Gateway, people: str, it_database: str
) -> None:
    """A trigger's ``pg_notify('changes', row_to_json(NEW)::text)`` (or any other
    session's NOTIFY) reached a LISTENing agent as it was: clear rows."""
    with _agent(gw) as conn:
        _refused(conn, "listen people_changes", "LISTEN")
        _refused(conn, 'LISTEN "people_changes"', "LISTEN")
        with admin_conn(it_database) as admin:
            admin.execute(
                "select pg_notify('people_changes', (select row_to_json(p)::text "
                f"from {people} p where id = 1))"
            )
        conn.execute("select 1")
        payloads = [n.payload for n in conn.notifies(timeout=0.5)]
    assert payloads == []
