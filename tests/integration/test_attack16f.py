"""Attacks on the second layer's skip of columns the database masked (issue 16): as the
`agent` principal (role reader: DDL and admin blocked, so the skip applies), try to get
a clear email, phone or card number into a result position the gateway takes for a
masked one. Two routes leaked before the fix on this branch (the raw-protocol tests at
the end): SQL CLOSE/DECLARE and DEALLOCATE/PREPARE run through the extended protocol
changed a name the session model did not follow, so an Execute ran another query than
the one whose masked positions the gateway applied. The other tests are routes tried
that did not leak; they stay as regressions.
"""

from __future__ import annotations

import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, running_gateway
from tests.integration.test_asyncpg import with_conn
from tests.integration.test_mask_layers import MASKING
from tests.integration.test_psql import psql
from tests.integration.wire_fuzz import _recv_exact, pg_login
from wardgate.postgres.codec import build

EMAIL = "jane.doe@example.com"
NOTE_EMAIL = "omar.qureshi@example.org"
CARD = "4111 1111 1111 1111"
NOTES = f"write to {NOTE_EMAIL} card {CARD}"
PHONE = "+44 20 7123 4567"
CLEAR = (EMAIL, NOTE_EMAIL, CARD, "4111111111111111", PHONE, "7123 4567")


@pytest.fixture(scope="module")
def people(it_database: str) -> str:
    table = f"atk_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(
            f"create table {table} (id int primary key, email text, notes text, phone text)"
        )
        conn.execute(f"insert into {table} values (1, %s, %s, %s)", (EMAIL, NOTES, PHONE))
        # The same table name in another schema, its columns in another order: a
        # statement re-analysed under another search_path would read these.
        conn.execute(f"create schema if not exists {table}_s")
        conn.execute(f"create table {table}_s.{table} (notes text, email text, id int)")
        conn.execute(f"insert into {table}_s.{table} values (%s, %s, 1)", (NOTES, EMAIL))
        conn.execute(f"grant usage on schema {table}_s to public")
        conn.execute(f"grant select on {table}_s.{table} to public")
    return table


@pytest.fixture(scope="module")
def gw(
    it_database: str, people: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    config = base_config(it_database) + MASKING.replace("{t}", people)
    with running_gateway(tmp_path_factory.mktemp("attack16f"), config) as gateway:
        yield gateway


def _leaks(values: Any) -> list[str]:
    text = repr(values)
    return [c for c in CLEAR if c in text]


def test_a_prepared_statement_read_again_under_another_search_path(
    gw: Gateway, people: str
) -> None:
    """Prepared (server side) while the masked column is first, executed again after
    search_path points at a same-named table whose first column is the clear notes:
    the server would re-analyse an unqualified name. The gateway pins the relation's
    schema in the rewrite, or refuses/scans."""
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        sql = f"select email, notes from {people}"
        rows = [conn.execute(sql, prepare=True).fetchall() for _ in range(2)]
        try:
            conn.execute(f"set search_path = {people}_s, public")
            rows.append(conn.execute(sql, prepare=True).fetchall())
            rows.append(conn.execute(f"select notes, email from {people}").fetchall())
        except psycopg.Error as e:
            rows.append([(str(e),)])
    assert not _leaks(rows), rows


def test_asyncpg_prepared_statement_after_search_path_change(gw: Gateway, people: str) -> None:
    async def run(conn: asyncpg.Connection) -> list[Any]:
        out: list[Any] = []
        stmt = await conn.prepare(f"select email, notes from {people}")
        out.append(await stmt.fetch())
        await conn.execute(f"set search_path = {people}_s, public")
        try:
            out.append(await stmt.fetch())
        except asyncpg.PostgresError as e:
            out.append(str(e))
        out.append(await conn.fetch(f"select notes, email from {people}"))
        return out

    rows = with_conn(gw, run, principal="agent")
    assert not _leaks([tuple(r) for rs in rows if not isinstance(rs, str) for r in rs]), rows


def test_a_cursor_and_a_prepared_execute_are_scanned(gw: Gateway, people: str) -> None:
    """Routes whose result is not the SELECT's text: FETCH from a cursor, EXECUTE of a
    PREPAREd statement, COPY of a query: none takes positions from the text."""
    with psycopg.connect(gw.dsn("agent")) as conn:
        conn.execute(f"declare c cursor for select notes, email from {people}")
        rows = conn.execute("fetch all from c").fetchall()
        conn.execute(f"prepare p as select notes, email from {people}")
        rows += conn.execute("execute p").fetchall()
        conn.rollback()
    out = psql(
        gw,
        "-A",
        "-t",
        "-c",
        f"copy (select notes, email from {people}) to stdout",
        principal="agent",
    ).stdout
    assert not _leaks((rows, out)), (rows, out)


def test_user_written_masking_calls_are_refused(gw: Gateway, people: str) -> None:
    """A call that looks exactly like the rewriter's, written by the agent around the
    clear notes column: refused (and its value would be a mask anyway)."""
    sql = (
        "select CAST(wardgate_mask.partial(CAST(notes AS pg_catalog.text)) AS text), notes "
        f"from {people}"
    )
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        with pytest.raises(psycopg.Error):
            conn.execute(sql).fetchall()


@pytest.mark.parametrize(
    "sql",
    [
        # PostgreSQL 15 reads 0x1F as ``0 AS x1F``; libpg_query of 17 as 31.
        "select email, 0x1F, notes from {t}",
        "select email, 1_000, notes from {t}",
        # A set-returning function beside the masked column: more rows, same columns.
        "select email, generate_series(1, 2), notes from {t}",
        "select email, unnest(array[notes, phone]) from {t}",
        # Same column count, the clear value where the masked one was in another branch.
        "select email, notes from {t} union all select notes, email from {t}",
        "select (select notes from {t} limit 1) as email, email as notes from {t}",
        "select email, notes from (select notes as email, email as notes from {t}) {t}",
        "with {t} as (select notes as email, phone as notes from {t}) select email, notes from {t}",
    ],
)
def test_shapes_that_might_misplace_positions(gw: Gateway, people: str, sql: str) -> None:
    text = sql.format(t=people)
    for prepare in (None, True):
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            try:
                rows: Any = conn.execute(text, prepare=prepare).fetchall()
            except psycopg.Error as e:
                rows = str(e)
        assert not _leaks(rows), (text, rows)
        out = psql(gw, "-A", "-t", "-c", text, principal="agent", check=False)
        assert not _leaks(out.stdout), (text, out.stdout)


# -- raw protocol: a named portal replaced behind the gateway's back -----------------


def _read(sock: socket.socket) -> tuple[bytes, bytes]:
    head = _recv_exact(sock, 5)
    (length,) = struct.unpack("!i", head[1:])
    return head[:1], _recv_exact(sock, length - 4)


def _until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        kind, body = _read(sock)
        out.append((kind, body))
        if kind == b"Z":
            return out


def _raw_session(gw: Gateway, batches: list[bytes]) -> list[list[tuple[bytes, bytes]]]:
    with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
        pg_login("agent", gw.token("agent"), "it")(sock)
        replies = []
        for batch in batches:
            sock.sendall(batch)
            replies.append(_until_ready(sock))
        return replies


def _no_clear_rows(replies: list[list[tuple[bytes, bytes]]], batch: int) -> None:
    rows = [body for kind, body in replies[batch] if kind == b"D"]
    errors = [body for r in replies for kind, body in r if kind == b"E"]
    assert not _leaks(rows), (rows, errors)


def _portal_swap(t: str, close_and_declare: list[str], first: str = "email") -> list[bytes]:
    """A transaction: portal "c" bound (protocol) to a statement whose first column is
    masked in the database; then "c" closed and DECLAREd again through the extended
    protocol over a query whose first column is the clear notes; then Execute "c"."""
    swap = b"".join(
        build.parse("", sql) + build.bind("", "") + build.execute("") for sql in close_and_declare
    )
    return [
        build.query("begin"),
        build.parse("s1", f"select {first}, notes from {t}")
        + build.describe("S", "s1")
        + build.bind("c", "s1")
        + build.sync(),
        swap + build.sync(),
        build.execute("c") + build.sync(),
        build.query("rollback"),
    ]


@pytest.mark.parametrize(
    "swap",
    [
        ["close c", "declare c cursor for select notes, email from {t}"],
        ["close all", "declare c cursor for select notes, email from {t}"],
    ],
)
def test_a_portal_closed_and_declared_again_through_the_extended_protocol(
    gw: Gateway, people: str, swap: list[str]
) -> None:
    replies = _raw_session(gw, _portal_swap(people, [s.format(t=people) for s in swap]))
    _no_clear_rows(replies, 3)


@pytest.mark.parametrize("drop", ["deallocate s1", "deallocate all"])
def test_a_statement_deallocated_and_prepared_again_through_the_extended_protocol(
    gw: Gateway, people: str, drop: str
) -> None:
    """Statement "s1" parsed (protocol) with its first column masked in the database;
    then DEALLOCATE and SQL PREPARE of "s1" over a query whose first column is the clear
    notes, both through the extended protocol; then Bind and Execute of "s1"."""
    swap = b"".join(
        build.parse("", sql) + build.bind("", "") + build.execute("")
        for sql in (drop, f"prepare s1 as select notes, email from {people}")
    )
    replies = _raw_session(
        gw,
        [
            build.parse("s1", f"select email, notes from {people}")
            + build.describe("S", "s1")
            + build.sync(),
            swap + build.sync(),
            build.bind("", "s1") + build.execute("") + build.sync(),
        ],
    )
    _no_clear_rows(replies, 2)


@pytest.mark.parametrize("first", ["id", "id::int2", "true", "now()"])
def test_a_statement_prepared_again_by_sql_is_not_planned_by_its_old_describe(
    gw: Gateway, people: str, first: str
) -> None:
    """Statement "s1" parsed and described with a second column no detection scans (an
    int4, a bool, a timestamp); then SQL DEALLOCATE and PREPARE of "s1" over a query
    whose second column is the clear notes; then Bind (no Describe) and Execute: the
    rows must not be planned by the old Describe's column types."""
    swap = b"".join(
        build.parse("", sql) + build.bind("", "") + build.execute("")
        for sql in ("deallocate s1", f"prepare s1 as select email, notes from {people}")
    )
    replies = _raw_session(
        gw,
        [
            build.parse("s1", f"select email, {first} from {people}")
            + build.describe("S", "s1")
            + build.sync(),
            swap + build.sync(),
            build.bind("", "s1") + build.execute("") + build.sync(),
        ],
    )
    _no_clear_rows(replies, 2)


@pytest.mark.parametrize("first", ["id", "true"])
def test_a_cursor_declared_again_is_not_planned_by_the_old_bind(
    gw: Gateway, people: str, first: str
) -> None:
    """Portal "c" bound to a statement described with a first column no detection scans
    (int4, bool); closed and DECLAREd again through the extended protocol over a query
    whose first column is the clear notes: Execute "c" is not planned by the old
    statement's Describe."""
    swap = ["close c", f"declare c cursor for select notes, email from {people}"]
    replies = _raw_session(gw, _portal_swap(people, swap, first))
    _no_clear_rows(replies, 3)


@pytest.mark.parametrize("other", ["id", "true"])
def test_pipelined_binds_of_the_unnamed_portal_keep_their_own_columns(
    gw: Gateway, people: str, other: str
) -> None:
    """Two statements prepared and described; then, in one pipeline, Bind "" to the
    first (clear notes in column 0), Execute, Bind "" to the second (an int4 or bool in
    column 0), Execute: the first Execute's rows are planned with the first statement's
    columns, not those of the Bind forwarded after it."""
    replies = _raw_session(
        gw,
        [
            build.parse("sa", f"select notes, email from {people}")
            + build.describe("S", "sa")
            + build.parse("sb", f"select {other}, email from {people}")
            + build.describe("S", "sb")
            + build.sync(),
            build.bind("", "sa")
            + build.execute("")
            + build.bind("", "sb")
            + build.execute("")
            + build.sync(),
        ],
    )
    _no_clear_rows(replies, 1)


@pytest.mark.parametrize("other", ["id", "true"])
def test_a_describe_answered_after_the_next_bind_is_not_used_for_it(
    gw: Gateway, people: str, other: str
) -> None:
    """Bind "" (int4 or bool in column 0), Describe P, Execute, then Bind "" to a
    statement with clear notes in column 0 and Execute, in one pipeline: the Describe's
    answer arrives after the second Bind was forwarded and must not plan its rows."""
    replies = _raw_session(
        gw,
        [
            build.parse("sa", f"select {other}, email from {people}")
            + build.parse("sb", f"select notes, email from {people}")
            + build.sync(),
            build.bind("", "sa")
            + build.describe("P", "")
            + build.execute("")
            + build.bind("", "sb")
            + build.execute("")
            + build.sync(),
        ],
    )
    _no_clear_rows(replies, 1)
