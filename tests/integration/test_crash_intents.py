"""SSH commands and MCP tool statements are journalled before they run: kill -9 of the
gateway while one runs on the target leaves its record, which the next start replays
into the store as `interrupted`."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.integration.conftest import Gateway, admin_conn, make_gateway
from tests.integration.sshd import SshTarget, free_port, ssh_keygen, ssh_target
from tests.integration.test_mcp import call, mcp_config
from tests.integration.test_operations import wait_until
from tests.integration.test_ssh import SshGateway, ssh_config

__all__ = ["ssh_target"]  # the session fixture, used by name


def test_kill_9_while_a_command_runs_keeps_its_record(
    ssh_target: SshTarget, tmp_path: Path
) -> None:
    gw = make_gateway(tmp_path / "gw", ssh_config(ssh_target))
    ssh_port = free_port()
    gw.env["WARDGATE_LISTEN_SSH"] = f"127.0.0.1:{ssh_port}"
    key = tmp_path / "dev_key"
    (tmp_path / "dev_key.pub").write_text(ssh_keygen(key, "dev@test") + "\n")
    gw.cli("principal", "add-key", "dev", str(tmp_path / "dev_key.pub"))
    sgw = SshGateway(gw, ssh_port, {"dev": key})
    marker = Path(f"/tmp/wardgate-crash-{uuid.uuid4().hex[:8]}")
    command = f"touch {marker}; sleep 20"
    gw.start()
    client = subprocess.Popen(
        [
            "ssh", "-F", "/dev/null", "-p", str(ssh_port), "-i", str(key),
            "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "web1@127.0.0.1", "--", command,
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(marker.exists, 30, "the command started on the target")
        assert gw.proc is not None
        gw.proc.kill()  # SIGKILL: nothing of the gateway runs after this
        gw.proc.wait()
        gw.proc = None
        client.kill()
        gw.start()  # replays the journal
        deadline = time.monotonic() + 15
        while True:
            rows = [
                json.loads(p)
                for (p,) in sgw.store_rows("select payload from audit_events where type = 'action'")
            ]
            found = [r for r in rows if r.get("text") == command]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert len(found) == 1, rows
        assert found[0]["status"] == "interrupted", found[0]
        assert "stopped" in found[0]["error"], found[0]
        gw.cli("audit", "verify")
    finally:
        client.kill()
        gw.stop()
        with contextlib.suppress(OSError):
            marker.unlink()


def _recorded(gw: Gateway, text: str) -> list[dict[str, object]]:
    """The action records of `text` in the store, waiting a little for the replay."""
    db = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    deadline = time.monotonic() + 15
    while True:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute("select payload from audit_events where type = 'action'")
            found = [r for (p,) in rows if (r := json.loads(p)).get("text") == text]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_kill_9_while_an_mcp_statement_runs_keeps_its_record(
    it_database: str, tmp_path: Path
) -> None:
    gw = make_gateway(tmp_path / "gw", mcp_config(it_database))
    sql = f"select pg_sleep(20), '{uuid.uuid4().hex}'"
    gw.token("agent")
    gw.start()
    caller = threading.Thread(
        target=_quietly,
        args=(lambda: call(gw, "agent", ("query", {"connection": "it", "sql": sql})),),
        daemon=True,
    )
    try:
        caller.start()

        def running() -> bool:
            with admin_conn(it_database) as conn:
                return bool(
                    conn.execute(
                        "select 1 from pg_stat_activity where query = %s", (sql,)
                    ).fetchone()
                )

        wait_until(running, 30, "the statement running on the target")
        assert gw.proc is not None
        gw.proc.kill()  # SIGKILL: nothing of the gateway runs after this
        gw.proc.wait()
        gw.proc = None
        gw.start()  # replays the journal
        found = _recorded(gw, sql)
        assert len(found) == 1, found
        assert found[0]["status"] == "interrupted", found[0]
        gw.cli("audit", "verify")
    finally:
        gw.stop()
        with admin_conn(it_database) as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where query = %s", (sql,)
            )


def _quietly(fn: Callable[[], object]) -> None:
    """Run `fn`, whose connection the test cuts: how it fails is not the point."""
    with contextlib.suppress(BaseException):
        fn()
