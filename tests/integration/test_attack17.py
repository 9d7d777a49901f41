"""attack17: a hostile agent on the approver's address (loopback: every local client
shares 127.0.0.1) must not be able to lock the approver out by failing logins."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.conftest import Gateway, base_config, make_gateway, running_gateway
from tests.integration.test_auth import _psql
from wardgate.audit.chain import canonical_json, event_hash
from wardgate.audit.checkpoint import generate_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def review_gateway(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One reviews gateway for this module's scenarios (each has its own table and review)."""
    from tests.integration.test_reviews import review_config

    config = review_config(it_database)
    with running_gateway(tmp_path_factory.mktemp("reviews"), config) as gw:
        yield gw


def _addr_failures(db: str, addr: str) -> int:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("select count from login_failures where key = ?", (f"addr:{addr}",))
        found = row.fetchone()
    finally:
        conn.close()
    return int(found[0]) if found else 0


def _wrong_dsn(port: int, user: str) -> str:
    return f"host=127.0.0.1 port={port} dbname=it user={user} password=wg_wrong sslmode=disable"


def test_agent_failures_past_the_address_threshold_do_not_refuse_a_right_token(
    it_database: str, tmp_path: Path
) -> None:
    limits = "limits: {login_failures: 2, address_failures: 4, login_max_delay: 1s, "
    config = base_config(it_database).replace("limits: {login_failures: 5, ", limits)
    assert "address_failures: 4" in config
    gw = make_gateway(tmp_path / "gw", config)
    gw.start()
    try:
        db = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
        # The agent, with its own token, fails logins under made-up names (never slowed:
        # each name has its own counter) until its address is past the threshold.
        for i in range(6):
            with pytest.raises(psycopg.OperationalError, match="authentication failed"):
                psycopg.connect(_wrong_dsn(gw.port, f"guess{i}"), connect_timeout=30)
        assert _addr_failures(db, "127.0.0.1") >= 4
        # The approver on the same address: real psql with the right token logs in ...
        t0 = time.monotonic()
        ok = _psql(gw, "reviewer", gw.token("reviewer"))
        assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr
        assert time.monotonic() - t0 < 5
        # ... and so does the approver's API token (the CLI's `reviews approve`).
        auth = {"Authorization": f"Bearer {gw.token('reviewer')}"}
        r = httpx.get(f"http://127.0.0.1:{gw.api_port}/api/v1/connections", headers=auth)
        assert r.status_code == 200, r.text
        # Wrong tokens past the threshold still fail, after login_max_delay.
        t0 = time.monotonic()
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(_wrong_dsn(gw.port, "agent"), connect_timeout=30)
        assert time.monotonic() - t0 >= 1
        bad = httpx.get(
            f"http://127.0.0.1:{gw.api_port}/api/v1/connections",
            headers={"Authorization": "Bearer wg_wrong"},
        )
        assert bad.status_code == 401
    finally:
        gw.stop()


def _final_status(api: Any, review_id: str, want: str) -> dict[str, Any]:
    """The review once its status is ``want`` (the outcome is written a moment after the
    server's answer), or as it is after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        shown: dict[str, Any] = api.get(f"/reviews/{review_id}")
        if shown["status"] == want or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


def _rollback(conn: psycopg.Connection[Any], update: str) -> None:
    conn.execute("BEGIN")
    conn.execute(update)
    conn.execute("ROLLBACK")


def _rollback_to_savepoint(conn: psycopg.Connection[Any], update: str) -> None:
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT before_it")
    conn.execute(update)
    conn.execute("ROLLBACK TO SAVEPOINT before_it")
    conn.execute("COMMIT")  # commits what came before the savepoint: nothing of the update


def _commit_of_a_failed_transaction(conn: psycopg.Connection[Any], update: str) -> None:
    conn.execute("BEGIN")
    conn.execute(update)
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("SELECT 1/0")
    conn.execute("COMMIT")  # the server answers ROLLBACK


def _later_statement_of_one_query_fails(conn: psycopg.Connection[Any], update: str) -> None:
    # One simple Query (the string approved): one implicit transaction, whose second
    # statement fails.
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute(update)


def _session_ends_before_commit(conn: psycopg.Connection[Any], update: str) -> None:
    conn.execute("BEGIN")
    conn.execute(update)
    conn.close()


@pytest.mark.parametrize(
    "undo",
    [
        _rollback,
        _rollback_to_savepoint,
        _commit_of_a_failed_transaction,
        _later_statement_of_one_query_fails,
        _session_ends_before_commit,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_an_approved_update_rolled_back_by_the_agent_is_not_shown_executed(
    it_database: str, review_gateway: Gateway, table: str, undo: Callable[..., None]
) -> None:
    """The agent runs its approved UPDATE inside a transaction that does not commit:
    the target is unchanged, and the approver must not read `executed`."""
    from tests.integration.test_reviews import Api, cli_as, pending_error, qty

    gw = review_gateway
    try:
        update = f"UPDATE {table} SET qty = 7 WHERE id = 3"
        if undo is _later_statement_of_one_query_fails:
            update += "; SELECT 1/0"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            review_id = pending_error(conn, update)
            cli_as(gw, "reviewer", "reviews", "approve", review_id)
            undo(conn, update)
        assert qty(it_database, table, 3) == 0  # nothing changed on the target
        api = Api(gw, "reviewer")
        shown = _final_status(api, review_id, "rolled_back")
        assert shown["status"] == "rolled_back", shown
        assert shown["result"]["transaction"] == "rolled_back", shown
        assert "roll" in shown["result"]["error"], shown
        listed = cli_as(gw, "reviewer", "reviews", "show", review_id).stdout
        assert "rolled_back" in listed, listed
    finally:
        while Api.opened:
            Api.opened.pop().client.close()


def test_an_approved_update_is_executed_once_its_transaction_commits(
    it_database: str, tmp_path: Path, table: str
) -> None:
    """A savepoint released and a later one rolled back do not undo it; COMMIT keeps it."""
    from tests.integration.test_reviews import Api, cli_as, pending_error, qty, review_config

    gw = make_gateway(tmp_path / "gw", review_config(it_database))
    gw.start()
    try:
        update = f"UPDATE {table} SET qty = 8 WHERE id = 4"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            review_id = pending_error(conn, update)
            cli_as(gw, "reviewer", "reviews", "approve", review_id)
            conn.execute("BEGIN")
            conn.execute("SAVEPOINT a")
            conn.execute(update)
            conn.execute("RELEASE SAVEPOINT a")
            conn.execute('SAVEPOINT "Later"')
            conn.execute(f"SELECT count(*) FROM {table}")
            conn.execute('ROLLBACK TO SAVEPOINT "Later"')
            api = Api(gw, "reviewer")
            open_txn = api.get(f"/reviews/{review_id}")
            assert open_txn["status"] == "executed" and open_txn["result"] is None, open_txn
            conn.execute("COMMIT")
        assert qty(it_database, table, 4) == 8
        deadline = time.monotonic() + 15
        while (shown := api.get(f"/reviews/{review_id}"))["result"] is None:
            assert time.monotonic() < deadline, shown
            time.sleep(0.1)
        assert shown["status"] == "executed", shown
        assert shown["result"]["transaction"] == "committed", shown
    finally:
        while Api.opened:
            Api.opened.pop().client.close()
        gw.stop()


def test_a_forged_sweep_does_not_hide_a_deleted_vote_from_verify_checkpoint(
    it_database: str, tmp_path: Path, table: str
) -> None:
    """Store write access, no key: after a signed checkpoint, delete the approval vote
    and the approval from the SQLite store, append a `retention.swept` event naming
    them (with a correct hash) and move the head. Neither `audit verify` (the sweep is
    not covered by a checkpoint signed after it) nor `audit verify --checkpoint` passes."""
    from tests.integration.test_reviews import cli_as, pending_error, review_config

    key = tmp_path / "keys" / "cp.key"
    key.parent.mkdir()
    private, public = generate_key()
    key.write_text(private)
    Path(f"{key}.pub").write_text(public)
    config = review_config(it_database) + f"audit:\n  checkpoint: {{key: {key}, interval: 1h}}\n"
    gw = make_gateway(tmp_path / "gw", config)
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            review_id = pending_error(conn, f"UPDATE {table} SET qty = 9 WHERE id = 2")
            cli_as(gw, "reviewer", "reviews", "approve", review_id)
    finally:
        gw.stop()  # signs the head
    cp = tmp_path / "cp.json"
    cp.write_text(gw.cli("audit", "checkpoint").stdout)
    signed = json.loads(cp.read_text())["seq"]
    db = sqlite3.connect(gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
    try:
        votes = db.execute(
            "select id, hash, connection from audit_events where type = 'review.vote.approve' "
            "and id < ? order by id",
            (signed,),
        ).fetchall()
        assert votes, db.execute("select id, type from audit_events").fetchall()
        first, digest, connection = votes[0]
        db.execute("delete from audit_events where id = ?", (first,))
        last_id, last_hash = db.execute("select last_id, last_hash from audit_head").fetchone()
        payload = canonical_json(
            {
                "connection": connection,
                "retention_days": 0,
                "before": time.time(),
                "events": 1,
                "sessions": 0,
                "recordings": 0,
                "runs": [[first, first, digest]],
            }
        )
        new_id, ts = last_id + 1, time.time()
        fields = dict(
            id=new_id, ts=ts, type="retention.swept", session_id="", principal="wardgate",
            connection=connection, payload=payload,
        )  # fmt: skip
        new_hash = event_hash(last_hash, **fields)  # type: ignore[arg-type]
        db.execute(
            "insert into audit_events (id, ts, type, session_id, principal, connection, "
            "payload, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new_id,
                ts,
                "retention.swept",
                "",
                "wardgate",
                connection,
                payload,
                last_hash,
                new_hash,
            ),
        )
        db.execute("update audit_head set last_id = ?, last_hash = ?", (new_id, new_hash))
        db.commit()
    finally:
        db.close()
    # Plain verify checks the sweep against the checkpoints in the store, with the
    # configured key: none signed after it, so the deletion it names is not vouched for.
    plain = gw.cli("audit", "verify", check=False)
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "no signed checkpoint covers" in plain.stdout, plain.stdout
    assert f"BROKEN at event {new_id}" in plain.stdout, plain.stdout
    # The same with the public key alone (an auditor without the private key).
    public = gw.cli("audit", "verify", "--public-key", f"{key}.pub", check=False)
    assert public.returncode == 1 and "no signed checkpoint covers" in public.stdout
    caught = gw.cli(
        "audit", "verify", "--checkpoint", str(cp), "--public-key", f"{key}.pub", check=False
    )
    assert caught.returncode == 1, caught.stdout + caught.stderr
    assert "no checkpoint signed by this key covers" in caught.stdout + caught.stderr


def test_agent_psql_failures_do_not_lock_the_approver_out_of_the_web_ui(
    it_database: str, tmp_path: Path
) -> None:
    from tests.integration.test_web_auth import PASSWORD, sign_in, started, ui

    limits = "limits: {login_failures: 2, address_failures: 4, login_max_delay: 1s, "
    gw = started(tmp_path, base_config(it_database).replace("limits: {login_failures: 5, ", limits))
    try:
        for i in range(5):
            with pytest.raises(psycopg.OperationalError, match="authentication failed"):
                psycopg.connect(_wrong_dsn(gw.port, f"guess{i}"), connect_timeout=30)
        with ui(gw) as client:
            signed = sign_in(client, "reviewer", PASSWORD)
            assert signed.status_code == 303, (signed.status_code, "Too many" in signed.text)
    finally:
        gw.stop()


def test_web_form_floods_from_the_address_do_not_refuse_a_browser_the_approver_used(
    it_database: str, tmp_path: Path
) -> None:
    """Another principal floods the web form from the approver's address, with made-up
    names and with the approver's own name: fresh browsers there get 429 (a password
    is costly to check), but the browser the approver signed in from before still signs
    in with the right password, and a wrong one from it is still refused."""
    from tests.integration.test_web_auth import PASSWORD, sign_in, started, ui

    limits = "limits: {login_failures: 2, address_failures: 4, login_max_delay: 1s, "
    gw = started(tmp_path, base_config(it_database).replace("limits: {login_failures: 5, ", limits))
    try:
        with ui(gw) as approver, ui(gw) as flooder, ui(gw) as fresh:
            assert sign_in(approver, "reviewer", PASSWORD).status_code == 303
            assert approver.cookies.get("wardgate_known")
            approver.post("/ui/logout", data={"csrf": approver.cookies.get("wardgate_csrf", "")})
            refused = None
            for i in range(8):
                name = "reviewer" if i % 2 else f"guess{i}"
                answer = sign_in(flooder, name, "wrong password here")
                if answer.status_code == 429:
                    refused = answer
                    break
                assert answer.status_code == 401, answer.status_code
            assert refused is not None and "Too many failed sign-ins" in refused.text
            # A fresh browser on the address is refused for the window, right password or not.
            assert sign_in(fresh, "reviewer", PASSWORD).status_code == 429
            # The browser the approver used before: a wrong password is still wrong ...
            assert sign_in(approver, "reviewer", "wrong password here").status_code == 401
            # ... and the right one signs in at once.
            t0 = time.monotonic()
            again = sign_in(approver, "reviewer", PASSWORD)
            assert again.status_code == 303, (again.status_code, "Too many" in again.text)
            assert time.monotonic() - t0 < 5
            assert approver.get("/ui/reviews").status_code == 200
            # The cookie names the user: it does not help another name from that browser.
            assert sign_in(approver, "dev", PASSWORD).status_code == 429
    finally:
        gw.stop()
