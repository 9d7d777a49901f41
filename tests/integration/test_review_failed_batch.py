"""A statement that needs a review, inside an extended-protocol batch whose earlier
message failed (issue 21): PostgreSQL skips every message up to the Sync, so it never
runs. The gateway files no review for it, does not use up an approval given for it,
does not hold the client for the review's inline wait, and records it as not executed;
the client's answer is the Sync's ReadyForQuery, as without the gateway. Likewise in a
transaction block that failed, where the server refuses everything but its end: no
review, answered 25P02 as the server would. Checked on the target's rows and on the
review store, with psycopg (pipeline mode, a transaction block) and by hand."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway
from tests.integration.pg_cluster import RawClient
from tests.integration.test_reviews import Api, pending_error, qty
from tests.integration.test_reviews import gw as gw  # noqa: F401 - the fixture
from wardgate.postgres.codec import build

WAIT_OPTION = "-c wardgate.review_wait=20"  # a held statement would wait 20 s inline
WAIT = WAIT_OPTION.replace(" ", "%20").replace("=", "%3D")


def _records(gw: Gateway, text: str) -> list[dict[str, Any]]:
    """The action records of ``text``, once the recorder wrote one (up to 20 s)."""
    deadline = time.monotonic() + 20
    store = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    while True:
        with contextlib.closing(sqlite3.connect(store)) as db:
            rows = db.execute("select payload from audit_events where type = 'action'").fetchall()
        found = [p for (raw,) in rows if (p := json.loads(raw)).get("text") == text]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _records_with(
    gw: Gateway, text: str, *statuses: str, rule: str | None = None
) -> list[dict[str, Any]]:
    """The action records of ``text`` once records of every one of ``statuses`` (and one
    decided by ``rule``) are among them: each worker's recorder writes in batches of its
    own, so they may come in any order (up to 20 s)."""

    def complete(records: list[dict[str, Any]]) -> bool:
        return set(statuses) <= {r["status"] for r in records} and (
            rule is None or any(r["verdict"]["rule"] == rule for r in records)
        )

    deadline = time.monotonic() + 20
    records = _records(gw, text)
    while not complete(records) and time.monotonic() < deadline:
        time.sleep(0.2)
        records = _records(gw, text)
    return records


def _reviews_of(api: Api, text: str) -> list[dict[str, Any]]:
    return [r for r in api.get("/reviews", principal="agent")["reviews"] if text in str(r)]


def _until_ready(client: RawClient) -> list[Any]:
    """Every message up to ReadyForQuery, errors included."""
    replies = [client.read_message()]
    while replies[-1].type != "Z":
        replies.append(client.read_message())
    return replies


def test_pipeline_with_a_failed_statement_files_no_review_and_keeps_the_approval(
    gw: Gateway, it_database: str, table: str
) -> None:
    api = Api(gw, "reviewer")
    update = f"UPDATE {table} SET qty = 5 WHERE id = 2"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, update)
    api.post(f"/reviews/{review_id}/approve", {"reason": "fine"})

    with psycopg.connect(gw.dsn("agent", options=WAIT), autocommit=True) as conn:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("select 1/0")
            conn.execute(update)  # psycopg raises the error here or at the Sync
        assert time.monotonic() - started < 5, "held for the review's inline wait"
        assert conn.execute("select 3").fetchone() == (3,)  # the session goes on
        assert qty(it_database, table, 2) == 0
        assert api.get(f"/reviews/{review_id}")["status"] == "approved"  # not used up
        conn.execute(update)  # the approval still runs it, once
    assert qty(it_database, table, 2) == 5

    records = _records_with(gw, update, "ok", "not_executed")
    skipped = [r for r in records if r["status"] == "not_executed"]
    assert skipped and "no review was filed" in skipped[0]["error"], records
    assert [r["status"] for r in records].count("ok") == 1, records


def test_raw_batch_after_its_error_is_answered_at_sync_without_a_review(
    gw: Gateway, it_database: str, table: str
) -> None:
    """Both ways the gateway can learn of the failure: the held statement (an Execute)
    arrives with the failing one (the gateway waits for the answers before it), or
    after the client read the error (a Query: the batch is known failed when it
    arrives)."""
    api = Api(gw, "reviewer")
    first = f"UPDATE {table} SET qty = 7 WHERE id = 4"
    second = f"UPDATE {table} SET qty = 8 WHERE id = 5"
    fail = build.parse("", "select 1/0") + build.bind("", "") + build.execute("")

    def run(sql: str) -> bytes:
        return build.parse("", sql) + build.bind("", "") + build.execute("")

    with RawClient(gw.port, timeout=30) as client:
        login = client.login("agent", gw.token("agent"), "it", options=WAIT_OPTION)
        assert login[-1].type == "Z", login
        started = time.monotonic()
        client.send(fail + run(first) + build.sync())
        replies = _until_ready(client)
        # 1/0 is folded when the statement is planned, at Bind.
        assert [m.type for m in replies] == ["1", "E", "Z"], replies
        assert b"C22012\0" in replies[1].body, replies
        assert time.monotonic() - started < 5, "held for the review's inline wait"

        client.send(fail)
        assert client.read_until("E")[-1].type == "E"
        started = time.monotonic()
        # A Query in the failed batch: skipped by the server as well (the portal of a
        # Bind there would be unknown to the gateway, so an Execute is no longer held).
        client.send(build.query(second) + build.sync())
        assert [m.type for m in _until_ready(client)] == ["Z"]
        assert time.monotonic() - started < 5

        assert [m.type for m in client.query("select 1")] == ["T", "D", "C", "Z"]
    assert qty(it_database, table, 4) == 0 and qty(it_database, table, 5) == 0
    for sql in (first, second):
        assert not _reviews_of(api, sql), sql
        assert [r["status"] for r in _records(gw, sql)] == ["not_executed"], sql


def test_a_statement_in_a_failed_transaction_files_no_review_and_keeps_the_approval(
    gw: Gateway, it_database: str, table: str
) -> None:
    # Not a failed batch: a failed transaction block. PostgreSQL refuses every statement
    # but ROLLBACK/COMMIT there, so a review would ask a human about nothing.
    api = Api(gw, "reviewer")
    update = f"UPDATE {table} SET qty = 6 WHERE id = 3"
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        review_id = pending_error(conn, update)
    api.post(f"/reviews/{review_id}/approve", {"reason": "fine"})
    before = len(_reviews_of(api, update))

    with psycopg.connect(gw.dsn("agent", options=WAIT)) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.InFailedSqlTransaction) as refused:
            conn.execute(update)
        assert time.monotonic() - started < 5, "held for the review's inline wait"
        assert "no review was filed" in str(refused.value)
        assert qty(it_database, table, 3) == 0
        assert len(_reviews_of(api, update)) == before  # none filed
        assert api.get(f"/reviews/{review_id}")["status"] == "approved"  # not used up
        conn.rollback()
        conn.execute(update)  # after ROLLBACK, the approval runs it, once
        conn.commit()
    assert qty(it_database, table, 3) == 6

    rule = "wardgate:failed-transaction"
    records = _records_with(gw, update, "ok", rule=rule)
    refused_records = [r for r in records if r["verdict"]["rule"] == rule]
    assert refused_records and refused_records[0]["status"] == "blocked", records
    assert [r["status"] for r in records].count("ok") == 1, records


def test_a_rollback_earlier_in_the_same_batch_sends_the_statement_for_review(
    gw: Gateway, it_database: str, table: str
) -> None:
    # The last ReadyForQuery said the transaction failed, but a ROLLBACK in the same
    # pipeline (no ReadyForQuery between) ends it before the held statement would run:
    # the gateway must not answer 25P02 for it, but hold it for a review as usual.
    update = f"UPDATE {table} SET qty = 7 WHERE id = 4"
    with psycopg.connect(gw.dsn("agent")) as conn:
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as held:
            with conn.pipeline():
                conn.execute("rollback")
                conn.execute(update)
        assert "approval pending" in str(held.value)
    assert qty(it_database, table, 4) == 0
    assert _reviews_of(Api(gw, "reviewer"), update)  # filed
