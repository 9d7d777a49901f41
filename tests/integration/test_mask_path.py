"""Column masking by rewriting resolves unqualified table names through the session's
search_path (postgres/mask_path.py), through the real gateway and PostgreSQL with
psycopg and psql: a same-named table in another schema is masked or not as its rules
say, by the values returned, and no ``SET search_path`` trick reads a masked table in
clear. Also: LISTEN, and TABLESAMPLE over a column added since the snapshot."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest

from tests.integration.conftest import (
    Gateway,
    admin_conn,
    base_config,
    make_gateway,
    require_tool,
)
from tests.integration.test_mcp import body, call

PUBLIC = [(1, "jane.doe@example.com"), (2, "omar.qureshi@example.org")]
OTHER = [(1, "other.one@example.net"), (2, "other.two@example.net")]
SHADOW = [(1, "shadow.one@example.com"), (2, "shadow.two@example.com")]
CLEAR_PUBLIC = [e for _, e in PUBLIC]

MASKING = """
masking:
  rules:
    - name: agent-columns
      principal_kinds: [agent]
      connections: [it]
      columns: ["public.{t}.email", "public.{t}_c.secret2", "shadow_{t}.{t}_b.email"]
      strategy: partial
"""


@pytest.fixture(scope="module")
def t(it_database: str) -> str:
    """public.<t> (email masked), other_<t>.<t> (same name, no rule), public.<t>_b (no
    rule) and an empty schema shadow_<t> whose <t>_b a rule masks (created later)."""
    t = f"pp_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create schema other_{t}")
        conn.execute(f"create schema shadow_{t}")
        for table, rows in ((t, PUBLIC), (f"other_{t}.{t}", OTHER), (f"{t}_b", PUBLIC)):
            conn.execute(f"create table {table} (id int primary key, email text)")
            for row in rows:
                conn.execute(f"insert into {table} values (%s, %s)", row)
        conn.execute(f"create table {t}_c (id int primary key, note text)")
        conn.execute(f"insert into {t}_c values (1, 'a note')")
    return t


@pytest.fixture(scope="module")
def gw(it_database: str, t: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = make_gateway(
        tmp_path_factory.mktemp("maskpath"),
        base_config(it_database) + MASKING.replace("{t}", t),
    )
    gw.start()
    yield gw
    gw.stop()


def _agent(gw: Gateway, search_path: str | None = None) -> psycopg.Connection[Any]:
    params = {} if search_path is None else {"options": quote(f"-c search_path={search_path}")}
    return psycopg.connect(gw.dsn("agent", **params), autocommit=True)


def _emails(conn: psycopg.Connection[Any], sql: str) -> list[str]:
    return [str(r[0]) for r in conn.execute(sql.encode()).fetchall()]


def _masked(emails: list[str], clear: list[str]) -> None:
    assert len(emails) == len(clear)
    for value, original in zip(emails, clear, strict=True):
        assert value != original and "****@*****" in value, emails


def test_the_search_path_decides_which_table_is_masked(gw: Gateway, t: str) -> None:
    # The role's default ("$user", public): public.<t>, masked.
    with _agent(gw) as conn:
        _masked(_emails(conn, f"select email from {t} order by id"), CLEAR_PUBLIC)
        _masked(_emails(conn, f"select e.email from {t} e order by e.id"), CLEAR_PUBLIC)
    # other_<t> first: the server reads other_<t>.<t>, which no rule masks; * expands.
    with _agent(gw, f"other_{t},public") as conn:
        assert _emails(conn, f"select email from {t} order by id") == [e for _, e in OTHER]
        assert conn.execute(f"select * from {t} order by id".encode()).fetchall() == OTHER
        _masked(_emails(conn, f"select email from public.{t} order by id"), CLEAR_PUBLIC)
    with _agent(gw, f"public,other_{t}") as conn:
        _masked(_emails(conn, f"select email from {t} order by id"), CLEAR_PUBLIC)
        rows = conn.execute(f"select * from {t} order by id".encode()).fetchall()
        _masked([str(r[1]) for r in rows], CLEAR_PUBLIC)


def _psql(gw: Gateway, options: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = gw.token("agent")
    conninfo = (
        f"host=127.0.0.1 port={gw.port} user=agent dbname=it sslmode=disable "
        f"connect_timeout=10 options='{options}'"
    )
    return subprocess.run(
        [require_tool("psql"), "-X", "-w", "-A", "-t", "-d", conninfo, "-c", sql],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_psql_with_a_startup_search_path(gw: Gateway, t: str) -> None:
    out = _psql(gw, f"-c search_path=other_{t},public", f"select email from {t} order by id")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [e for _, e in OTHER]
    out = _psql(gw, f"-c search_path=public,other_{t}", f"select email from {t} order by id")
    assert out.returncode == 0, out.stderr
    _masked(out.stdout.split(), CLEAR_PUBLIC)


TRICKS = [
    # Started with other_<t> first; the server reads public.<t> after each of these.
    ("other_{t},public", ["set search_path = public"]),
    ("other_{t},public", ["set search_path = public; select 1"]),
    ("other_{t},public", ["select set_config('search_path', 'public', false)"]),
    ("other_{t},public", ["select set_config('search_' || 'path', 'public', false)"]),
    ("other_{t},public", ['set "SEARCH_PATH" = public']),
    ("other_{t},public", ['SET U&"search\\005fpath" = public']),
    ("other_{t},public", ["begin", "set local search_path = public"]),
    # Started with public: back to it, or a SET that is rolled back leaves it.
    (None, ["set search_path = other_{t}, public", "reset search_path"]),
    (None, ["set search_path = other_{t}, public", "set search_path to default"]),
    (None, ["set search_path = other_{t}, public", "discard all"]),
    (None, ["begin", "set search_path = other_{t}, public", "rollback"]),
    (None, ["begin", "set search_path = other_{t}, public", "select 1/0"]),
    (None, ["set search_path = other_{t}, public; select 1/0"]),
]


@pytest.mark.parametrize(("start", "statements"), TRICKS)
def test_set_search_path_tricks_cannot_unmask(
    gw: Gateway, t: str, start: str | None, statements: list[str]
) -> None:
    with _agent(gw, None if start is None else start.replace("{t}", t)) as conn:
        refused = False
        for sql in statements:
            try:
                conn.execute(sql.replace("{t}", t).encode())
            except psycopg.errors.DivisionByZero:
                pass
            except psycopg.errors.InsufficientPrivilege as exc:
                refused = "set_config" in str(exc) or "named at run time" in str(exc)
                assert refused, exc
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            conn.execute(b"rollback")
        server_path = conn.execute(b"show search_path").fetchone()
        assert server_path is not None
        assert server_path[0].startswith("other" if refused else ("public", '"$user"')), server_path
        if refused:
            return
        # Whatever the gateway believes, the server reads public.<t>: masked.
        _masked(_emails(conn, f"select email from {t} order by id"), CLEAR_PUBLIC)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            conn.execute(f"select * from {t}".encode())
        assert "several schemas" in str(info.value)


def test_set_and_select_in_one_pipeline(gw: Gateway, t: str) -> None:
    """The SET and the SELECT reach the server before any answer (extended protocol)."""
    with _agent(gw, f"other_{t},public") as conn:
        with conn.pipeline():
            conn.execute(b"set search_path = public")
            cur = conn.execute(f"select email from {t} order by id".encode())
        _masked([str(r[0]) for r in cur.fetchall()], CLEAR_PUBLIC)


def test_a_table_created_since_the_snapshot_in_a_schema_searched_first(
    gw: Gateway, t: str, it_database: str
) -> None:
    """shadow_<t>.<t>_b, created outside the gateway after its snapshot: with shadow_<t>
    first in the path the server reads it, and the rule naming it masks it, although
    the gateway's snapshot only knows public.<t>_b (no rule). Before the table exists
    the gateway masks public.<t>_b too (the stricter reading: it cannot know that no
    table is there by now); with public first, public.<t>_b is read in clear."""
    with _agent(gw, f"shadow_{t},public") as conn:
        _masked(_emails(conn, f"select email from {t}_b order by id"), CLEAR_PUBLIC)
        with admin_conn(it_database) as admin:
            admin.execute(f"create table shadow_{t}.{t}_b (id int primary key, email text)")
            for row in SHADOW:
                admin.execute(f"insert into shadow_{t}.{t}_b values (%s, %s)", row)
        _masked(_emails(conn, f"select email from {t}_b order by id"), [e for _, e in SHADOW])
    with _agent(gw, f"public,shadow_{t}") as conn:
        assert _emails(conn, f"select email from {t}_b order by id") == CLEAR_PUBLIC


def test_tablesample_over_a_column_added_since_the_snapshot(
    gw: Gateway, t: str, it_database: str
) -> None:
    """A column a rule names, added outside the gateway to a table with no masked column
    in the snapshot: TABLESAMPLE over the table was judged by the snapshot's masked
    columns (none) and read the new column in clear; now its columns resolve like the
    table's, so the new one is refused until the snapshot knows it."""
    with _agent(gw) as conn:
        assert _emails(conn, f"select note from {t}_c tablesample system (100)") == ["a note"]
        with admin_conn(it_database) as admin:
            admin.execute(f"alter table {t}_c add column secret2 text default 'clear-secret-2'")
        for sql in (
            f"select secret2 from {t}_c tablesample system (100)",
            f"select s.secret2 from {t}_c s tablesample bernoulli (100)",
            f"select * from {t}_c tablesample system (100)",
        ):
            try:
                rows = conn.execute(sql.encode()).fetchall()
            except psycopg.errors.InsufficientPrivilege as exc:
                assert "not in the gateway's catalog snapshot" in str(exc), exc
                continue
            # The snapshot was refreshed meanwhile: masked (redacted), or left out of *.
            assert "clear-secret-2" not in str(rows), rows


def test_listen_is_refused_and_no_notification_arrives(
    gw: Gateway, t: str, it_database: str
) -> None:
    """A principal under a column rule may not LISTEN (a NOTIFY payload is another
    session's text, often a whole row); a reviewer does, and receives it."""
    channel = f"ch_{t}"
    with (
        _agent(gw) as agent,
        psycopg.connect(gw.dsn("reviewer"), autocommit=True) as reviewer,
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            agent.execute(f"listen {channel}".encode())
        assert "LISTEN" in str(info.value)
        reviewer.execute(f"listen {channel}".encode())
        with admin_conn(it_database) as admin:
            admin.execute(
                f"select pg_notify('{channel}', (select row_to_json(p)::text from {t} p "
                "where id = 1))"
            )
        got = [n.payload for n in reviewer.notifies(timeout=5, stop_after=1)]
        assert got and CLEAR_PUBLIC[0] in got[0]  # the payload is the clear row
        agent.execute(b"select 1")
        assert [n.payload for n in agent.notifies(timeout=0.5)] == []


def test_a_default_search_path_changed_outside_the_gateway(
    gw: Gateway, t: str, it_database: str
) -> None:
    """The start value is the session's own (asked in it), not the catalog snapshot's
    copy of the defaults, which is up to 30 s old."""
    with _agent(gw) as conn:
        _masked(_emails(conn, f"select email from {t} order by id"), CLEAR_PUBLIC)
    with admin_conn(it_database) as admin:
        admin.execute(f"alter database {it_database} set search_path = other_{t}, public")
    try:
        with _agent(gw) as conn:
            assert _emails(conn, f"select email from {t} order by id") == [e for _, e in OTHER]
    finally:
        with admin_conn(it_database) as admin:
            admin.execute(f"alter database {it_database} reset search_path")
    with _agent(gw) as conn:
        _masked(_emails(conn, f"select email from {t} order by id"), CLEAR_PUBLIC)


def test_mcp_query_resolves_names_like_its_session(gw: Gateway, t: str, it_database: str) -> None:
    """The MCP ``query`` tool asks its own session's search_path: with the database's
    default putting other_<t> first, <t> is other_<t>.<t>, clear, and ``*`` expands; a
    ``SET search_path`` in the same call still masks public.<t>."""
    with admin_conn(it_database) as admin:
        admin.execute(f"alter database {it_database} set search_path = other_{t}, public")
    try:
        plain, star, switched = call(
            gw,
            "agent",
            ("query", {"connection": "it", "sql": f"select email from {t} order by id"}),
            ("query", {"connection": "it", "sql": f"select * from {t} order by id"}),
            (
                "query",
                {
                    "connection": "it",
                    "sql": f"set search_path = public; select email from {t} order by id",
                },
            ),
        )
    finally:
        with admin_conn(it_database) as admin:
            admin.execute(f"alter database {it_database} reset search_path")
    assert [r[0] for r in body(plain)["rows"]] == [e for _, e in OTHER]
    assert [tuple(r) for r in body(star)["rows"]] == [(str(i), e) for i, e in OTHER]
    _masked([r[0] for r in body(switched)["rows"]], CLEAR_PUBLIC)
