"""Casts, domains and operators that run user functions (issue 14), made outside the
gateway: the catalogue watch finds them and the read-only agent's statements that would
run them are refused; the target's write log proves nothing ran."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import (
    Gateway,
    admin_conn,
    base_config,
    make_gateway,
    scratch_database,
)

SETUP = """
create table wlog (what text);
create function wcast(int) returns mood language sql
  as $$ insert into wlog values ('cast'); select 'a'::mood $$;
create function wcheck(int) returns bool language sql
  as $$ insert into wlog values ('check'); select true $$;
create function wop(int, int) returns bool language sql
  as $$ insert into wlog values ('operator'); select true $$;
create cast (int as mood) with function wcast(int);
create domain posint as int check (wcheck(value));
create domain okint as int check (value > 0);
create operator === (function = wop, leftarg = int, rightarg = int);
"""
IMPLICIT = """
create type mood2 as enum ('a', 'b');
create function wcast2(mood2) returns text language sql
  as $$ insert into wlog values ('implicit'); select 'x' $$;
create cast (mood2 as text) with function wcast2(mood2) as implicit;
create table moods (m mood2);
insert into moods values ('a');
"""
REFUSED = (
    "select 5::mood",
    "select 5::posint",
    "select * from json_to_record('{\"a\": 5}') as r(a posint)",
    "select 1 === 2",
)


@pytest.fixture
def casts_db(pg_server: None) -> Iterator[str]:
    with scratch_database("wardgate_casts_") as name:
        with admin_conn(name) as conn:
            conn.execute("create type mood as enum ('a', 'b')")
            conn.execute(SETUP)
            # An extension's type and operators (citext's `=` lives in public): trusted.
            conn.execute("create extension citext")
            conn.execute("create table ci (c citext); insert into ci values ('Abc')")
        yield name


def _wait_for(gateway: Gateway, text: str) -> None:
    deadline = time.monotonic() + 45
    while text not in gateway.log:
        assert time.monotonic() < deadline, gateway.log[-3000:]
        time.sleep(0.2)


def _writes(db: str) -> int:
    with admin_conn(db) as admin:
        row = admin.execute("select count(*) from wlog").fetchone()
        assert row is not None
        return int(row[0])


def test_casts_domains_and_operators_that_write_are_refused(casts_db: str, tmp_path: Path) -> None:
    gateway = make_gateway(tmp_path / "gw", base_config(casts_db))
    gateway.start()
    try:
        _wait_for(gateway, "may run user functions")  # the watch looks at start
        with psycopg.connect(gateway.dsn("agent"), autocommit=True) as conn:
            for sql in REFUSED:
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="unknown_function"):
                    conn.execute(sql)
            # Built-in casts, a domain whose CHECK calls only built-ins, `=`: still reads.
            assert conn.execute("select 5::int, 5::okint, 1 = 1").fetchone() == (5, 5, True)
            # So are an extension's: citext's cast and its `=` (in public, not volatile).
            assert conn.execute("select c::text from ci where c = 'ABC'").fetchone() == ("Abc",)
            assert conn.execute("select 'x'::citext = 'X'").fetchone() == (True,)
        assert _writes(casts_db) == 0

        # Through the gateway, making a cast or an operator is an admin statement.
        with psycopg.connect(gateway.dsn("dev"), autocommit=True) as dev:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="create_cast"):
                dev.execute("create cast (int as mood) with function wcast(int) as implicit")

        # An IMPLICIT user cast may run in any expression: length(m) casts m to text.
        # after a DDL statement through the gateway the watch looks again at once.
        with admin_conn(casts_db) as admin:
            admin.execute(IMPLICIT)
        with psycopg.connect(gateway.dsn("dev"), autocommit=True) as dev:
            dev.execute("create temporary table casts_poke (a int)")
        _wait_for(gateway, "implicit or assignment user cast public.mood2 AS text")
        with psycopg.connect(gateway.dsn("agent"), autocommit=True) as conn:
            for sql in ("select length(m) from moods", "select 1"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="mood2"):
                    conn.execute(sql)
        assert _writes(casts_db) == 0
        assert "Drop the cast or make it explicit" in gateway.log
    finally:
        gateway.stop()
    # What was refused would have written: run directly, each one does.
    with admin_conn(casts_db) as admin:
        for sql in REFUSED:
            admin.execute(sql)
        admin.execute("select length(m) from moods")
    assert _writes(casts_db) == len(REFUSED) + 1
