"""The gateway's own queries against the real PostgreSQL: the internal client, impact
previews that leave nothing behind, and proposals that commit everything or nothing."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import admin_conn, base_config
from wardgate.config import Config, parse_config
from wardgate.policy.sql import classify
from wardgate.postgres.internal import CATALOG_READER, InternalQueryFailed, internal_session
from wardgate.postgres.preview import impact_preview
from wardgate.postgres.proposal import run_proposal
from wardgate.store.db import Store
from wardgate.vault.secrets import Vault

pytestmark = pytest.mark.integration


@dataclass
class _Services:
    config: Config
    vault: Vault


@pytest.fixture(scope="module")
def services(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Services]:
    path = tmp_path_factory.mktemp("internal") / "wardgate.yaml"
    config = parse_config(base_config(it_database), Path(path))
    store = Store.open("sqlite://")
    yield _Services(config, Vault(store, os.urandom(32)))
    store.dispose()


@pytest.fixture
def table(it_database: str) -> str:
    """A fresh table of 100 rows (id 1..100, x = id, no sequence)."""
    name = f"t_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {name} (id int primary key, x int)")
        conn.execute(f"insert into {name} select g, g from generate_series(1, 100) g")
        conn.execute(f"analyze {name}")
    return name


def _fetch(db: str, sql: str) -> list[tuple[Any, ...]]:
    with admin_conn(db) as conn:
        return conn.execute(sql).fetchall()


def _snapshot(db: str, table: str) -> list[tuple[Any, ...]]:
    return _fetch(db, f"select id, x from {table} order by id")


def _no_session_left(db: str, prefix: str) -> None:
    """The gateway's session is gone, not left idle (or busy) on the server."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = _fetch(
            db,
            "select count(*) from pg_stat_activity "
            f"where datname = current_database() and application_name like '{prefix}%'",
        )
        if rows[0][0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"a {prefix} session is still open")


def _preview(
    services: _Services, sql: str, mode: str, params: tuple[str | None, ...] = (), **kw: Any
) -> dict[str, Any]:
    timeout = kw.pop("timeout", 5.0)
    connection = kw.pop("connection", "it")
    return asyncio.run(
        impact_preview(services, connection, sql, params, classify(sql), mode, timeout)
    )


# -- the internal client ---------------------------------------------------------------------


def test_simple_gives_a_result_per_statement(services: _Services, it_database: str) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-test") as s:
            first, second, empty_tag = await s.simple(
                "select 1 as a, null::text as b, 'é' as c; select 2 where false; set search_path = public"
            )
            assert (first.command, first.count) == ("SELECT", 1)
            assert first.columns == ("a", "b", "c")
            assert first.rows == (("1", None, "é"),)
            assert first.ok and not first.truncated
            assert (second.command, second.count, second.rows) == ("SELECT", 0, ())
            assert (empty_tag.command, empty_tag.count) == ("SET", None)
            assert s.status == b"I"
            (blank,) = await s.simple("")
            assert blank.command == "" and blank.ok

    asyncio.run(go())
    _no_session_left(it_database, "wardgate-test")


def test_simple_stops_at_the_first_error(services: _Services) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-test") as s:
            results = await s.simple("select 1; select 1/0; select 3")
            assert len(results) == 2
            assert results[0].rows == (("1",),)
            error = results[1].error
            assert error is not None
            assert (error.sqlstate, error.message) == ("22012", "division by zero")
            # The session is still usable.
            (again,) = await s.simple("select 4")
            assert again.rows == (("4",),)

    asyncio.run(go())


def test_extended_binds_text_parameters(services: _Services) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-test") as s:
            result = await s.extended("select $1::int + 1 as n, $2::text is null", ["41", None])
            assert result.columns == ("n", "?column?")
            assert result.rows == (("42", "t"),)
            assert (result.command, result.count) == ("SELECT", 1)
            # Parameters are never spliced into the text.
            quoted = await s.extended("select $1::text", ["'; drop table x; --"])
            assert quoted.rows == (("'; drop table x; --",),)

    asyncio.run(go())


def test_extended_reports_errors_and_refuses_two_statements(services: _Services) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-test") as s:
            two = await s.extended("select 1; select 2")
            assert two.error is not None and two.error.sqlstate == "42601"
            missing = await s.extended("select * from no_such_table_here")
            assert missing.error is not None and missing.error.sqlstate == "42P01"
            bad = await s.extended("select $1::int", ["x"])
            assert bad.error is not None and bad.error.sqlstate == "22P02"
            ok = await s.extended("select 1")
            assert ok.rows == (("1",),)

    asyncio.run(go())


def test_settings_reach_the_server_session(services: _Services) -> None:
    """The catalogue readers' settings (JIT off: it compiled the watch's query on every
    look, about 0.5 s) go in the startup packet, with read_only's beside them."""

    async def go() -> None:
        settings = {**CATALOG_READER, "lock_timeout": "50"}
        async with internal_session(
            services, "it", application_name="wardgate-test", settings=settings, read_only=True
        ) as s:
            (jit, lock, ro) = await s.simple(
                "show jit; show lock_timeout; show transaction_read_only"
            )
            assert (jit.rows, lock.rows, ro.rows) == ((("off",),), (("50ms",),), (("on",),))

    asyncio.run(go())


def test_copy_from_stdin_is_refused_in_both_protocols(services: _Services, table: str) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-test") as s:
            (simple,) = await s.simple(f"copy {table} from stdin")
            assert simple.error is not None and simple.error.sqlstate == "57014"
            assert "not supported" in simple.error.message
            extended = await s.extended(f"copy {table} from stdin", timeout=5)
            assert extended.error is not None and extended.error.sqlstate == "57014"
            (after,) = await s.simple("select 1")
            assert after.rows == (("1",),) and s.status == b"I"

    asyncio.run(go())


@pytest.mark.parametrize(
    "setting", ["standard_conforming_strings = off", "client_encoding = 'LATIN1'"]
)
def test_a_setting_the_gateway_cannot_speak_ends_the_session(
    services: _Services, setting: str
) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-test") as s:
            with pytest.raises(InternalQueryFailed) as info:
                await s.simple(f"set {setting}")
            assert info.value.sqlstate == "0A000"
            with pytest.raises(InternalQueryFailed):
                await s.simple("select 1")

    asyncio.run(go())


def test_rows_are_capped_but_counted(services: _Services) -> None:
    async def go() -> None:
        async with internal_session(
            services, "it", application_name="wardgate-test", max_rows=5
        ) as s:
            (result,) = await s.simple("select g from generate_series(1, 1000) g")
            assert result.rows == tuple((str(i),) for i in range(1, 6))
            assert result.truncated and result.count == 1000
            none = await s.extended("select g from generate_series(1, 10) g", max_rows=0)
            assert none.rows == () and none.truncated and none.count == 10

    asyncio.run(go())


def test_a_slow_exchange_is_cancelled_and_the_session_given_up(
    services: _Services, it_database: str
) -> None:
    async def go() -> None:
        async with internal_session(services, "it", application_name="wardgate-slow") as s:
            started = time.monotonic()
            with pytest.raises(InternalQueryFailed) as info:
                await s.simple("select pg_sleep(30)", timeout=0.3)
            assert info.value.sqlstate == "57014"
            assert time.monotonic() - started < 5
            with pytest.raises(InternalQueryFailed):
                await s.simple("select 1")

    asyncio.run(go())
    # The server's statement was cancelled, not left sleeping for 30 s.
    _no_session_left(it_database, "wardgate-slow")


def test_unreachable_or_unknown_connections_raise_one_error(services: _Services) -> None:
    async def go(connection: str) -> InternalQueryFailed:
        with pytest.raises(InternalQueryFailed) as info:
            async with internal_session(services, connection, application_name="wardgate-test"):
                pass
        return info.value

    assert "not reachable" in asyncio.run(go("down")).reason
    assert "not configured" in asyncio.run(go("nope")).reason


# -- impact previews -------------------------------------------------------------------------


def test_preview_none(services: _Services) -> None:
    assert _preview(services, "update x set y = 1", "none") == {"kind": "none"}


def test_explain_estimates_an_update(services: _Services, it_database: str, table: str) -> None:
    before = _snapshot(it_database, table)
    preview = _preview(services, f"UPDATE {table} SET x = x + 1 WHERE id <= 50", "explain")
    assert preview["kind"] == "explain", preview
    assert 30 <= preview["estimated_rows"] <= 70
    assert preview["statement_timeout_ms"] == 5000
    assert f"Update on public.{table}" in preview["plan"]
    assert "Scan" in preview["plan"]
    assert _snapshot(it_database, table) == before
    _no_session_left(it_database, "wardgate-preview")


def test_explain_binds_parameters(services: _Services, it_database: str, table: str) -> None:
    sql = f"UPDATE {table} SET x = $1 WHERE id = $2"
    preview = _preview(services, sql, "explain", ("7", "3"))
    assert preview["kind"] == "explain", preview
    assert preview["estimated_rows"] == 1
    many = _preview(services, f"DELETE FROM {table} WHERE id > $1", "explain", ("10",))
    assert many["kind"] == "explain" and many["estimated_rows"] >= 60
    assert _snapshot(it_database, table)[2] == (3, 3)


def test_explain_is_only_for_changes(services: _Services, table: str) -> None:
    select = _preview(services, f"SELECT * FROM {table}", "explain")
    assert select["kind"] == "unavailable" and "INSERT, UPDATE, DELETE" in select["reason"]
    two = _preview(services, f"UPDATE {table} SET x = 1; UPDATE {table} SET x = 2", "explain")
    assert two["kind"] == "unavailable" and "one statement" in two["reason"]
    odd = _preview(services, f"UPDATE {table} SET x = 1", "guess")
    assert odd["kind"] == "unavailable"


def test_rollback_counts_exactly_and_changes_nothing(
    services: _Services, it_database: str, table: str
) -> None:
    before = _snapshot(it_database, table)
    preview = _preview(services, f"UPDATE {table} SET x = x * 2 WHERE x % 3 = 0", "rollback")
    assert preview["kind"] == "rollback", preview
    assert preview["affected_rows"] == 33
    assert isinstance(preview["estimated_rows"], int)
    deleted = _preview(services, f"DELETE FROM {table} WHERE id > $1", "rollback", ("90",))
    assert deleted["kind"] == "rollback" and deleted["affected_rows"] == 10
    inserted = _preview(
        services, f"INSERT INTO {table} SELECT id + 1000, x FROM {table} WHERE id <= 5", "rollback"
    )
    assert inserted["kind"] == "rollback" and inserted["affected_rows"] == 5
    assert _snapshot(it_database, table) == before
    _no_session_left(it_database, "wardgate-preview")


def test_rollback_refuses_user_functions_and_ddl(
    services: _Services, it_database: str, table: str
) -> None:
    with admin_conn(it_database) as conn:
        conn.execute(
            "create or replace function wg_bump(v int) returns int language sql as 'select v + 1'"
        )
    called = _preview(services, f"UPDATE {table} SET x = wg_bump(x)", "rollback")
    assert called["kind"] == "unavailable" and "wg_bump" in called["reason"]
    # The planner's estimate is still available for it.
    assert _preview(services, f"UPDATE {table} SET x = wg_bump(x)", "explain")["kind"] == "explain"
    for ddl in (f"ALTER TABLE {table} ADD COLUMN y int", f"DROP TABLE {table}"):
        refused = _preview(services, ddl, "rollback")
        assert refused["kind"] == "unavailable", refused
    cte = _preview(
        services,
        f"WITH d AS (DELETE FROM {table} WHERE id = 1 RETURNING id) "
        f"UPDATE {table} SET x = 0 WHERE id = 2",
        "rollback",
    )
    assert cte["kind"] == "unavailable"
    # The text that would run is judged itself, not only the classification handed in.
    plain = classify(f"UPDATE {table} SET x = 1")
    mismatch = asyncio.run(
        impact_preview(
            services, "it", f"UPDATE {table} SET x = wg_bump(x)", (), plain, "rollback", 5.0
        )
    )
    assert mismatch["kind"] == "unavailable" and "wg_bump" in mismatch["reason"]
    assert _fetch(it_database, f"select count(*), sum(x) from {table}") == [(100, 5050)]


def test_rollback_refuses_what_a_rollback_cannot_undo(
    services: _Services, it_database: str, table: str
) -> None:
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {table}_log (n int)")
        conn.execute(
            f"create function {table}_trg() returns trigger language plpgsql as "
            f"$$ begin insert into {table}_log values (1); return new; end $$"
        )
        conn.execute(
            f"create trigger {table}_audit after update on {table} "
            f"for each row execute function {table}_trg()"
        )
        conn.execute(f"create table {table}_serial (id serial primary key, v int)")
        conn.execute(f"create view {table}_view as select * from {table}")
        conn.execute(
            f"create table {table}_child (id int references {table}(id) on delete cascade)"
        )
        conn.execute(
            f"create trigger {table}_child_audit after delete on {table}_child "
            f"for each row execute function {table}_trg()"
        )
    triggered = _preview(services, f"UPDATE {table} SET x = 1 WHERE id = 1", "rollback")
    assert triggered["kind"] == "unavailable" and f"{table}_audit" in triggered["reason"]
    assert triggered["estimated_rows"] == 1  # planned before it was refused
    cascaded = _preview(services, f"DELETE FROM {table} WHERE id = 1", "rollback")
    assert cascaded["kind"] == "unavailable" and f"{table}_child_audit" in cascaded["reason"]
    serial = _preview(services, f"INSERT INTO {table}_serial (v) VALUES (1)", "rollback")
    assert serial["kind"] == "unavailable" and "sequence" in serial["reason"]
    view = _preview(services, f"UPDATE {table}_view SET x = 1", "rollback")
    assert view["kind"] == "unavailable", view
    assert _fetch(it_database, f"select count(*) from {table}_log") == [(0,)]
    assert _fetch(it_database, f"select last_value, is_called from {table}_serial_id_seq") == [
        (1, False)
    ]


def test_a_user_operator_does_not_hide_a_trigger_from_the_rollback_check(
    services: _Services, it_database: str, table: str
) -> None:
    """`public.||(name, text)` answering NULL matched `t.tgname || ' on '` exactly under
    the role's search_path, so the side-effects check saw no trigger and the statement
    ran with it (its sequence moved). The check resolves names in pg_catalog only."""
    with admin_conn(it_database) as conn:
        conn.execute(f"create sequence {table}_seq")
        conn.execute(
            f"create function {table}_trg() returns trigger language plpgsql as "
            f"$$ begin perform nextval('{table}_seq'); return new; end $$"
        )
        conn.execute(
            f"create trigger {table}_audit after update on {table} "
            f"for each row execute function {table}_trg()"
        )
        conn.execute(
            "create function public.wg_nullcat(a name, b text) returns text"
            " language sql immutable as $$ select null::text $$"
        )
        conn.execute(
            "create operator public.|| (leftarg = name, rightarg = text,"
            " function = public.wg_nullcat)"
        )
    try:
        preview = _preview(services, f"UPDATE {table} SET x = 1 WHERE id = 1", "rollback")
        assert preview["kind"] == "unavailable", preview
        assert f"{table}_audit" in preview["reason"], preview
        assert _fetch(it_database, f"select last_value, is_called from {table}_seq") == [(1, False)]
        # The statement itself still resolves under the client's path afterwards.
        plain = _preview(services, f"UPDATE {table} SET x = 1 WHERE id = 2", "explain")
        assert plain["kind"] == "explain", plain
    finally:
        with admin_conn(it_database) as conn:
            conn.execute("drop operator public.|| (name, text)")
            conn.execute("drop function public.wg_nullcat(name, text)")


def test_preview_statement_timeout_is_an_error_and_changes_nothing(
    services: _Services, it_database: str, table: str
) -> None:
    before = _snapshot(it_database, table)
    started = time.monotonic()
    sql = f"UPDATE {table} SET x = 0 WHERE pg_sleep(0.05) IS NOT NULL"  # 100 rows: ~5 s
    preview = _preview(services, sql, "rollback", timeout=0.2)
    assert preview == {"kind": "error", "reason": "canceling statement due to statement timeout"}
    assert time.monotonic() - started < 5
    assert _snapshot(it_database, table) == before
    _no_session_left(it_database, "wardgate-preview")


@pytest.mark.parametrize("mode", ["explain", "rollback"])
def test_a_preview_does_not_wait_on_a_migrations_lock(
    services: _Services, it_database: str, table: str, mode: str
) -> None:
    """A migration holds the table in ACCESS EXCLUSIVE: the preview gives up within its
    lock wait (0.5 s), not its statement_timeout, and says why; the migration goes on."""
    with admin_conn(it_database) as migration:
        migration.execute("begin")
        migration.execute(f"lock table {table} in access exclusive mode")
        started = time.monotonic()
        preview = _preview(services, f"UPDATE {table} SET x = 0 WHERE id = 1", mode, timeout=5)
        waited = time.monotonic() - started
        migration.execute(f"alter table {table} add column y int")
        migration.execute("commit")
    assert preview["kind"] == "error" and "holds a lock" in preview["reason"], preview
    assert waited < 3, waited
    _no_session_left(it_database, "wardgate-preview")


def test_preview_server_and_connection_errors_are_reported(
    services: _Services, it_database: str
) -> None:
    missing = _preview(services, "UPDATE no_such_table SET x = 1", "explain")
    assert missing == {"kind": "error", "reason": 'relation "no_such_table" does not exist'}
    down = _preview(services, "UPDATE t SET x = 1", "rollback", connection="down")
    assert down["kind"] == "error" and "not reachable" in down["reason"]
    gone = _preview(services, "UPDATE t SET x = 1", "explain", connection="nope")
    assert gone["kind"] == "error" and "not configured" in gone["reason"]


# -- proposals -------------------------------------------------------------------------------


def test_proposal_commits_every_statement(
    services: _Services, it_database: str, table: str
) -> None:
    ok, result = asyncio.run(
        run_proposal(
            services,
            "it",
            [
                f"UPDATE {table} SET x = 0 WHERE id <= 10",
                f"DELETE FROM {table} WHERE id > 90",
                f"INSERT INTO {table} VALUES (1000, 1)",
                f"ALTER TABLE {table} ADD COLUMN note text",
            ],
        )
    )
    assert ok and result["ok"] and result["committed"] and result["error"] is None
    assert result["statements"] == [
        {"index": 0, "command": "UPDATE", "rows": 10},
        {"index": 1, "command": "DELETE", "rows": 10},
        {"index": 2, "command": "INSERT", "rows": 1},
        {"index": 3, "command": "ALTER TABLE", "rows": None},
    ]
    assert _fetch(it_database, f"select count(*), count(*) filter (where x = 0) from {table}") == [
        (91, 10)
    ]
    assert _fetch(it_database, f"select count(note) from {table}") == [(0,)]
    _no_session_left(it_database, "wardgate-proposal")


def test_proposal_failing_statement_changes_nothing(
    services: _Services, it_database: str, table: str
) -> None:
    before = _snapshot(it_database, table)
    ok, result = asyncio.run(
        run_proposal(
            services,
            "it",
            [f"UPDATE {table} SET x = 0", f"INSERT INTO {table} VALUES (1, 1)", "SELECT 1"],
        )
    )
    assert not ok and not result["ok"] and not result["committed"]
    assert result["error"]["index"] == 1
    assert result["error"]["sqlstate"] == "23505"
    assert "statement 2 failed" in result["error"]["message"]
    assert result["statements"] == [{"index": 0, "command": "UPDATE", "rows": 100}]
    assert _snapshot(it_database, table) == before


def test_proposal_refuses_transaction_control_and_packed_entries(
    services: _Services, it_database: str, table: str
) -> None:
    before = _snapshot(it_database, table)
    cases = [
        ([f"UPDATE {table} SET x = 0", "COMMIT"], 1, "25001"),
        (["BEGIN", f"UPDATE {table} SET x = 0"], 0, "25001"),
        ([f"UPDATE {table} SET x = 0", "SAVEPOINT s"], 1, "25001"),
        ([f"UPDATE {table} SET x = 0; COMMIT"], 0, "42601"),
        ([f"UPDATE {table} SET x = 0", "  "], 1, "42601"),
        (["UPDAT nothing"], 0, "42601"),
        ([f"COPY {table} FROM STDIN"], 0, "0A000"),
        (["SET standard_conforming_strings = off"], 0, "0A000"),
        ([], None, "42601"),
    ]
    for statements, index, sqlstate in cases:
        ok, result = asyncio.run(run_proposal(services, "it", statements))
        assert not ok and not result["committed"] and result["statements"] == []
        assert (result["error"]["index"], result["error"]["sqlstate"]) == (index, sqlstate), (
            statements,
            result,
        )
    assert _snapshot(it_database, table) == before


def test_proposal_that_changes_the_encoding_is_stopped(
    services: _Services, it_database: str, table: str
) -> None:
    before = _snapshot(it_database, table)
    ok, result = asyncio.run(
        run_proposal(
            services,
            "it",
            [f"UPDATE {table} SET x = 0", "SET client_encoding = 'LATIN1'", "SELECT 1"],
        )
    )
    assert not ok and not result["committed"]
    assert (result["error"]["index"], result["error"]["sqlstate"]) == (1, "0A000")
    assert _snapshot(it_database, table) == before


def test_proposal_error_at_commit_is_reported(services: _Services, it_database: str) -> None:
    name = f"d_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {name} (id int unique deferrable initially deferred)")
    ok, result = asyncio.run(
        run_proposal(
            services, "it", [f"INSERT INTO {name} VALUES (1)", f"INSERT INTO {name} VALUES (1)"]
        )
    )
    assert not ok and not result["committed"]
    assert result["error"]["index"] is None and result["error"]["sqlstate"] == "23505"
    assert result["error"]["message"].startswith("COMMIT failed")
    assert len(result["statements"]) == 2
    assert _fetch(it_database, f"select count(*) from {name}") == [(0,)]


def test_proposal_time_limit_covers_the_whole_run(
    services: _Services, it_database: str, table: str
) -> None:
    before = _snapshot(it_database, table)
    started = time.monotonic()
    ok, result = asyncio.run(
        run_proposal(
            services,
            "it",
            # The statement lifts the server's limit: the gateway's own still holds.
            [f"UPDATE {table} SET x = 0", "SET statement_timeout = 0", "SELECT pg_sleep(30)"],
            timeout=0.5,
        )
    )
    assert time.monotonic() - started < 10
    assert not ok and not result["committed"]
    assert (result["error"]["index"], result["error"]["sqlstate"]) == (2, "57014")
    assert _snapshot(it_database, table) == before
    _no_session_left(it_database, "wardgate-proposal")


def test_proposal_on_an_unreachable_connection(services: _Services) -> None:
    ok, result = asyncio.run(run_proposal(services, "down", ["SELECT 1"], timeout=5))
    assert not ok and not result["committed"]
    assert result["error"]["sqlstate"] == "08006"
    assert "not reachable" in result["error"]["message"]
