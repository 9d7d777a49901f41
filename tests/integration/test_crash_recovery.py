"""kill -9 of the gateway: at its next start, the sessions it left open are closed as
`interrupted` at their last recorded event, with a `session.end` in the chain, and their
cancel keys are gone; another gateway sharing the store keeps its sessions."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

from tests.integration.conftest import Gateway, base_config, make_gateway
from tests.integration.test_operations import wait_until


def _sessions(gw: Gateway) -> dict[str, dict[str, Any]]:
    rows = json.loads(gw.cli("sessions", "list", "--json", "--limit", "500").stdout)
    return {r["application_name"]: r for r in rows}


def _action_counts(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return dict(conn.execute("select application_name, action_count from sessions").fetchall())


def _cancel_keys(db: Path) -> int:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("select count(*) from cancel_keys").fetchone()[0])


def test_kill_9_then_restart_closes_sessions_as_interrupted(
    it_database: str, tmp_path: Path
) -> None:
    config = base_config(it_database)
    crashing = make_gateway(tmp_path / "a", config)
    db = tmp_path / "a" / "store.db"
    # A second gateway (its own data_dir) on the same store: a replica.
    replica = make_gateway(tmp_path / "b", config, store=f"sqlite:///{db}")
    crashing.tokens["dev"] = replica.tokens["dev"] = crashing.token("dev")
    crashing.start()
    replica.start()
    app, other = f"crash_{uuid.uuid4().hex[:6]}", f"live_{uuid.uuid4().hex[:6]}"
    victim = psycopg.connect(crashing.dsn("dev", application_name=app), autocommit=True)
    survivor = psycopg.connect(replica.dsn("dev", application_name=other), autocommit=True)
    try:
        victim.execute("select 1")
        survivor.execute("select 2")
        wait_until(
            lambda: (counts := _action_counts(db)).get(app) == 1 and counts.get(other) == 1,
            what="both sessions and their actions recorded",
        )
        assert _cancel_keys(db) == 2
        assert crashing.proc is not None
        crashing.proc.kill()  # SIGKILL: nothing of the gateway runs after this
        crashing.proc.wait()
        killed_at = time.time()
        crashing.proc = None

        crashing.start()
        sessions = _sessions(crashing)
        closed = sessions[app]
        assert closed["status"] == "interrupted", closed
        assert "crash" in closed["error"], closed
        shown = json.loads(crashing.cli("sessions", "show", closed["id"], "--json").stdout)
        last_action = shown["actions"][-1]["ts"]
        assert closed["ended_at"] == last_action <= killed_at
        assert _cancel_keys(db) == 1  # the replica's session keeps its key
        assert sessions[other]["status"] == "active"  # never another gateway's session
        assert survivor.execute("select 3").fetchone() == (3,)
        crashing.cli("audit", "verify")  # the session.end went into the chain
        assert "1 closed as interrupted, 1 cancel keys removed" in crashing.log
    finally:
        for conn in (victim, survivor):
            with contextlib.suppress(psycopg.Error):
                conn.close()
        crashing.stop()
        replica.stop()
