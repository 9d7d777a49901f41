"""A store that stops taking writes: the gateway fails closed and loud, and recovers by
itself with nothing lost. The store is a real PostgreSQL database whose role loses its
write privileges (REVOKE) while sessions run through the gateway (psycopg)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from tests.integration.pg_cluster import startup_error
from tests.integration.sshd import SshTarget, free_port, ssh_keygen, ssh_target
from tests.integration.test_mcp import call, error_text, mcp_config
from tests.integration.test_operations import get, scrape, total, wait_until
from tests.integration.test_ssh import SshGateway, ssh_config

__all__ = ["ssh_target"]  # the session fixture, used by name

BACKLOG = 20  # limits.audit_backlog: refusals start once this many records wait


@pytest.fixture
def store_role() -> Iterator[tuple[str, str]]:
    """(role, database): a PostgreSQL store owned by a role of its own (not a superuser,
    so REVOKE binds it)."""
    name = f"wg_store_{uuid.uuid4().hex[:8]}"
    with admin_conn() as conn:
        conn.execute(f'create role "{name}" login')
        conn.execute(f'create database "{name}" owner "{name}"')
    yield name, name
    with admin_conn() as conn:
        conn.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s", (name,)
        )
        conn.execute(f'drop database if exists "{name}"')
        conn.execute(f'drop role if exists "{name}"')


def _store_writes(database: str, role: str, allowed: bool) -> None:
    with admin_conn(database) as conn:
        if allowed:
            conn.execute(f'grant all on all tables in schema public to "{role}"')
        else:
            conn.execute(
                f'revoke insert, update, delete on all tables in schema public from "{role}"'
            )


def _recorded(database: str, session_app: str) -> list[str]:
    """The texts of action events recorded for the session whose application_name is given."""
    with admin_conn(database) as conn:
        rows = conn.execute(
            "select e.payload::json->>'text' from audit_events e join sessions s "
            "on s.id = e.session_id where e.type = 'action' and s.application_name = %s "
            "order by e.id",
            (session_app,),
        ).fetchall()
    return [r[0] for r in rows]


def test_unwritable_store_refuses_clearly_and_recovers(
    it_database: str, table: str, tmp_path: Path, store_role: tuple[str, str]
) -> None:
    role, database = store_role
    config = base_config(it_database).replace(
        "max_message_bytes: 4194304}", f"max_message_bytes: 4194304, audit_backlog: {BACKLOG}}}"
    )
    gw: Gateway = make_gateway(
        tmp_path / "gw", config, store=f"postgresql://{role}@127.0.0.1:5432/{database}"
    )
    gw.token("dev")  # written to the store before it turns read-only
    gw.start()
    try:
        app = f"wg_rel_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
            conn.execute(f"insert into {table} values (100, 0)")
            _store_writes(database, role, allowed=False)
            ran = [f"insert into {table} values (100, 0)"]
            refusal: psycopg.Error | None = None
            started = time.monotonic()
            for i in range(1, 20 * BACKLOG):
                sql = f"insert into {table} values ({100 + i}, 0)"
                try:
                    conn.execute(sql)
                except psycopg.Error as exc:
                    refusal = exc
                    break
                ran.append(sql)
                time.sleep(0.01)
            assert refusal is not None, "statements kept running with the store unwritable"
            assert time.monotonic() - started < 30, "the refusal took too long"
            assert refusal.sqlstate == "58000", refusal
            assert "wardgate cannot record this action: the audit store is unavailable" in str(
                refusal
            )
            diag = refusal.diag.message_hint or ""
            assert "retry" in diag.lower(), diag
            # The refused statement did not reach the target; everything before it did.
            with admin_conn(it_database) as admin:
                count = admin.execute(f"select count(*) from {table}").fetchone()
            assert count == (10 + len(ran),), (count, len(ran))
            # Refused again at once, not hung, while the store stays unwritable.
            with pytest.raises(psycopg.Error) as again:
                conn.execute("select 1")
            assert again.value.sqlstate == "58000"

            # New sessions: the same refusal, as a connection error pools retry.
            fields = startup_error(gw.port, "dev", gw.token("dev"), "it")
            assert fields["C"] == "57P03", fields
            assert "audit store is unavailable" in fields["M"], fields

            ready = get(gw, "/readyz")
            assert ready.status_code == 503, ready.text
            assert any("audit store is unavailable" in p for p in ready.json()["problems"])
            samples = scrape(gw)
            assert total(samples, "wardgate_audit_refusing") == 1
            assert total(samples, "wardgate_audit_store_writable") == 0
            assert total(samples, "wardgate_audit_refused_total") >= 3

            # The store comes back: the backlog is written and statements run again.
            _store_writes(database, role, allowed=True)
            wait_until(lambda: get(gw, "/readyz").status_code == 200, 20, "/readyz back to 200")
            conn.execute(f"insert into {table} values (99, 0)")
            ran.append(f"insert into {table} values (99, 0)")
        wait_until(lambda: len(_recorded(database, app)) >= len(ran), 20, "records written")
        assert _recorded(database, app) == ran  # nothing lost, nothing refused recorded
        with psycopg.connect(gw.dsn("dev")) as fresh:
            assert fresh.execute("select 1").fetchone() == (1,)
        assert total(scrape(gw), "wardgate_audit_refusing") == 0
    finally:
        gw.stop()
    log = gw.log
    assert "Traceback" not in log, log
    # One line per change of state, not one per attempt.
    assert len(re.findall("audit store write failed", log)) == 1, log
    assert len(re.findall("audit store unavailable with", log)) == 1, log
    assert len(re.findall("audit store writable again", log)) == 1, log


def test_unwritable_store_refuses_ssh_commands(
    ssh_target: SshTarget, tmp_path: Path, store_role: tuple[str, str]
) -> None:
    """The SSH side fails closed the same way: once the backlog is full, a command on
    an open connection is refused (exit 126, the same message) and does not run on the
    target, and a new login is refused."""
    role, database = store_role
    config = ssh_config(ssh_target) + f"limits: {{audit_backlog: {BACKLOG}}}\n"
    gw = make_gateway(
        tmp_path / "gw", config, store=f"postgresql://{role}@127.0.0.1:5432/{database}"
    )
    ssh_port = free_port()
    gw.env["WARDGATE_LISTEN_SSH"] = f"127.0.0.1:{ssh_port}"
    key = tmp_path / "dev_key"
    (tmp_path / "dev_key.pub").write_text(ssh_keygen(key, "dev@test") + "\n")
    gw.cli("principal", "add-key", "dev", str(tmp_path / "dev_key.pub"))
    sgw = SshGateway(gw, ssh_port, {"dev": key})
    marker = Path(f"/tmp/wardgate-unrecorded-{uuid.uuid4().hex[:8]}")
    gw.start()
    try:
        # One OpenSSH connection, logged in before the store fails, carries the commands.
        mux = Path(tempfile.mkdtemp(prefix="wg-mux-"))  # a socket path must be short
        shared = (
            "-o", "ControlMaster=auto", "-o", f"ControlPath={mux}/%C",
            "-o", "ControlPersist=120",
        )  # fmt: skip
        assert sgw.ssh("dev", "web1", "true", *shared).returncode == 0
        _store_writes(database, role, allowed=False)
        refused = None
        for i in range(4 * BACKLOG):
            result = sgw.ssh("dev", "web1", f"echo {i} > {marker}", *shared)
            if result.returncode != 0:
                refused = (i, result)
                break
        assert refused is not None, "commands kept running with the store unwritable"
        i, result = refused
        assert result.returncode == 126, result
        assert "wardgate cannot record this action: the audit store is unavailable" in (
            result.stderr
        ), result
        assert marker.read_text() == f"{i - 1}\n", "the refused command ran on the target"
        # A new login is refused as a whole, with the reason (issue 21): OpenSSH prints
        # the disconnect message and exits 255; nothing ran on the target.
        login = sgw.ssh("dev", "web1", f"echo login > {marker}")
        assert login.returncode == 255, login
        assert "wardgate cannot record this action: the audit store is unavailable" in (
            login.stderr
        ), login
        assert marker.read_text() == f"{i - 1}\n", "a refused login ran a command"
        _store_writes(database, role, allowed=True)
        wait_until(lambda: get(gw, "/readyz").status_code == 200, 20, "/readyz back to 200")
        assert sgw.ssh("dev", "web1", "echo back").stdout == "back\n"
    finally:
        sgw.ssh("dev", "web1", "true", *shared, "-O", "exit")  # the shared connection
        shutil.rmtree(mux, ignore_errors=True)
        gw.stop()
        with contextlib.suppress(OSError):
            marker.unlink()
    assert "Traceback" not in gw.log


def _store_reachable(role: str, database: str, reachable: bool) -> None:
    """Cut the gateway off its store (the role may no longer log in, its sessions end)
    or let it back in."""
    with admin_conn() as conn:
        conn.execute(f'alter role "{role}" {"login" if reachable else "nologin"}')
        if not reachable:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where usename = %s",
                (role,),
            )


def test_unreachable_store_refuses_ssh_logins(
    ssh_target: SshTarget, tmp_path: Path, store_role: tuple[str, str]
) -> None:
    """With the store unreachable, an SSH login (public key or token as password) is
    refused with the same message as a PostgreSQL login, one log line for the state and
    no traceback; once the store is back, logins work again without a restart."""
    role, database = store_role
    gw = make_gateway(
        tmp_path / "gw",
        ssh_config(ssh_target),
        store=f"postgresql://{role}@127.0.0.1:5432/{database}",
    )
    ssh_port = free_port()
    gw.env["WARDGATE_LISTEN_SSH"] = f"127.0.0.1:{ssh_port}"
    key = tmp_path / "dev_key"
    (tmp_path / "dev_key.pub").write_text(ssh_keygen(key, "dev@test") + "\n")
    gw.cli("principal", "add-key", "dev", str(tmp_path / "dev_key.pub"))
    token = gw.token("dev")
    sgw = SshGateway(gw, ssh_port, {"dev": key})
    marker = Path(f"/tmp/wardgate-unreachable-{uuid.uuid4().hex[:8]}")
    gw.start()
    try:
        assert sgw.ssh("dev", "web1", "true").returncode == 0
        assert _ssh_with_password(tmp_path, ssh_port, token, "echo ok").stdout == "ok\n"
        _store_reachable(role, database, reachable=False)
        for _attempt in range(2):
            login = sgw.ssh("dev", "web1", f"echo key > {marker}")
            assert login.returncode == 255, login
            assert "wardgate cannot record this action: the audit store is unavailable" in (
                login.stderr
            ), login
        password = _ssh_with_password(tmp_path, ssh_port, token, f"echo password > {marker}")
        assert password.returncode == 255, password
        assert "the audit store is unavailable" in password.stderr, password
        assert not marker.exists(), "a login refused for the store ran a command"
        _store_reachable(role, database, reachable=True)
        wait_until(lambda: sgw.ssh("dev", "web1", "true").returncode == 0, 20, "SSH logins back")
        assert sgw.ssh("dev", "web1", "echo back").stdout == "back\n"
    finally:
        _store_reachable(role, database, reachable=True)
        gw.stop()
        with contextlib.suppress(OSError):
            marker.unlink()
    log = gw.log
    assert "Traceback" not in log, log
    assert log.count("the store fails SSH logins") == 1, log
    assert log.count("the store serves SSH logins again") == 1, log


def _ssh_with_password(
    tmp: Path, port: int, token: str, command: str
) -> subprocess.CompletedProcess[str]:
    """OpenSSH with the token as the password, answered by an SSH_ASKPASS program."""
    askpass = tmp / "askpass"
    askpass.write_text('#!/bin/sh\nprintf "%s\\n" "$WG_TOKEN"\n')
    askpass.chmod(0o700)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"}
    env["WG_TOKEN"] = token
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-p", str(port),
            "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
            "-o", "NumberOfPasswordPrompts=1", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "web1@127.0.0.1", "--", command,
        ],
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_unwritable_store_refuses_mcp_queries(
    it_database: str, table: str, tmp_path: Path, store_role: tuple[str, str]
) -> None:
    """MCP fails closed the same way: once the backlog is full, a `query` is a tool
    error with the same message and does not reach the database."""
    role, database = store_role
    config = mcp_config(it_database).replace(
        "max_message_bytes: 4194304}", f"max_message_bytes: 4194304, audit_backlog: {BACKLOG}}}"
    )
    gw = make_gateway(
        tmp_path / "gw", config, store=f"postgresql://{role}@127.0.0.1:5432/{database}"
    )
    gw.token("dev")
    gw.start()
    try:
        _store_writes(database, role, allowed=False)
        statements = [
            ("query", {"connection": "it", "sql": f"update {table} set qty = {i} where id = 1"})
            for i in range(1, 4 * BACKLOG)
        ]
        results = call(gw, "dev", *statements)
        refused = [i for i, r in enumerate(results, 1) if r.isError]
        assert refused, "queries kept running with the store unwritable"
        first = refused[0]
        assert "wardgate cannot record this action: the audit store is unavailable" in (
            error_text(results[first - 1])
        )
        with admin_conn(it_database) as admin:
            qty = admin.execute(f"select qty from {table} where id = 1").fetchone()
        assert qty == (first - 1,), "a refused query reached the database"
        _store_writes(database, role, allowed=True)
    finally:
        gw.stop()
    log = gw.log
    # The MCP SDK logs a traceback of its own at every session end ("Error in standalone
    # SSE writer", anyio.ClosedResourceError): those only.
    # (the gateway now logs those as one INFO line, without the traceback).
    assert log.count("Traceback") <= log.count("Error in standalone SSE writer"), log
