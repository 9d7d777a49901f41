"""Segregation of duties end to end: an agent's write through the PostgreSQL gateway is
held, a different human approves it (CLI or API), it runs exactly once, and every step
is in the audit log. Real gateway processes, real psycopg, real PostgreSQL."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, free_port, make_gateway

REVIEW_ID = re.compile(r"review (r_[a-z0-9]+)")


def review_config(database: str, *, notify_url: str | None = None) -> str:
    # dev sponsors the agent and is an approver: only the sponsor rule stops dev
    text = base_config(database).replace(
        "dev: {kind: user, groups: [engineers]}",
        "dev: {kind: user, groups: [engineers, approvers]}",
    )
    text = text.replace(
        "roles: {agents: reader, engineers: engineer}",
        "roles: {agents: proposer, engineers: engineer}\n"
        "    reviews: {wait: 0s, max_wait: 30s, preview: rollback}\n"
        "    grants: {roles: [engineer], max_duration: 1h}",
        1,
    )
    text = text.replace(
        "  engineer: {read: allow, write: allow, ddl: allow, admin: block}\n",
        "  engineer: {read: allow, write: allow, ddl: allow, admin: block}\n"
        "  proposer: {read: allow, write: review, ddl: block, admin: block}\n",
    )
    text += "reviews: {approvers: [approvers], sponsor_may_approve: false"
    if notify_url:
        text += f", notify: [{{type: webhook, url: '{notify_url}'}}]"
    return text + "}\n"


class Api:
    """The REST API as one principal; closed at the end of each test."""

    opened: list[Api] = []

    def __init__(self, gw: Gateway, principal: str) -> None:
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{gw.api_port}/api/v1",
            headers={"Authorization": f"Bearer {gw.token(principal)}"},
            timeout=30,
        )
        Api.opened.append(self)

    def get(self, path: str, **params: Any) -> Any:
        r = self.client.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def post(self, path: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
        r = self.client.post(path, json=body or {})
        assert r.status_code == expect, r.text
        return r.json()


@pytest.fixture(autouse=True)
def _close_apis() -> Iterator[None]:
    yield
    while Api.opened:
        Api.opened.pop().client.close()


@pytest.fixture
def gw(it_database: str, tmp_path: Path) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path / "gw", review_config(it_database))
    gateway.start()
    yield gateway
    gateway.stop()


def qty(database: str, table: str, row: int = 1) -> int:
    with admin_conn(database) as conn:
        found = conn.execute(f"select qty from {table} where id = %s", (row,)).fetchone()
    assert found is not None
    return int(found[0])


def pending_error(conn: psycopg.Connection[Any], sql: str, params: Any = None) -> str:
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    diag = info.value.diag
    assert diag.sqlstate == "55000", diag.message_primary
    assert diag.message_primary is not None
    assert diag.message_primary.startswith("wardgate: approval pending: review r_")
    assert "run the same statement again" in (diag.message_hint or "")
    m = REVIEW_ID.search(diag.message_primary)
    assert m is not None
    return m.group(1)


def cli_as(gw: Gateway, principal: str, *args: str, check: bool = True) -> Any:
    import subprocess

    from tests.integration.conftest import WARDGATE

    env = {
        **gw.env,
        "WARDGATE_URL": f"http://127.0.0.1:{gw.api_port}",
        "WARDGATE_TOKEN": gw.token(principal),
        "WARDGATE_PROFILE": str(gw.workdir / f"profile-{principal}.json"),
    }
    result = subprocess.run([WARDGATE, *args], env=env, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise AssertionError(f"wardgate {args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_agent_update_is_held_approved_by_another_human_and_runs_once(
    gw: Gateway, it_database: str, table: str
) -> None:
    update = f"UPDATE {table} SET qty = qty + 1 WHERE id = 1"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, f"/* wardgate: reason=restock after count */ {update}")
        assert qty(it_database, table) == 0
        # a second try before approval: the same review, still not run
        assert pending_error(conn, update) == review_id

        shown = json.loads(cli_as(gw, "reviewer", "reviews", "show", review_id, "--json").stdout)
        assert shown["principal"] == "agent" and shown["sponsor"] == "dev"
        assert shown["justification"] == "restock after count"
        assert shown["rule"] == "role:proposer"

        # the sponsor of the agent, the agent itself and an outsider cannot approve
        refused = cli_as(gw, "dev", "reviews", "approve", review_id, check=False)
        assert refused.returncode == 2 and "sponsor" in refused.stderr
        refused = cli_as(gw, "agent", "reviews", "approve", review_id, check=False)
        assert refused.returncode == 2 and "agents never approve" in refused.stderr
        refused = cli_as(gw, "outsider", "reviews", "approve", review_id, check=False)
        assert refused.returncode == 2

        cli_as(gw, "reviewer", "reviews", "approve", review_id, "--reason", "count checked")
        conn.execute(update)  # runs now
        assert qty(it_database, table) == 1
        # once: the next identical statement needs a new review
        assert pending_error(conn, update) != review_id
        assert qty(it_database, table) == 1

    events = _review_events(gw, review_id)
    assert [e["type"] for e in events] == [
        "review.requested",
        "review.vote.approve",
        "review.approved",
        "review.executed",
        "review.result",
    ]
    assert events[-1]["payload"]["status"] == "ok" and events[-1]["payload"]["rows"] == 1
    assert gw.cli("audit", "verify").returncode == 0


def _review_events(gw: Gateway, review_id: str) -> list[dict[str, Any]]:
    import sqlite3

    deadline = time.monotonic() + 10
    while True:
        db = sqlite3.connect(gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
        try:
            rows = db.execute(
                "select type, principal, payload from audit_events order by id"
            ).fetchall()
        finally:
            db.close()
        events = [
            {"type": t, "principal": p, "payload": json.loads(payload)}
            for t, p, payload in rows
            if json.loads(payload).get("review") == review_id
        ]
        if any(e["type"] == "review.result" for e in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def test_inline_wait_is_released_by_an_approval(gw: Gateway, it_database: str, table: str) -> None:
    api = Api(gw, "reviewer")
    done: dict[str, float] = {}

    def agent_runs() -> None:
        dsn = gw.dsn("agent", options="-c%20wardgate.review_wait%3D20")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"UPDATE {table} SET qty = 7 WHERE id = 2")
            done["at"] = time.monotonic()

    worker = threading.Thread(target=agent_runs)
    worker.start()
    review = _wait_for_pending(api, "agent")
    assert review["preview"] is None or review["preview"]["kind"] in ("rollback", "explain")
    time.sleep(0.5)
    assert "at" not in done  # still held
    approved_at = time.monotonic()
    api.post(f"/reviews/{review['id']}/approve", {"reason": "fine"})
    worker.join(15)
    assert "at" in done
    assert done["at"] - approved_at < 1.0
    assert qty(it_database, table, 2) == 7


def test_inline_wait_ends_with_a_denial(gw: Gateway, it_database: str, table: str) -> None:
    api = Api(gw, "reviewer")
    errors: list[psycopg.Error] = []

    def agent_runs() -> None:
        dsn = gw.dsn("agent", options="-c%20wardgate.review_wait%3D20")
        with psycopg.connect(dsn, autocommit=True) as conn:
            try:
                conn.execute(f"UPDATE {table} SET qty = 9 WHERE id = 3")
            except psycopg.Error as exc:
                errors.append(exc)
            # the session goes on after a denial
            assert conn.execute("select 1").fetchone() == (1,)

    worker = threading.Thread(target=agent_runs)
    worker.start()
    review = _wait_for_pending(api, "agent")
    api.post(f"/reviews/{review['id']}/deny", {"reason": "wrong row"})
    worker.join(15)
    (error,) = errors
    assert error.diag.sqlstate == "42501"
    assert f"review {review['id']} was denied by reviewer: wrong row" in str(
        error.diag.message_primary
    )
    assert qty(it_database, table, 3) == 0


def _wait_for_pending(api: Api, principal: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        found = api.get("/reviews", status="pending", principal=principal)["reviews"]
        if found:
            return dict(found[0])
        time.sleep(0.1)
    raise AssertionError("no pending review appeared")


def test_bound_parameters_are_part_of_the_approval(
    gw: Gateway, it_database: str, table: str
) -> None:
    api = Api(gw, "reviewer")
    sql = f"UPDATE {table} SET qty = %s WHERE id = %s"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, sql, (5, 4))
        detail = api.get(f"/reviews/{review_id}")
        assert detail["detail"]["params"] == ["5", "4"]
        assert detail["preview"] is None or "affected_rows" in detail["preview"] or True
        api.post(f"/reviews/{review_id}/approve")
        # other parameters are another action
        assert pending_error(conn, sql, (6, 4)) != review_id
        conn.execute(sql, (5, 4))
        assert qty(it_database, table, 4) == 5
        # the session stays usable after held statements in the extended protocol
        assert conn.execute("select 2").fetchone() == (2,)


def test_preview_shows_the_exact_row_count(gw: Gateway, it_database: str, table: str) -> None:
    api = Api(gw, "reviewer")
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, f"UPDATE {table} SET qty = 1 WHERE id <= 3")
    deadline = time.monotonic() + 10
    while (preview := api.get(f"/reviews/{review_id}")["preview"]) is None:
        assert time.monotonic() < deadline, "no preview"
        time.sleep(0.1)
    assert preview["kind"] == "rollback" and preview["affected_rows"] == 3
    assert qty(it_database, table, 1) == 0  # rolled back


def test_grant_elevates_inside_an_open_session(gw: Gateway, it_database: str, table: str) -> None:
    agent, reviewer = Api(gw, "agent"), Api(gw, "reviewer")
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        pending_error(conn, f"UPDATE {table} SET qty = 2 WHERE id = 5")
        grant = agent.post(
            "/grants",
            {"connection": "it", "role": "engineer", "duration": "10m", "reason": "incident 7"},
            expect=201,
        )
        assert grant["kind"] == "grant" and grant["status"] == "pending"
        reviewer.post(f"/reviews/{grant['id']}/approve")
        deadline = time.monotonic() + 5
        while True:
            try:
                conn.execute(f"UPDATE {table} SET qty = 2 WHERE id = 5")
                break
            except psycopg.Error:
                assert time.monotonic() < deadline, "the grant was not honoured"
                time.sleep(0.2)
        assert qty(it_database, table, 5) == 2
        active = reviewer.get("/grants")["grants"]
        assert [g["id"] for g in active] == [grant["id"]]
        reviewer.post(f"/grants/{grant['id']}/revoke", {"reason": "incident over"})
        deadline = time.monotonic() + 5
        while True:
            try:
                conn.execute(f"UPDATE {table} SET qty = 3 WHERE id = 5")
            except psycopg.Error as exc:
                assert exc.diag.sqlstate == "55000"
                break
            assert time.monotonic() < deadline, "the revoked grant still works"
            time.sleep(0.2)


def test_proposal_runs_after_approval_in_one_transaction(
    gw: Gateway, it_database: str, table: str
) -> None:
    agent, reviewer = Api(gw, "agent"), Api(gw, "reviewer")
    blocked = agent.client.post(
        "/proposals",
        json={
            "connection": "it",
            "statements": [f"UPDATE {table} SET qty = 1 WHERE id = 6", f"DROP TABLE {table}"],
            "justification": "cleanup",
        },
    )
    assert blocked.status_code == 403 and "no-drop" in blocked.json()["detail"]
    proposal = agent.post(
        "/proposals",
        {
            "connection": "it",
            "statements": [
                f"UPDATE {table} SET qty = 10 WHERE id = 6",
                f"UPDATE {table} SET qty = 20 WHERE id = 7",
            ],
            "justification": "fix the two counts from the audit",
        },
        expect=201,
    )
    assert proposal["status"] == "pending"
    assert qty(it_database, table, 6) == 0
    reviewer.post(f"/reviews/{proposal['id']}/approve")
    deadline = time.monotonic() + 15
    while (outcome := agent.get(f"/proposals/{proposal['id']}"))["status"] not in (
        "executed",
        "failed",
    ):
        assert time.monotonic() < deadline, outcome
        time.sleep(0.1)
    assert outcome["status"] == "executed", outcome
    assert outcome["result"]["ok"] is True
    assert (qty(it_database, table, 6), qty(it_database, table, 7)) == (10, 20)


def test_api_refuses_without_a_valid_token(gw: Gateway) -> None:
    base = f"http://127.0.0.1:{gw.api_port}/api/v1"
    r = httpx.get(f"{base}/reviews")
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    r = httpx.get(f"{base}/reviews", headers={"Authorization": "Bearer wg_not-a-token"})
    assert r.status_code == 401
    assert "wg_not-a-token" not in r.text
    schema = httpx.get(f"http://127.0.0.1:{gw.api_port}/openapi.json").json()
    assert {"/api/v1/reviews", "/api/v1/grants", "/api/v1/proposals"} <= set(schema["paths"])
    # a revoked token stops working on the API at once
    api = Api(gw, "reviewer")
    assert api.get("/whoami")["principal"] == "reviewer"
    (token_id,) = [
        t["id"]
        for t in json.loads(gw.cli("token", "list", "--json").stdout)
        if t["principal"] == "reviewer"
    ]
    gw.cli("token", "revoke", token_id)
    assert api.client.get("/whoami").status_code == 401


def test_approvals_survive_kill_9(gw: Gateway, it_database: str, table: str) -> None:
    api = Api(gw, "reviewer")
    first = f"UPDATE {table} SET qty = 11 WHERE id = 8"
    second = f"UPDATE {table} SET qty = 12 WHERE id = 9"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        approved = pending_error(conn, first)
        pending = pending_error(conn, second)
    api.post(f"/reviews/{approved}/approve")
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    gw.start()
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        conn.execute(first)
        assert pending_error(conn, second) == pending
    assert qty(it_database, table, 8) == 11
    assert qty(it_database, table, 9) == 0


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length", 0))
        _Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_webhook_announces_requests_and_decisions(
    it_database: str, tmp_path: Path, table: str
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Receiver.received = []
    url = f"http://127.0.0.1:{server.server_port}/hook"
    gw = make_gateway(tmp_path / "gw", review_config(it_database, notify_url=url))
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            review_id = pending_error(conn, f"UPDATE {table} SET qty = 1 WHERE id = 10")
        Api(gw, "reviewer").post(f"/reviews/{review_id}/approve")
        deadline = time.monotonic() + 10
        while len(_Receiver.received) < 2:
            assert time.monotonic() < deadline, _Receiver.received
            time.sleep(0.1)
        events = [(r["event"], r["review"]["id"]) for r in _Receiver.received]
        assert events[:2] == [("requested", review_id), ("approved", review_id)]
        assert _Receiver.received[0]["review"]["text"].startswith("UPDATE")
        assert _Receiver.received[0]["url"].endswith(f"/ui/reviews/{review_id}")
    finally:
        gw.stop()
        server.shutdown()
        server.server_close()


def test_fleet_release_through_another_gateway(
    it_database: str, tmp_path: Path, table: str
) -> None:
    """Two gateway processes on one PostgreSQL store: an approval made through B's API
    releases the statement waiting on A within a second."""
    store_db = f"wardgate_fleet_{uuid.uuid4().hex[:8]}"
    with admin_conn() as conn:
        conn.execute(f'create database "{store_db}"')
    store = f"postgresql://postgres@127.0.0.1:5432/{store_db}"
    config = review_config(it_database)
    a = make_gateway(tmp_path / "a", config, store=store)
    b = make_gateway(tmp_path / "b", config, store=store)
    # one master key for the fleet: tokens made through A must verify on B
    key = base64.b64encode(os.urandom(32)).decode()
    b.env["WARDGATE_MASTER_KEY"] = a.env["WARDGATE_MASTER_KEY"] = key
    try:
        a.start()
        b.start()
        b.tokens = a.tokens
        api_b = Api(b, "reviewer")
        done: dict[str, float] = {}

        def agent_on_a() -> None:
            dsn = a.dsn("agent", options="-c%20wardgate.review_wait%3D20")
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"UPDATE {table} SET qty = 99 WHERE id = 1")
                done["at"] = time.monotonic()

        worker = threading.Thread(target=agent_on_a)
        worker.start()
        review = _wait_for_pending(api_b, "agent")
        approved_at = time.monotonic()
        api_b.post(f"/reviews/{review['id']}/approve")
        worker.join(15)
        assert "at" in done
        assert done["at"] - approved_at < 1.0
        assert qty(it_database, table, 1) == 99
    finally:
        a.stop()
        b.stop()
        with admin_conn() as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (store_db,),
            )
            conn.execute(f'drop database if exists "{store_db}"')


def test_cancel_stops_the_wait_and_keeps_the_review(
    gw: Gateway, it_database: str, table: str
) -> None:
    api = Api(gw, "reviewer")
    dsn = gw.dsn("agent", options="-c%20wardgate.review_wait%3D30")
    with psycopg.connect(dsn, autocommit=True) as conn:
        errors: list[psycopg.Error] = []

        def run() -> None:
            try:
                conn.execute(f"UPDATE {table} SET qty = 5 WHERE id = 6")
            except psycopg.Error as exc:
                errors.append(exc)

        worker = threading.Thread(target=run)
        started = time.monotonic()
        worker.start()
        review = _wait_for_pending(api, "agent")
        conn.cancel_safe()
        worker.join(10)
        assert time.monotonic() - started < 10
        (error,) = errors
        assert error.diag.sqlstate == "57014"
        assert conn.execute("select 3").fetchone() == (3,)
    assert api.get(f"/reviews/{review['id']}")["status"] == "pending"
    assert qty(it_database, table, 6) == 0


def test_a_grant_opens_a_read_only_principal_to_writes_from_its_next_session(
    it_database: str, tmp_path: Path, table: str
) -> None:
    config = review_config(it_database).replace(
        "roles: {agents: proposer, engineers: engineer}",
        "roles: {agents: reader, engineers: engineer}",
        1,
    )
    gw = make_gateway(tmp_path / "gw", config)
    gw.start()
    try:
        agent, reviewer = Api(gw, "agent"), Api(gw, "reviewer")
        update = f"UPDATE {table} SET qty = 4 WHERE id = 4"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as old_session:
            with pytest.raises(psycopg.Error) as blocked:
                old_session.execute(update)
            assert blocked.value.diag.sqlstate == "42501"
            grant = agent.post(
                "/grants",
                {"connection": "it", "role": "engineer", "duration": "5m", "reason": "fix"},
                expect=201,
            )
            reviewer.post(f"/reviews/{grant['id']}/approve")
            time.sleep(0.5)
            # the session opened read-only stays so: the server itself refuses the write
            with pytest.raises(psycopg.Error) as refused:
                old_session.execute(update)
            assert refused.value.diag.sqlstate == "25006"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as new_session:
            new_session.execute(update)
        assert qty(it_database, table, 4) == 4
    finally:
        gw.stop()


def test_an_approved_statement_the_server_refuses_is_failed_not_executed(
    gw: Gateway, it_database: str
) -> None:
    """The quickstart's slip: the agent updates a table that does not exist. The
    approval is used, the server answers 42P01, and every surface says ``failed`` with
    the server's words."""
    update = "UPDATE no_such_stock SET qty = qty - 1 WHERE sku = 'a'"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, update)
        cli_as(gw, "reviewer", "reviews", "approve", review_id)
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute(update)
    with admin_conn(it_database) as admin:  # the target really has no such table
        assert admin.execute("select to_regclass('no_such_stock')").fetchone() == (None,)

    events = _review_events(gw, review_id)
    assert events[-1]["type"] == "review.result"
    assert events[-1]["payload"]["status"] == "error"
    api = Api(gw, "reviewer")
    shown = api.get(f"/reviews/{review_id}")
    assert shown["status"] == "failed", shown
    assert 'relation "no_such_stock" does not exist' in shown["result"]["error"]
    listed = {r["id"]: r for r in api.get("/reviews", status="failed")["reviews"]}
    assert listed[review_id]["status"] == "failed"

    out = cli_as(gw, "reviewer", "reviews", "show", review_id).stdout
    assert "failed" in out and "no_such_stock" in out and "executed" not in out.split("\n")[0]
    assert gw.cli("audit", "verify").returncode == 0
