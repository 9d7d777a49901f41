"""Clients see through the gateway what they see directly, except where policy says no
(issue 20): the real backend pid, PostgreSQL's own syntax errors, no-op settings, setting
names bound as parameters, composite types, an unreadable encoding refused without
ending the session. Each test checks the server's state, not only the answer."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from tests.integration.conftest import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    Gateway,
    admin_conn,
    base_config,
    make_gateway,
    scratch_database,
)


def _connect(gateway: Gateway, **kwargs: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(gateway.dsn("dev"), autocommit=True, **kwargs)


def test_the_client_sees_the_real_backend_pid(gateway: Gateway) -> None:
    with _connect(gateway) as conn:
        row = conn.execute("select pg_backend_pid()").fetchone()
        assert row == (conn.info.backend_pid,)
        # A notification names the backend that sent it: this session's own pid.
        channel = f"wg_{uuid.uuid4().hex[:8]}"
        conn.execute(f"listen {channel}")
        conn.execute(f"notify {channel}, 'hi'")
        (note,) = list(conn.notifies(timeout=5, stop_after=1))
        assert (note.channel, note.payload, note.pid) == (channel, "hi", conn.info.backend_pid)
        with admin_conn() as admin:
            seen = admin.execute(
                "select count(*) from pg_stat_activity where pid = %s", (conn.info.backend_pid,)
            ).fetchone()
        assert seen == (1,)


def test_a_syntax_error_is_postgresqls_own(gateway: Gateway, it_database: str) -> None:
    bad = "select 1; selec 2"
    with admin_conn(it_database) as direct, pytest.raises(psycopg.errors.SyntaxError) as want:
        direct.execute(bad)
    with _connect(gateway) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as got:
            conn.execute(bad)
        assert got.value.sqlstate == "42601"
        assert got.value.diag.message_primary == want.value.diag.message_primary
        assert got.value.diag.statement_position == want.value.diag.statement_position == "11"
        # Extended protocol (Parse) and inside a transaction: the block is aborted, as it
        # would be directly, and rolls back.
        conn.autocommit = False
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("selec %s", (1,))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        conn.rollback()
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def test_setting_standard_conforming_strings_to_its_value_is_a_no_op(gateway: Gateway) -> None:
    with _connect(gateway) as conn:
        conn.execute("set standard_conforming_strings to on")
        conn.execute("set local standard_conforming_strings = true")
        assert conn.execute(
            "select set_config(%s, %s, false)", ("standard_conforming_strings", "on")
        ).fetchone() == ("on",)
        for change in (
            "set standard_conforming_strings to off",
            "reset standard_conforming_strings",
            "set standard_conforming_strings to default",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parser-setting"):
                conn.execute(change)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parser-setting"):
            conn.execute("select set_config(%s, %s, false)", ("standard_conforming_strings", "off"))
        assert conn.execute("show standard_conforming_strings").fetchone() == ("on",)


def test_set_config_with_a_bound_setting_name(gateway: Gateway) -> None:
    with _connect(gateway) as conn:
        name = f"wg-{uuid.uuid4().hex[:8]}"
        row = conn.execute("select set_config(%s, %s, false)", ("application_name", name))
        assert row.fetchone() == (name,)
        with admin_conn() as admin:
            seen = admin.execute(
                "select application_name from pg_stat_activity where pid = %s",
                (conn.info.backend_pid,),
            ).fetchone()
        assert seen == (name,)
        # The value decides: a setting only an admin may change stays refused.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "select set_config(%s, %s, false)", ("session_replication_role", "replica")
            )
        assert conn.execute("show session_replication_role").fetchone() == ("origin",)


def test_set_config_with_a_bound_value(gateway: Gateway) -> None:
    """How psycopg's own tests set client_encoding: the value is judged from Bind."""
    with _connect(gateway) as conn:
        conn.execute("select set_config('client_encoding', %s, false)", ["latin9"])
        assert conn.info.parameter_status("client_encoding") == "LATIN9"
        assert conn.info.encoding == "iso8859-15"
        assert conn.execute("select 'café'").fetchone() == ("café",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="unreadable-encoding"):
            conn.execute("select set_config('client_encoding', %s, false)", ["EUC_TW"])
        assert conn.execute("show client_encoding").fetchone() == ("LATIN9",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="parser-setting"):
            conn.execute("select set_config('standard_conforming_strings', %s, false)", ["off"])
        assert conn.execute("show standard_conforming_strings").fetchone() == ("on",)


def test_a_composite_type_can_be_created_and_used(gateway: Gateway, it_database: str) -> None:
    name = f"wg_pair_{uuid.uuid4().hex[:8]}"
    try:
        with _connect(gateway) as conn:
            conn.execute(f"create type {name} as (a int, b text)")
            row = conn.execute(f"select (row(1, 'x')::{name}).b").fetchone()
            assert row == ("x",)
        with admin_conn(it_database) as admin:
            kind = admin.execute(
                "select typtype from pg_type where typname = %s", (name,)
            ).fetchone()
        assert kind == ("c",)
    finally:
        with admin_conn(it_database) as admin:
            admin.execute(f"drop type if exists {name}")


def test_an_unreadable_encoding_is_refused_and_the_session_goes_on(gateway: Gateway) -> None:
    with _connect(gateway) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="unreadable-encoding"):
            conn.execute("set client_encoding to EUC_TW")
        assert not conn.closed
        assert conn.execute("show client_encoding").fetchone() == ("UTF8",)
        assert conn.execute("select 'still here'").fetchone() == ("still here",)


def test_a_failed_login_leaves_no_upstream_session(own_gateway: Gateway) -> None:
    """The gateway dials upstream while the client proves its token; a wrong token
    closes that dial, also once the guesses are slowed down."""
    app = f"wg-early-{uuid.uuid4().hex[:8]}"
    # A success first: the next login of this principal from this address dials before
    # the throttle is even read, so the first failure below exercises that path too.
    psycopg.connect(own_gateway.dsn("dev")).close()
    dsn = own_gateway.dsn("dev", application_name=app).replace(own_gateway.token("dev"), "wg_x")
    for _ in range(6):  # past the fixture's limit of 5: the sixth is answered slowly
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(dsn)
    with admin_conn() as admin:
        for _ in range(50):
            row = admin.execute(
                "select count(*) from pg_stat_activity where application_name = %s", (app,)
            ).fetchone()
            if row == (0,):
                break
            time.sleep(0.1)
    assert row == (0,)
    # The guesses slow the guesser, never the owner: the right token still works.
    psycopg.connect(own_gateway.dsn("dev")).close()


def test_client_min_messages_passes_at_startup(gateway: Gateway) -> None:
    """asyncpg's ``server_settings`` (startup parameters) and libpq's ``options`` may set
    which notices the server sends: it changes nothing the gate reads."""

    async def main() -> tuple[str, str]:
        conn = await asyncpg.connect(
            gateway.dsn("dev"), server_settings={"client_min_messages": "error"}, timeout=10
        )
        try:
            shown = await conn.fetchval("show client_min_messages")
            source = await conn.fetchval(
                "select source from pg_settings where name = 'client_min_messages'"
            )
            return shown, source
        finally:
            await conn.close()

    assert asyncio.run(main()) == ("error", "client")
    with _connect(gateway, options="-c client_min_messages=warning") as conn:
        assert conn.execute("show client_min_messages").fetchone() == ("warning",)


def _sessions(database: str) -> int:
    with admin_conn() as admin:
        row = admin.execute(
            "select coalesce(sessions, 0) from pg_stat_database where datname = %s", (database,)
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_for(check: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_ddl_in_one_database_keeps_the_catalog_watch_off_the_others(
    it_database: str, tmp_path: Path
) -> None:
    """After DDL the gateway looks at the catalog again (catalog_watch.py) with its own
    session, in that database only: a session it opened in another one would make a
    client's DROP DATABASE of that one fail ("being accessed by other users"), as
    asyncpg's suite found."""
    with scratch_database("wardgate_other_") as other:
        extra = f"""\
            other:
              type: postgres
              upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {other}, user: {PG_USER}, tls: disable}}
              roles: {{engineers: engineer}}
            """
        gw = make_gateway(tmp_path, base_config(it_database, extra))
        gw.start()
        try:
            _wait_for(lambda: _sessions(other) >= 1)  # the look every connection gets at start
            before, before_it = _sessions(other), _sessions(it_database)
            name = f"wg_watch_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
                conn.execute(f"create table {name} (a int)")
                conn.execute(f"alter table {name} add column b int")
            # The client's session and at least one look of the watch's, in it_database.
            _wait_for(lambda: _sessions(it_database) >= before_it + 2)
            time.sleep(1)
            assert _sessions(other) == before
            with admin_conn(it_database) as admin:
                admin.execute(f"drop table {name}")
        finally:
            gw.stop()


def test_a_terminated_backend_is_one_fatal_error_as_directly(gateway: Gateway) -> None:
    """pg_terminate_backend on a client's session: the client gets the server's FATAL
    and the connection ends, nothing more. A second error from the gateway made
    psycopg's next statement fail with InternalError ("received 2 results from command
    'BEGIN'") instead of OperationalError (psycopg_pool's test_connect_no_check)."""
    app = f"wg-term-{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(gateway.dsn("dev", application_name=app))  # not autocommit: BEGIN
    try:
        pid = conn.info.backend_pid
        conn.rollback()
        with admin_conn() as admin:
            assert admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            _wait_for(
                lambda: (
                    admin.execute(
                        "select count(*) from pg_stat_activity where pid = %s", (pid,)
                    ).fetchone()
                    == (0,)
                )
            )
        time.sleep(0.5)  # the FATAL and the close have reached the client's socket
        with pytest.raises(psycopg.OperationalError) as info:
            conn.execute("select 2")
        assert not isinstance(info.value, psycopg.InternalError)
        assert conn.closed
    finally:
        conn.close()


def test_a_terminated_pool_connection_is_released_as_directly(gateway: Gateway) -> None:
    """asyncpg's test_pool_remote_close: a pooled connection whose backend is terminated
    while it is held must be seen closed before the pool resets it on release (0.2 s
    later). The gateway closes the client right after the server's FATAL, before it
    records the session's end (which took 0.24 s under load)."""

    async def main() -> tuple[int, int]:
        pool = await asyncpg.create_pool(gateway.dsn("dev"), min_size=1, max_size=1)
        try:
            got_pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

            async def worker() -> None:
                async with pool.acquire() as conn:
                    got_pid.set_result(await conn.fetchval("select pg_backend_pid()"))
                    await asyncio.sleep(0.2)

            task = asyncio.create_task(worker())
            pid = await got_pid
            with admin_conn() as admin:
                admin.execute("select pg_terminate_backend(%s)", (pid,))
            await task  # raised "cannot switch to state 15" through the gateway before
            async with pool.acquire(timeout=5) as conn:
                return pid, int(await conn.fetchval("select pg_backend_pid()"))
        finally:
            await pool.close()

    old, new = asyncio.run(main())
    assert old != new  # the pool replaced the terminated connection
    with admin_conn() as admin:
        alive = admin.execute(
            "select count(*) from pg_stat_activity where pid = any(%s)", ([old, new],)
        ).fetchone()
    assert alive == (0,)
