"""The policy end to end: real clients, a real gateway, the real server.

A blocked statement gets SQLSTATE 42501 and never reaches PostgreSQL, whichever client
and wire protocol sends it: the data, read directly from the server afterwards, is
exactly what it was. Then defence in depth: a principal whose role only reads gets a
read-only session upstream, so a write the policy lets through by mistake (here a
function wrongly listed in ``safe_functions``) is refused by PostgreSQL itself with
SQLSTATE 25006, and no statement can turn that read-only mode off.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import errors

from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.integration.conftest import Gateway, admin_conn, make_gateway

ORDERS = [(1, 100), (2, 200), (3, 300)]
SECRETS = [(1, "s3cr3t"), (2, "hunter2")]
UNTOUCHED = {"pe_orders": ORDERS, "pe_secrets": SECRETS, "pe_log": []}

READ_ONLY = "25006"  # read_only_sql_transaction
BLOCKED = "42501"  # insufficient_privilege: every wardgate denial


def policy_config(database: str) -> str:
    return textwrap.dedent(
        f"""\
        groups: {{analysts: {{}}, engineers: {{}}}}
        principals:
          analyst: {{kind: agent, groups: [analysts], sponsor: lead}}
          lead: {{kind: user, groups: [engineers]}}
        connections:
          it:
            type: postgres
            upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {database}, user: {PG_USER}, tls: disable}}
            roles: {{analysts: read-only, engineers: engineer}}
        roles:
          read-only: {{read: allow, write: block, ddl: block, admin: block}}
          engineer: {{read: allow, write: allow, ddl: allow, admin: block}}
        # Wrongly listed: sneaky_write() inserts a row. The policy calls it a read; the
        # read-only upstream session must still stop it.
        safe_functions: [sneaky_write, public.sneaky_write]
        guardrails:
          - {{name: no-drop, match: {{sql: [drop, truncate]}}, verdict: block}}
          - name: where-required
            match: {{sql: [update, delete]}}
            condition: {{without_where: true}}
            verdict: block
          - name: agents-never-read-credentials
            match: {{tables: ["*.pe_secrets"], principal_kinds: [agent]}}
            verdict: block
        limits: {{login_failures: 50, login_window: 60s}}
        """
    )


@pytest.fixture(scope="module")
def policy_gateway(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("policy"), policy_config(it_database))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(autouse=True)
def shop(it_database: str) -> Iterator[str]:
    """The tables, rows and functions every test starts from, made directly on the server
    (recreated each time, so one test that leaks a write cannot spoil the next)."""
    with admin_conn(it_database) as conn:
        conn.execute("create table if not exists pe_orders (id int primary key, total int)")
        conn.execute("create table if not exists pe_secrets (id int primary key, value text)")
        conn.execute("create table if not exists pe_log (id serial primary key, note text)")
        conn.execute("truncate pe_orders, pe_secrets, pe_log restart identity")
        conn.cursor().executemany("insert into pe_orders values (%s, %s)", ORDERS)
        conn.cursor().executemany("insert into pe_secrets values (%s, %s)", SECRETS)
        conn.execute(
            """
            create or replace function sneaky_write() returns int language plpgsql as $$
            begin
                insert into pe_log (note) values ('sneaky');
                return 1;
            end $$
            """
        )
        # A user function that is not in safe_functions: judged a write.
        conn.execute(
            "create or replace function pe_echo(int) returns int language sql as 'select $1'"
        )
    yield it_database


def server_state(database: str) -> dict[str, list[tuple[Any, ...]] | None]:
    """Each table's rows, read directly from PostgreSQL (None: the table is gone)."""
    state: dict[str, list[tuple[Any, ...]] | None] = {}
    with admin_conn(database) as conn:
        for table in UNTOUCHED:
            row = conn.execute(
                "select to_regclass(%s) is not null", (f"public.{table}",)
            ).fetchone()
            if row is None or not row[0]:
                state[table] = None
            else:
                state[table] = conn.execute(f"select * from {table} order by 1").fetchall()
    return state


# -- running a statement with each client and protocol -----------------------------------

PSYCOPG_MODES = ["simple", "extended", "prepared"]
ASYNCPG_MODES = ["execute", "fetch", "prepare"]
CLIENT_MODES = [("psycopg", m) for m in PSYCOPG_MODES] + [("asyncpg", m) for m in ASYNCPG_MODES]


def psycopg_run(conn: psycopg.Connection[Any], sql: str, mode: str, params: Any = None) -> None:
    """simple: a Query message (psycopg uses it for text results without parameters);
    extended: unnamed Parse/Bind/Execute (binary results force it); prepared: a named Parse."""
    if mode == "simple":
        assert params is None
        conn.execute(sql, prepare=False)
    elif mode == "extended":
        conn.cursor(binary=True).execute(sql, params, prepare=False)
    else:
        assert mode == "prepared"
        conn.execute(sql, params, prepare=True)


async def asyncpg_run(conn: asyncpg.Connection, sql: str, mode: str, *args: Any) -> None:
    """execute without arguments: a Query message; with arguments, fetch and prepare: the
    extended protocol with named statements."""
    if mode == "execute":
        await conn.execute(sql, *args)
    elif mode == "fetch":
        await conn.fetch(sql, *args)
    else:
        assert mode == "prepare"
        stmt = await conn.prepare(sql)
        await stmt.fetch(*args)


def outcome(gw: Gateway, principal: str, client: str, mode: str, sql: str) -> tuple[str, str]:
    """(SQLSTATE or "ok", message) of running `sql`; the same connection must still work
    afterwards (a blocked statement ends nothing)."""
    if client == "psycopg":
        with psycopg.connect(gw.dsn(principal), autocommit=True) as conn:
            try:
                psycopg_run(conn, sql, mode)
                result = ("ok", "")
            except psycopg.Error as exc:
                result = (exc.sqlstate or "?", str(exc))
            assert conn.execute("select count(*) from pe_orders").fetchone() is not None
        return result

    async def main() -> tuple[str, str]:
        conn = await asyncpg.connect(gw.dsn(principal), timeout=10)
        try:
            try:
                await asyncio.wait_for(asyncpg_run(conn, sql, mode), 30)
                result = ("ok", "")
            except asyncpg.PostgresError as exc:
                result = (exc.sqlstate, str(exc))
            assert await conn.fetchval("select count(*) from pe_orders") is not None
            return result
        finally:
            await conn.close()

    return asyncio.run(main())


# -- blocked statements never reach the server ---------------------------------------------

BLOCKED_STATEMENTS = [
    # (principal, statement, a rule the refusal must name)
    ("lead", "drop table pe_orders", "guardrail:no-drop"),
    ("analyst", "drop table pe_orders", "guardrail:no-drop"),
    ("lead", "delete from pe_orders", "guardrail:where-required"),
    ("analyst", "delete from pe_orders", "role:read-only"),
    ("lead", "truncate pe_orders", "guardrail:no-drop"),
    (
        "analyst",
        "with d as (delete from pe_orders where id = 1 returning *) select * from d",
        "role:read-only",
    ),
    (
        "lead",
        "with d as (delete from pe_orders returning *) select count(*) from d",
        "guardrail:where-required",
    ),
    ("analyst", "update pe_orders set total = 0 where id = 1", "role:read-only"),
    ("analyst", "insert into pe_log (note) values ('x')", "role:read-only"),
    ("analyst", "select 1; drop table pe_orders", "guardrail:no-drop"),
    ("lead", "select count(*) from pe_orders; drop table pe_orders", "guardrail:no-drop"),
    ("lead", "/* harmless */ select 1 --\n; truncate pe_orders", "guardrail:no-drop"),
    ("analyst", "select * from pe_secrets", "guardrail:agents-never-read-credentials"),
    ("analyst", "select pe_echo(1)", "role:read-only"),
]


@pytest.mark.parametrize(("client", "mode"), CLIENT_MODES)
@pytest.mark.parametrize(("principal", "sql", "rule"), BLOCKED_STATEMENTS)
def test_a_blocked_statement_never_reaches_postgres(
    policy_gateway: Gateway,
    shop: str,
    client: str,
    mode: str,
    principal: str,
    sql: str,
    rule: str,
) -> None:
    sqlstate, message = outcome(policy_gateway, principal, client, mode, sql)
    assert sqlstate == BLOCKED, message
    assert "wardgate: blocked by" in message and rule in message, message
    assert server_state(shop) == UNTOUCHED


def test_blocked_statements_with_parameters_psycopg(policy_gateway: Gateway, shop: str) -> None:
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        for mode in ("extended", "prepared"):
            with pytest.raises(errors.InsufficientPrivilege, match="role:read-only"):
                psycopg_run(conn, "update pe_orders set total = %s where id = %s", mode, (0, 1))
            with pytest.raises(errors.InsufficientPrivilege, match="role:read-only"):
                psycopg_run(
                    conn,
                    "with d as (delete from pe_orders where id = %s returning *) select * from d",
                    mode,
                    (1,),
                )
            assert conn.execute("select total from pe_orders where id = %s", (1,)).fetchone() == (
                100,
            )
    with psycopg.connect(policy_gateway.dsn("lead"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="guardrail:where-required"):
            conn.execute("update pe_orders set total = %s", (0,))
    assert server_state(shop) == UNTOUCHED


def test_blocked_statements_with_parameters_asyncpg(policy_gateway: Gateway, shop: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(policy_gateway.dsn("analyst"), timeout=10)
        try:
            for mode in ASYNCPG_MODES:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="role:read-only"):
                    await asyncpg_run(
                        conn, "update pe_orders set total = $1 where id = $2", mode, 0, 1
                    )
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="role:read-only"):
                    await asyncpg_run(
                        conn,
                        "with d as (delete from pe_orders where id = $1 returning *) select * from d",
                        mode,
                        1,
                    )
            assert await conn.fetchval("select total from pe_orders where id = $1", 1) == 100
        finally:
            await conn.close()

    asyncio.run(main())
    assert server_state(shop) == UNTOUCHED


def test_allowed_statements_do_reach_postgres(policy_gateway: Gateway, shop: str) -> None:
    """The control: the same gateway lets through what the policy allows, so the blocks
    above are the policy, not a broken connection."""
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        assert conn.execute("select id, total from pe_orders order by id").fetchall() == ORDERS
    with psycopg.connect(policy_gateway.dsn("lead"), autocommit=True) as conn:
        assert conn.execute("select * from pe_secrets order by id").fetchall() == SECRETS
        conn.execute("update pe_orders set total = 101 where id = 1")
    assert server_state(shop)["pe_orders"] == [(1, 101), *ORDERS[1:]]


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("select value from pe_secrets where id = 1", "select value from pe_secrets where id = 2"),
        ("select pe_echo(1)", "select pe_echo(2)"),
    ],
)
def test_rules_on_tables_and_functions_hold_for_statements_differing_in_literals(
    policy_gateway: Gateway, first: str, second: str
) -> None:
    """The lead may run the first statement; the analyst may not run the second, which
    differs only in a literal (and so shares its fingerprint, and any cache keyed on it)."""
    with psycopg.connect(policy_gateway.dsn("lead"), autocommit=True) as conn:
        assert conn.execute(first).fetchone() is not None
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute(second)


# -- defence in depth: the read-only session ---------------------------------------------


def test_sneaky_write_really_writes(policy_gateway: Gateway, shop: str) -> None:
    """The control for what follows: in a session that may write, the function does."""
    with psycopg.connect(policy_gateway.dsn("lead"), autocommit=True) as conn:
        assert conn.execute("select sneaky_write()").fetchone() == (1,)
    assert server_state(shop)["pe_log"] == [(1, "sneaky")]


def test_only_the_read_only_principal_gets_a_read_only_session(policy_gateway: Gateway) -> None:
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        assert conn.info.parameter_status("default_transaction_read_only") in (None, "on")
    with psycopg.connect(policy_gateway.dsn("lead"), autocommit=True) as conn:
        assert conn.execute("show default_transaction_read_only").fetchone() == ("off",)


@pytest.mark.parametrize(("client", "mode"), CLIENT_MODES)
def test_a_write_the_policy_misjudges_is_refused_by_postgres(
    policy_gateway: Gateway, shop: str, client: str, mode: str
) -> None:
    sqlstate, message = outcome(policy_gateway, "analyst", client, mode, "select sneaky_write()")
    assert sqlstate == READ_ONLY, message
    assert "read-only transaction" in message
    assert server_state(shop) == UNTOUCHED


def test_the_read_only_session_holds_in_transactions(policy_gateway: Gateway, shop: str) -> None:
    # psycopg's own BEGIN (no autocommit).
    with psycopg.connect(policy_gateway.dsn("analyst")) as conn:
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("select sneaky_write()")
        conn.rollback()
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        for begin in ("begin", "start transaction isolation level serializable", "begin read only"):
            conn.execute(begin)
            with pytest.raises(errors.ReadOnlySqlTransaction):
                conn.execute("select sneaky_write()")
            conn.execute("rollback")
    assert server_state(shop) == UNTOUCHED


@pytest.mark.parametrize("reset", ["reset all", "discard all", "set session authorization default"])
def test_resetting_the_session_keeps_it_read_only(
    policy_gateway: Gateway, shop: str, reset: str
) -> None:
    """RESET ALL (and DISCARD ALL, which poolers send) go back to the session's start
    values: read-only must be one of them, not a SET the gateway sent afterwards."""
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        conn.execute(reset)
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("select sneaky_write()")
    assert server_state(shop) == UNTOUCHED


TURN_READ_ONLY_OFF = [
    "set default_transaction_read_only = off",
    "SET default_transaction_read_only TO false",
    "set session default_transaction_read_only = 'off'",
    "set default_transaction_read_only to default",
    "reset default_transaction_read_only",
    "set transaction_read_only = off",
    "set session characteristics as transaction read write",
    "select set_config('default_transaction_read_only', 'off', false)",
    "select set_config('transaction_read_only', 'off', true)",
    "begin read write",
    "start transaction read write",
    "begin isolation level read committed, read write",
    "set transaction read write",
    "begin; set transaction read write; select sneaky_write(); commit",
    "select 1; set default_transaction_read_only = off; select sneaky_write()",
]


@pytest.mark.parametrize("mode", PSYCOPG_MODES)
@pytest.mark.parametrize("sql", TURN_READ_ONLY_OFF)
def test_read_only_cannot_be_turned_off(
    policy_gateway: Gateway, shop: str, sql: str, mode: str
) -> None:
    # Several statements in one Parse (extended, prepared) are judged too: the gateway
    # answers 42501 before the server could refuse the string itself.
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="wardgate: blocked by"):
            psycopg_run(conn, sql, mode)
        # Whatever the client believes, the server session is as read-only as before.
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.execute("rollback")
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("select sneaky_write()")
    assert server_state(shop) == UNTOUCHED


def test_read_write_inside_an_open_transaction_is_blocked(
    policy_gateway: Gateway, shop: str
) -> None:
    with psycopg.connect(policy_gateway.dsn("analyst"), autocommit=True) as conn:
        conn.execute("begin")
        with pytest.raises(errors.InsufficientPrivilege, match="wardgate: blocked by"):
            conn.execute("set transaction read write")
        conn.execute("rollback")
        conn.execute("begin")
        with pytest.raises(errors.ReadOnlySqlTransaction):
            conn.execute("select sneaky_write()")
        conn.execute("rollback")
    assert server_state(shop) == UNTOUCHED


def test_read_only_cannot_be_turned_off_with_asyncpg(policy_gateway: Gateway, shop: str) -> None:
    async def main() -> None:
        conn = await asyncpg.connect(policy_gateway.dsn("analyst"), timeout=10)
        try:
            for sql in TURN_READ_ONLY_OFF:
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await conn.execute(sql)
                if conn.is_in_transaction():
                    await conn.execute("rollback")
            assert await conn.fetchval("show default_transaction_read_only") == "on"
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.fetchval("select sneaky_write()")
            await conn.execute("begin")
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("select sneaky_write()")
            await conn.execute("rollback")
        finally:
            await conn.close()

    asyncio.run(main())
    assert server_state(shop) == UNTOUCHED


def test_a_startup_option_cannot_turn_read_only_off(policy_gateway: Gateway) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(
            policy_gateway.dsn("analyst"), options="-c default_transaction_read_only=off"
        ).close()
