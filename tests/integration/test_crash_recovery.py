"""kill -9 of the gateway: at its next start, the sessions it left open are closed as
`interrupted` at their last recorded event, with a `session.end` in the chain, and their
cancel keys are gone; another gateway sharing the store keeps its sessions."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
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


def test_kill_9_under_load_loses_no_record(it_database: str, tmp_path: Path) -> None:
    """Clients run statements as fast as they can; the gateway is killed with SIGKILL
    mid-run. After the restart every statement a client saw succeed has its record
    (`ok`, or `interrupted` when the gateway died before it saw the result)."""
    gw = make_gateway(tmp_path / "gw", base_config(it_database))
    db = tmp_path / "gw" / "store.db"
    dsn = gw.dsn("dev")
    gw.start()
    succeeded: list[list[str]] = [[] for _ in range(4)]
    stop = threading.Event()

    def client(n: int) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                text = f"select 'k{n}-{len(succeeded[n])}'"
                conn.execute(text).fetchone()
                succeeded[n].append(text)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: sum(map(len, succeeded)) >= 2000, 30, "2000 statements")
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait()
        gw.proc = None
        stop.set()
        for t in threads:
            t.join(10)
        gw.start()  # replays the journal, closes the sessions
        with contextlib.closing(sqlite3.connect(db)) as conn:
            rows = conn.execute(
                "select json_extract(payload, '$.text'), json_extract(payload, '$.status') "
                "from audit_events where type = 'action'"
            ).fetchall()
        recorded = {text: status for text, status in rows}
        done = [text for texts in succeeded for text in texts]
        missing = [text for text in done if text not in recorded]
        assert not missing, f"{len(missing)} of {len(done)} statements have no record"
        assert {recorded[text] for text in done} <= {"ok", "interrupted"}
        gw.cli("audit", "verify")
    finally:
        stop.set()
        gw.stop()
