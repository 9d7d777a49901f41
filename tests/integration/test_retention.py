"""Retention: `wardgate audit sweep` (and serve's hourly sweeper) deletes a connection's
records past its retention_days, says what it deleted in the chain, and the chain
still verifies, with a signed checkpoint and against the copy outside the store; a
deletion that is not a sweep is still caught. Real gateway, psycopg, PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import base_config, make_gateway
from wardgate.audit.checkpoint import generate_key

pytestmark = pytest.mark.integration


def _rows(db_path: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(db_path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_a_sweep_deletes_old_records_and_the_chain_still_verifies(
    it_database: str, tmp_path: Path
) -> None:
    key = tmp_path / "keys" / "cp.key"
    key.parent.mkdir()
    private, public = generate_key()
    key.write_text(private)
    Path(f"{key}.pub").write_text(public)
    config = base_config(it_database).replace(
        "roles: {agents: reader, engineers: engineer}\n",
        "roles: {agents: reader, engineers: engineer}\n    retention_days: 30\n",
        1,
    ) + (
        f"audit:\n  checkpoint: {{key: {key}, interval: 1h}}\n"
        f"  sink: {{file: {tmp_path / 'copy.jsonl'}, interval: 1h}}\n"
    )
    assert "retention_days: 30" in config
    gw = make_gateway(tmp_path / "gw", config)
    gw.start()
    try:
        app = f"ret-{uuid.uuid4().hex[:6]}"
        with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
            conn.execute("select 1 as kept_until_swept").fetchall()
            with pytest.raises(psycopg.Error):
                conn.execute("delete from nothing_at_all")  # blocked: no WHERE
    finally:
        gw.stop()  # signs the head and copies the chain to the sink
    db = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    before = _rows(db, "select id, type from audit_events where connection = 'it' order by id")
    assert len(before) >= 4
    # serve's own sweep (retention_days 30) deleted nothing this recent
    assert not _rows(db, "select id from audit_events where type = 'retention.swept'")
    signed = gw.cli("audit", "checkpoint").stdout
    cp = tmp_path / "cp.json"
    cp.write_text(signed)

    swept = gw.cli("audit", "sweep", "--days", "0")
    assert "it: " in swept.stdout
    after = _rows(db, "select id, type from audit_events where connection = 'it' order by id")
    kept = {t for _, t in after}
    assert not [t for t in kept if t == "action"], after  # the statements are gone
    assert _rows(db, "select count(*) from sessions where connection = 'it'") == [(0,)]
    assert _rows(
        db, "select count(*) from audit_events where payload like '%kept_until_swept%'"
    ) == [(0,)]
    (payload,) = _rows(db, "select payload from audit_events where type = 'retention.swept'")[0]
    record = json.loads(str(payload))
    assert record["connection"] == "it" and record["events"] == len(before) - len(after) + 1
    assert record["sessions"] >= 1 and record["runs"]

    verified = gw.cli("audit", "verify")
    assert "deleted by retention sweeps" in verified.stdout, verified.stdout
    # The sweep signed the head after it: the configured key vouches for it.
    assert "WARNING" not in verified.stdout + verified.stderr, verified.stdout
    with_cp = gw.cli("audit", "verify", "--checkpoint", str(cp), "--public-key", f"{key}.pub")
    assert "match the checkpoint" in with_cp.stdout, with_cp.stdout
    with_sink = gw.cli("audit", "verify", "--sink", str(tmp_path / "copy.jsonl"))
    assert with_sink.returncode == 0, with_sink.stdout + with_sink.stderr

    # A deletion that no sweep recorded is still a broken chain.
    survivor = json.loads(signed)["seq"]  # kept by the sweep: a checkpoint points at it
    assert _rows(db, "select count(*) from audit_events where id = ?", survivor) == [(1,)]
    conn = sqlite3.connect(db)
    try:
        conn.execute("delete from audit_events where id = ?", (survivor,))
        conn.commit()
    finally:
        conn.close()
    broken = gw.cli("audit", "verify", check=False)
    assert broken.returncode == 1 and "missing" in broken.stdout + broken.stderr


def test_serve_sweeps_on_its_own(it_database: str, tmp_path: Path) -> None:
    config = base_config(it_database).replace(
        "roles: {agents: reader, engineers: engineer}\n",
        "roles: {agents: reader, engineers: engineer}\n    retention_days: 0.00001\n",
        1,
    )
    gw = make_gateway(tmp_path / "gw", config)
    gw.start()
    try:
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
            conn.execute("select 1").fetchall()
    finally:
        gw.stop()
    time.sleep(1.0)  # older than 0.86 s now
    gw.start()  # sweeps at start
    try:
        db = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
        deadline = time.monotonic() + 15
        while not _rows(db, "select id from audit_events where type = 'retention.swept'"):
            assert time.monotonic() < deadline, gw.log[-2000:]
            time.sleep(0.2)
        assert "retention: " in gw.log
    finally:
        gw.stop()
    # No checkpoint key: nothing in the store can vouch for the sweep. Verify passes
    # (the chain links) but says loudly that the deletions are unverified.
    verified = gw.cli("audit", "verify")
    assert verified.returncode == 0 and "deleted by retention sweeps" in verified.stdout
    assert "WARNING: UNVERIFIED:" in verified.stdout, verified.stdout
    assert "no signed checkpoint covers" in verified.stdout
