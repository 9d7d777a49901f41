"""attack17b: an approved statement's review status must follow what the server really did
with its transaction, whatever the agent does around it."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, make_gateway, running_gateway

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def review_gateway(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One reviews gateway for this module's scenarios (each has its own table and review), its operator reviewing admin statements too (a DO block)."""
    from tests.integration.test_reviews import review_config

    config = review_config(it_database).replace(
        "proposer: {read: allow, write: review, ddl: block, admin: block}",
        "proposer: {read: allow, write: review, ddl: block, admin: review}",
    )
    assert "admin: review" in config
    with running_gateway(tmp_path_factory.mktemp("reviews"), config) as gw:
        yield gw


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


def _pipelined_failure_before_sync(conn: psycopg.Connection[Any], update: str) -> bool:
    # Extended protocol, one Sync: the UPDATE and the failing SELECT share a transaction.
    with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
        conn.execute(update)
        conn.execute("SELECT 1/0")
    return False


def _commit_inside_one_query(conn: psycopg.Connection[Any], update: str) -> bool:
    # The approved string's own COMMIT keeps the UPDATE; the failure after it does not undo it.
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute(update)
    return True


_commit_inside_one_query.suffix = "; COMMIT; SELECT 1/0"  # type: ignore[attr-defined]


def _rollback_inside_one_query(conn: psycopg.Connection[Any], update: str) -> bool:
    conn.execute(update)
    return False


_rollback_inside_one_query.suffix = "; ROLLBACK; SELECT 1"  # type: ignore[attr-defined]


def _pipelined_commit_then_failure(conn: psycopg.Connection[Any], update: str) -> bool:
    with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
        conn.execute(update)
        conn.execute("COMMIT")
        conn.execute("SELECT 1/0")
    return True


def _do_block_commits_then_fails(conn: psycopg.Connection[Any], update: str) -> bool:
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute(update)
    return True


def _procedure_commits_then_fails(conn: psycopg.Connection[Any], update: str) -> bool:
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute(update)
    return True


def _rollback_and_chain_then_commit(conn: psycopg.Connection[Any], update: str) -> bool:
    conn.execute("BEGIN")
    conn.execute(update)
    conn.execute("ROLLBACK AND CHAIN")
    conn.execute("COMMIT")  # commits the chained, empty transaction
    return False


def _commit_and_chain_then_rollback(conn: psycopg.Connection[Any], update: str) -> bool:
    conn.execute("BEGIN")
    conn.execute(update)
    conn.execute("COMMIT AND CHAIN")
    conn.execute("ROLLBACK")  # rolls back the chained, empty transaction
    return True


SCENARIOS: list[Callable[..., bool]] = [
    _rollback_and_chain_then_commit,
    _commit_and_chain_then_rollback,
    _procedure_commits_then_fails,
    _do_block_commits_then_fails,
    _pipelined_failure_before_sync,
    _commit_inside_one_query,
    _rollback_inside_one_query,
    _pipelined_commit_then_failure,
    _rollback_to_with_trailing_comment,
    _rollback_to_unicode_escape_name,
    _rollback_to_non_ascii_case,
    _leading_comment_rollback_to,
    _rollback_to_without_savepoint_word_in_parens,
]


COMMITS_INSIDE = (_procedure_commits_then_fails, _do_block_commits_then_fails)
PIPELINED = (_pipelined_failure_before_sync, _pipelined_commit_then_failure)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.strip("_"))
def test_review_status_follows_the_servers_transaction(
    it_database: str, review_gateway: Gateway, table: str, scenario: Callable[..., bool]
) -> None:
    from tests.integration.test_reviews import Api, cli_as, pending_error, qty

    # One gateway for every scenario (each has its own table and review); its operator
    # reviews admin statements too, for the DO block (write scenarios are not affected).
    gw = review_gateway
    try:
        update = f"UPDATE {table} SET qty = 7 WHERE id = 3" + getattr(scenario, "suffix", "")
        if scenario is _do_block_commits_then_fails:
            update = f"DO $$BEGIN {update}; COMMIT; PERFORM 1/0; END$$"
        if scenario is _procedure_commits_then_fails:
            # A procedure the agent may CALL (a write: reviewed), that commits, then fails.
            with admin_conn(it_database) as admin:
                admin.execute(
                    f"CREATE PROCEDURE {table}_restock() LANGUAGE plpgsql AS "
                    f"$$BEGIN {update}; COMMIT; PERFORM 1/0; END$$"
                )
                admin.execute(f"GRANT EXECUTE ON PROCEDURE {table}_restock() TO PUBLIC")
            update = f"CALL {table}_restock()"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            if scenario in PIPELINED:
                # A pipeline's review is filed by the pipeline (the same statement in it).
                with pytest.raises(psycopg.Error) as info, conn.pipeline():
                    conn.execute(update)
                    conn.execute("SELECT 1")
                found = re.search(r"review (r_[a-z0-9]+)", str(info.value))
                assert found is not None, info.value
                review_id = found.group(1)
            else:
                review_id = pending_error(conn, update)
            cli_as(gw, "reviewer", "reviews", "approve", review_id)
            kept = scenario(conn, update)
        assert qty(it_database, table, 3) == (7 if kept else 0)  # the server's real state
        api = Api(gw, "reviewer")
        shown = _settled(api, review_id)
        if scenario in COMMITS_INSIDE:
            # It failed, but not before its COMMIT: the approver must not read "failed"
            # as "nothing was kept".
            assert shown["status"] == "failed", shown
            assert shown["result"]["transaction"] == "unknown", shown
            assert "division by zero" in shown["result"]["error"], shown
            assert "check the target" in shown["result"]["error"], shown
            return
        want = "executed" if kept else "rolled_back"
        assert shown["status"] == want, shown
    finally:
        while Api.opened:
            Api.opened.pop().client.close()


def test_a_line_separator_does_not_show_comment_as_a_where_clause(
    it_database: str, tmp_path: Path, table: str
) -> None:
    """The agent ends a `--` comment with U+2028 (a line break to a terminal or browser,
    not to PostgreSQL): the approver reads `AND id = 3` on its own line, and every row
    is updated."""
    from tests.integration.browser import set_password
    from tests.integration.test_reviews import cli_as, pending_error, qty, review_config
    from tests.integration.test_web_auth import sign_in, ui

    gw = make_gateway(tmp_path / "gw", review_config(it_database))
    gw.start()
    try:
        update = f"UPDATE {table} SET qty = 7 WHERE true -- restock one row:\u2028  AND id = 3"
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            review_id = pending_error(conn, update)
            shown = cli_as(gw, "reviewer", "reviews", "show", review_id).stdout
            set_password(gw, "reviewer")
            with ui(gw) as web:
                assert sign_in(web, "reviewer", "correct horse battery").status_code in (200, 303)
                page = web.get(f"/ui/reviews/{review_id}").text
            cli_as(gw, "reviewer", "reviews", "approve", review_id)
            conn.execute(update)
        # What ran: WHERE true, every row.
        assert qty(it_database, table, 1) == 7 and qty(it_database, table, 3) == 7
        # What the approver read must not break the line where PostgreSQL does not.
        # (the CLI's wrapping turned it into a real line break: `AND id = 3` stood alone)
        assert "\u2028" not in shown and "restock one row:\\u2028" in shown, shown
        assert "\u2028" not in page and "&#8232;" not in page
        assert "\\u2028" in page
    finally:
        gw.stop()


def _delete_behind_a_forged_sweep(db_path: str, before: int) -> int:
    """Store write access: delete the first approval vote before event ``before``, and
    append a `retention.swept` event naming it (correct hash), moving the head. Returns
    the vote's event id."""
    from wardgate.audit.chain import canonical_json, event_hash

    db = sqlite3.connect(db_path)
    try:
        vote = db.execute(
            "select id, hash, connection from audit_events where type = 'review.vote.approve' "
            "and id < ? order by id limit 1",
            (before,),
        ).fetchone()
        assert vote is not None
        first, digest, connection = vote
        db.execute("delete from audit_events where id = ?", (first,))
        last_id, last_hash = db.execute("select last_id, last_hash from audit_head").fetchone()
        runs = [[first, first, digest]]
        payload = canonical_json(
            {"connection": connection, "retention_days": 0, "before": time.time(),
             "events": 1, "sessions": 0, "recordings": 0, "runs": runs}
        )  # fmt: skip
        row = dict(
            id=last_id + 1, ts=time.time(), type="retention.swept", session_id="",
            principal="wardgate", connection=connection, payload=payload,
        )  # fmt: skip
        new_hash = event_hash(last_hash, **row)  # type: ignore[arg-type]
        db.execute(
            "insert into audit_events (id, ts, type, session_id, principal, connection, "
            "payload, prev_hash, hash) values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (*row.values(), last_hash, new_hash),
        )
        db.execute("update audit_head set last_id = ?, last_hash = ?", (last_id + 1, new_hash))
        db.commit()
    finally:
        db.close()
    return int(first)


def test_the_gateway_does_not_sign_a_forged_sweep_into_the_chain(
    it_database: str, tmp_path: Path, table: str
) -> None:
    """The attacker forges the sweep while the gateway runs (no key needed): the
    gateway's own checkpoint at shutdown must not vouch for it."""
    from tests.integration.test_reviews import cli_as, pending_error, review_config
    from wardgate.audit.checkpoint import generate_key

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
            conn.execute(f"UPDATE {table} SET qty = 9 WHERE id = 2")
        exported = gw.cli("audit", "checkpoint", "--now").stdout  # kept off the host
        signed = json.loads(exported)["seq"]
        store = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
        deleted = _delete_behind_a_forged_sweep(store, signed)
    finally:
        gw.stop()  # the gateway signs the head at shutdown
    cp = tmp_path / "cp.json"
    cp.write_text(exported)
    db = sqlite3.connect(store)
    try:
        assert (
            db.execute("select count(*) from audit_events where id = ?", (deleted,)).fetchone()[0]
            == 0
        )
    finally:
        db.close()
    verified = gw.cli(
        "audit", "verify", "--checkpoint", str(cp), "--public-key", f"{key}.pub", check=False
    )
    assert verified.returncode == 1, verified.stdout + verified.stderr
    plain = gw.cli("audit", "verify", check=False)
    assert plain.returncode == 1, plain.stdout + plain.stderr


def _fast_refusals(config: str) -> str:
    """address_failures 20 (the default: 4 x login_failures), and refusals answered
    after 1 s instead of up to 30 s: what is counted is how many guesses were checked,
    not how long a refusal takes (that is tests/unit/test_ratelimit.py's)."""
    limits = "limits: {login_failures: 5,"
    assert limits in config
    return config.replace(limits, "limits: {login_max_delay: 1s, login_failures: 5,", 1)


def test_concurrent_web_guesses_are_limited_by_the_address_threshold(
    it_database: str, tmp_path: Path
) -> None:
    """Brute force of an approver's web password: a burst of concurrent wrong
    passwords from one address must not get more checks than the threshold allows."""
    import asyncio

    import httpx

    from tests.integration.browser import set_password
    from tests.integration.conftest import base_config
    from tests.integration.test_web_auth import form_token

    gw = make_gateway(tmp_path / "gw", _fast_refusals(base_config(it_database)))
    gw.start()
    try:
        set_password(gw, "reviewer")

        async def burst() -> list[int]:
            base = f"http://127.0.0.1:{gw.api_port}"
            async with httpx.AsyncClient(base_url=base, timeout=120) as web:
                page = await web.get("/ui/login")
                data = {"username": "reviewer", "csrf": form_token(page)}

                async def guess(i: int) -> int:
                    r = await web.post("/ui/login", data={**data, "password": f"guess-{i}"})
                    return r.status_code

                return list(await asyncio.gather(*(guess(i) for i in range(60))))

        codes = asyncio.run(burst())
        checked = codes.count(401)  # a password check that answered "wrong"
        assert checked + codes.count(429) == 60, codes
        assert checked <= 21, f"{checked} of 60 concurrent guesses were checked: {codes}"
    finally:
        gw.stop()


def test_a_known_browser_cookie_does_not_lift_the_limit_on_its_own_guesses(
    it_database: str, tmp_path: Path
) -> None:
    """docs/web.md: a known browser's own wrong passwords are refused past
    address_failures. Whoever holds the approver's known-browser cookie (a shared
    machine) must not guess the approver's (changed) password without a limit."""
    import asyncio

    import httpx

    from tests.integration.browser import set_password
    from tests.integration.conftest import base_config
    from tests.integration.test_web_auth import form_token, sign_in, ui

    gw = make_gateway(tmp_path / "gw", _fast_refusals(base_config(it_database)))
    gw.start()
    try:
        set_password(gw, "reviewer")
        with ui(gw) as web:
            assert sign_in(web, "reviewer", "correct horse battery").status_code in (200, 303)
            known = web.cookies.get("wardgate_known", path="/ui/login")
        assert known

        async def burst() -> list[int]:
            base = f"http://127.0.0.1:{gw.api_port}"
            cookies = httpx.Cookies()
            cookies.set("wardgate_known", known, path="/ui/login")
            async with httpx.AsyncClient(base_url=base, timeout=120, cookies=cookies) as web:
                page = await web.get("/ui/login")
                data = {"username": "reviewer", "csrf": form_token(page)}

                async def guess(i: int) -> int:
                    r = await web.post("/ui/login", data={**data, "password": f"guess-{i}"})
                    return r.status_code

                return list(await asyncio.gather(*(guess(i) for i in range(40))))

        codes = asyncio.run(burst())
        checked = codes.count(401)
        assert checked + codes.count(429) == 40, codes
        assert checked <= 21, f"{checked} of 40 guesses from the known browser were checked"
    finally:
        gw.stop()


@pytest.mark.parametrize("client", ["mcp", "psql"])
def test_review_status_does_not_hand_the_agent_an_unmasked_server_error(
    it_database: str, tmp_path: Path, client: str
) -> None:
    """A masked agent runs an approved UPDATE whose server error quotes a value it reads
    (a cast of an e-mail column): the query's answer is masked, and review_status (the
    review's result, with the server's error) must be masked the same way."""
    import httpx

    from tests.integration.test_mcp import body, call, mcp_config

    shop = "shop_a17b"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {shop} (id int primary key, email text, qty int)")
        conn.execute(f"insert into {shop} values (1, 'jane.doe@example.com', 1), (2, 'x', 2)")
    gw = make_gateway(tmp_path / "gw", mcp_config(it_database))
    gw.start()
    try:
        update = {
            "connection": "it",
            "sql": f"update {shop} set qty = (select email from {shop} where id = 1)::int "
            "where id = 2",
        }
        if client == "psql":
            from tests.integration.test_reviews import pending_error

            conn = psycopg.connect(gw.dsn("agent"), autocommit=True)
            review_id = pending_error(conn, update["sql"])
        else:
            (pending,) = call(gw, "agent", ("query", update))
            review_id = body(pending)["review_id"]
        with httpx.Client(
            base_url=f"http://127.0.0.1:{gw.api_port}/api/v1",
            headers={"Authorization": f"Bearer {gw.token('reviewer')}"},
        ) as reviewer:
            assert reviewer.post(f"/reviews/{review_id}/approve", json={}).status_code == 200
        if client == "psql":
            with pytest.raises(psycopg.Error) as info:
                conn.execute(update["sql"])
            conn.close()
            ran_text = str(info.value)
        else:
            (ran,) = call(gw, "agent", ("query", update))
            ran_text = json.dumps(ran.model_dump(), default=str)
        assert "invalid input syntax" in ran_text, ran_text
        assert "jane.doe@example.com" not in ran_text  # the query tool masks the error
        deadline = time.monotonic() + 15
        while True:
            (status,) = call(gw, "agent", ("review_status", {"review_id": review_id}))
            answer = body(status)
            if answer["status"] == "failed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert answer["status"] == "failed", answer
        assert "jane.doe@example.com" not in json.dumps(answer), answer
    finally:
        gw.stop()
        with admin_conn(it_database) as conn:
            conn.execute(f"drop table if exists {shop}")


def test_a_query_on_a_connection_the_agent_may_not_use_is_recorded(
    it_database: str, tmp_path: Path
) -> None:
    """Every MCP tool call is an action record (docs/mcp.md): an agent probing for
    connections with `query` leaves one too, as `describe` does."""
    from tests.integration.test_mcp import call, error_text, mcp_config

    gw = make_gateway(tmp_path / "gw", mcp_config(it_database))
    gw.start()
    try:
        probe, described = call(
            gw,
            "agent",
            ("query", {"connection": "prod_a17b", "sql": "select 'probe_a17b'"}),
            ("describe", {"connection": "prod_a17b"}),
        )
        assert error_text(probe) and error_text(described)
        gw.stop()  # everything recorded is in the store
        db = sqlite3.connect(gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
        try:
            rows = [
                json.loads(p)
                for (p,) in db.execute(
                    "select payload from audit_events where type = 'action' and payload like ?",
                    ("%prod_a17b%",),
                )
            ]
        finally:
            db.close()
        texts = [json.dumps(r) for r in rows]
        assert any("describe" in t for t in texts), texts
        assert any("probe_a17b" in t for t in texts), texts
    finally:
        gw.stop()
