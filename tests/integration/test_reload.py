"""SIGHUP swaps the policy without dropping sessions; a broken file keeps the old one."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import PG_HOST, PG_PORT, PG_USER, Gateway, base_config, make_gateway


def _wait_for_log(gw: Gateway, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in gw.log:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the gateway log:\n{gw.log}")
        time.sleep(0.1)


def test_sighup_reloads_policy_inside_an_open_session(it_database: str, tmp_path: Path) -> None:
    gw = make_gateway(tmp_path, base_config(it_database))
    gw.start()
    try:
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
            conn.execute("create temp table reload_a (a int)")

            # A broken file is refused; the running policy stays.
            good = gw.config_path.read_text()
            gw.config_path.write_text(
                good.replace("reader: {read: allow,", "reader: {read: maybe,")
            )
            assert gw.proc is not None
            gw.proc.send_signal(signal.SIGHUP)
            _wait_for_log(gw, "config reload refused")
            conn.execute("create temp table reload_b (a int)")

            # Take ddl away from engineers; the same session is refused at once.
            gw.reload(
                good.replace(
                    "engineer: {read: allow, write: allow, ddl: allow",
                    "engineer: {read: allow, write: allow, ddl: block",
                ),
                timeout=10,
            )
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("create temp table reload_c (a int)")
            assert conn.execute("select count(*) from reload_a").fetchone() == (0,)
    finally:
        gw.stop()


def test_a_loosened_role_reaches_read_only_sessions_at_their_next_connection(
    it_database: str, tmp_path: Path
) -> None:
    """A read-only role's sessions are read-only on the server too, from their start.
    Giving the role more later changes the policy at once, but the server side of an
    open session stays read-only (fail closed) until the client reconnects."""
    gw = make_gateway(tmp_path, base_config(it_database))
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("create temp table reload_t (a int)")
            good = gw.config_path.read_text()
            gw.reload(
                good.replace(
                    "reader: {read: allow, write: block, ddl: block",
                    "reader: {read: allow, write: block, ddl: allow",
                ),
                timeout=10,
            )
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                conn.execute("create temp table reload_t (a int)")
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            conn.execute("create temp table reload_t (a int)")
            assert conn.execute("select count(*) from reload_t").fetchone() == (0,)
    finally:
        gw.stop()


def test_a_connection_a_reload_adds_is_looked_at_before_its_first_session(
    it_database: str, tmp_path: Path
) -> None:
    """A connection added by a reload has no catalogue facts yet, which the gate judges
    as the worst case (every expression may run user code). Its first session has the
    catalogue watch look at it now, not at its next round (up to 30 s later), and waits
    for that look: a read-only agent's plain read runs."""
    gw = make_gateway(tmp_path, base_config(it_database))
    gw.start()
    try:
        added = (
            "it2:\n"
            "  type: postgres\n"
            f"  upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {it_database},"
            f" user: {PG_USER}, tls: disable}}\n"
            "  roles: {agents: reader}\n"
        )
        gw.reload(base_config(it_database, added), timeout=10)
        with psycopg.connect(gw.dsn("agent", "it2"), autocommit=True) as conn:
            assert conn.execute("select 1 + 1").fetchone() == (2,)
    finally:
        gw.stop()
