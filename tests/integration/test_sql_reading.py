"""The gateway must read SQL exactly as the server does, or refuse to go on.

pglast reads strings with standard_conforming_strings on. With it off, a backslash
escapes a quote, so `'a\\'' ; DROP TABLE t; -- '` is one string to the gateway and
two statements to the server. Changing the setting is blocked for every role, and a
server that reports it off (a database or role default, or any route the gateway did
not see) ends the session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.integration.conftest import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    Gateway,
    admin_conn,
    base_config,
    make_gateway,
)


@pytest.mark.parametrize(
    "sql",
    [
        "set standard_conforming_strings = off",
        "set local standard_conforming_strings to off",
        "reset standard_conforming_strings",
        "select set_config('standard_conforming_strings', 'off', false)",
        "select set_config(name, 'off', false) from pg_settings where name like 'standard_c%'",
    ],
)
def test_changing_how_strings_are_read_is_blocked_for_everyone(gateway: Gateway, sql: str) -> None:
    with psycopg.connect(gateway.dsn("dev"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="parser-setting"):
            conn.execute(sql)
        assert conn.execute("show standard_conforming_strings").fetchone() == ("on",)


@pytest.fixture
def scs_off_gateway(it_database: str, tmp_path: Path) -> Iterator[Gateway]:
    db = f"wardgate_scs_{uuid.uuid4().hex[:8]}"
    with admin_conn() as conn:
        conn.execute(f'create database "{db}"')
        conn.execute(f'alter database "{db}" set standard_conforming_strings = off')
    extra = f"""\
        scs_off:
          type: postgres
          upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {db}, user: {PG_USER}, tls: disable}}
          roles: {{engineers: engineer}}
        """
    gw = make_gateway(tmp_path / "gw", base_config(it_database, extra))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        with admin_conn() as conn:
            conn.execute(f'drop database if exists "{db}" with (force)')


def test_a_server_reading_strings_the_old_way_is_refused(scs_off_gateway: Gateway) -> None:
    with pytest.raises(psycopg.OperationalError, match="standard_conforming_strings") as info:
        psycopg.connect(scs_off_gateway.dsn("dev", connection="scs_off"))
    assert "ALTER ROLE" in str(info.value)  # the hint says how to fix it
