"""attack17b: an approved statement's review status must follow what the server really did
with its transaction, whatever the agent does around it."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import make_gateway

pytestmark = pytest.mark.integration


def _settled(api: Any, review_id: str) -> dict[str, Any]:
    """The review once its transaction's outcome is written (or as it is after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        shown: dict[str, Any] = api.get(f"/reviews/{review_id}")
        if shown.get("result") is not None or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


# Each scenario runs the approved ``update`` and returns whether the server kept it.
def _rollback_to_with_trailing_comment(conn: psycopg.Connection[Any], update: str) -> bool:
    # The server rolls back to `a` (set before the update); the comment names `b`.
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT a")
    conn.execute(update)
    conn.execute("SAVEPOINT b")
    conn.execute("ROLLBACK TO SAVEPOINT a -- then b")
    conn.execute("COMMIT")
    return False


def _rollback_to_unicode_escape_name(conn: psycopg.Connection[Any], update: str) -> bool:
    # U&"\0061" is `a`; the savepoint literally named \0061 was set after the update.
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT a")
    conn.execute(update)
    conn.execute('SAVEPOINT "\\0061"')
    conn.execute('ROLLBACK TO SAVEPOINT U&"\\0061"')
    conn.execute("COMMIT")
    return False


def _rollback_to_non_ascii_case(conn: psycopg.Connection[Any], update: str) -> bool:
    # PostgreSQL folds only ASCII letters of a bare name: É and é are two savepoints.
    conn.execute("BEGIN")
    conn.execute("SAVEPOINT É")
    conn.execute(update)
    conn.execute("SAVEPOINT é")
    conn.execute("ROLLBACK TO SAVEPOINT É")
    conn.execute("COMMIT")
    return False


def _leading_comment_rollback_to(conn: psycopg.Connection[Any], update: str) -> bool:
    # A ROLLBACK TO a savepoint set after the update, behind a comment: the update stays.
    conn.execute("BEGIN")
    conn.execute(update)
    conn.execute("SAVEPOINT b")
    conn.execute("/* undo the check */ ROLLBACK TO SAVEPOINT b")
    conn.execute("COMMIT")
    return True


def _rollback_to_without_savepoint_word_in_parens(
    conn: psycopg.Connection[Any], update: str
) -> bool:
    conn.execute("BEGIN")
    conn.execute(update)
    conn.execute("SAVEPOINT b")
    conn.execute("ROLLBACK\nTO b")
    conn.execute("COMMIT")
    return True


SCENARIOS: list[Callable[..., bool]] = [
    _rollback_to_with_trailing_comment,
    _rollback_to_unicode_escape_name,
    _rollback_to_non_ascii_case,
    _leading_comment_rollback_to,
    _rollback_to_without_savepoint_word_in_parens,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_review_status_follows_the_servers_transaction(
    it_database: str, tmp_path: Path, table: str, scenario: Callable[..., bool]
) -> None:
    from tests.integration.test_reviews import Api, cli_as, pending_error, qty, review_config

    gw = make_gateway(tmp_path / "gw", review_config(it_database))
    gw.start()
    try:
        update = f"UPDATE {table} SET qty = 7 WHERE id = 3"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            review_id = pending_error(conn, update)
            cli_as(gw, "reviewer", "reviews", "approve", review_id)
            kept = scenario(conn, update)
        assert qty(it_database, table, 3) == (7 if kept else 0)  # the server's real state
        api = Api(gw, "reviewer")
        shown = _settled(api, review_id)
        want = "executed" if kept else "rolled_back"
        assert shown["status"] == want, shown
    finally:
        while Api.opened:
            Api.opened.pop().client.close()
        gw.stop()
