"""wardgate as an MCP server, driven by the official MCP SDK client over streamable
HTTP: every tool, blocks and reviews as tool results, masking, recording, bad input."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, Implementation

from tests.integration.conftest import Gateway, admin_conn, make_gateway
from tests.integration.test_reviews import review_config


def mcp_config(database: str) -> str:
    return review_config(database) + (
        "masking:\n"
        "  rules:\n"
        "    - {name: agents-masked, principal_kinds: [agent], entities: [all], strategy: partial}\n"
    )


@pytest.fixture(scope="module")
def mcp_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("mcp"), mcp_config(it_database))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def shop(it_database: str) -> Iterator[str]:
    name = f"shop_{uuid.uuid4().hex[:8]}"
    with admin_conn(it_database) as conn:
        conn.execute(f"create table {name} (id int primary key, email text, qty int)")
        conn.execute(
            f"insert into {name} values (1, 'jane.doe@example.com', 1), (2, 'bob@example.org', 2)"
        )
    yield name
    with admin_conn(it_database) as conn:
        conn.execute(f"drop table if exists {name}")


def call(
    gw: Gateway, principal: str, *calls: tuple[str, dict[str, Any]], **kw: Any
) -> list[CallToolResult]:
    """Open one MCP session as ``principal`` and make these tool calls in it."""

    async def run() -> list[CallToolResult]:
        url = f"http://127.0.0.1:{gw.api_port}/mcp"
        headers = {"Authorization": f"Bearer {gw.token(principal)}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
        ):
            info = Implementation(name="pytest-agent", version="1.0")
            async with ClientSession(read, write, client_info=info) as session:
                await session.initialize()
                return [await session.call_tool(name, args, **kw) for name, args in calls]

    return asyncio.run(run())


def body(result: CallToolResult) -> dict[str, Any]:
    assert not result.isError, result.content
    assert result.structuredContent is not None
    return dict(result.structuredContent)


def error_text(result: CallToolResult) -> str:
    assert result.isError, result
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert "Traceback" not in text
    return text


def test_unauthenticated_calls_are_refused(mcp_gw: Gateway) -> None:
    url = f"http://127.0.0.1:{mcp_gw.api_port}/mcp"
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    r = httpx.post(url, json=hello)
    assert r.status_code == 401
    r = httpx.post(url, json=hello, headers={"Authorization": "Bearer wg_wrong"})
    assert r.status_code == 401 and "wg_wrong" not in r.text


def test_list_connections_and_describe(mcp_gw: Gateway, shop: str) -> None:
    listed, described = call(
        mcp_gw, "agent", ("list_connections", {}), ("describe", {"connection": "it"})
    )
    names = {c["name"]: c for c in body(listed)["connections"]}
    assert names["it"]["roles"] == ["proposer"]
    tables = {t["table"]: t for t in body(described)["tables"]}
    assert [c["name"] for c in tables[f"public.{shop}"]["columns"]] == ["id", "email", "qty"]


def test_query_returns_masked_rows(mcp_gw: Gateway, shop: str) -> None:
    (agent,) = call(
        mcp_gw, "agent", ("query", {"connection": "it", "sql": f"select * from {shop} order by id"})
    )
    (human,) = call(
        mcp_gw,
        "dev",
        (
            "query",
            {"connection": "it", "sql": f"select email from {shop} where id = $1", "params": ["1"]},
        ),
    )
    result = body(agent)
    assert result["columns"] == ["id", "email", "qty"]
    assert result["rows"][0][0] == "1"
    assert result["rows"][0][1] != "jane.doe@example.com" and "@" in result["rows"][0][1]
    assert body(human)["rows"] == [["jane.doe@example.com"]]


def test_dangerous_and_malformed_statements_are_tool_errors(
    mcp_gw: Gateway, it_database: str, shop: str
) -> None:
    dropped, garbage, unknown, bad_args = call(
        mcp_gw,
        "agent",
        ("query", {"connection": "it", "sql": f"DROP TABLE {shop}"}),
        ("query", {"connection": "it", "sql": "SELEKT * FROM"}),
        ("query", {"connection": "nowhere", "sql": "select 1"}),
        ("query", {"connection": "it"}),
    )
    assert "wardgate: blocked by guardrail:no-drop" in error_text(dropped)
    assert "wardgate: blocked by unparsed-statement" in error_text(garbage)
    assert "call list_connections" in error_text(unknown)
    assert "sql" in error_text(bad_args)
    with admin_conn(it_database) as conn:  # nothing reached the server
        assert conn.execute(f"select count(*) from {shop}").fetchone() == (2,)


def test_huge_results_are_capped(mcp_gw: Gateway) -> None:
    (result,) = call(
        mcp_gw,
        "agent",
        ("query", {"connection": "it", "sql": "select g from generate_series(1, 5000) g"}),
    )
    answer = body(result)
    assert len(answer["rows"]) == 200 and answer["truncated"] is True
    assert answer["row_count"] == 5000 and "truncated" in answer["note"]


def test_write_waits_for_a_human_then_runs_once(
    mcp_gw: Gateway, it_database: str, shop: str
) -> None:
    update = {"connection": "it", "sql": f"update {shop} set qty = 10 where id = 1"}
    (pending,) = call(mcp_gw, "agent", ("query", update))
    answer = body(pending)
    assert answer["status"] == "pending_review"
    review_id = answer["review_id"]
    assert "approval pending" in answer["message"] and "review_status" in answer["next"]
    reviewer = httpx.Client(
        base_url=f"http://127.0.0.1:{mcp_gw.api_port}/api/v1",
        headers={"Authorization": f"Bearer {mcp_gw.token('reviewer')}"},
    )
    with reviewer:
        assert reviewer.post(f"/reviews/{review_id}/approve", json={}).status_code == 200
    status, ran, again = call(
        mcp_gw,
        "agent",
        ("review_status", {"review_id": review_id}),
        ("query", update),
        ("query", update),
    )
    assert body(status)["status"] == "approved"
    assert body(ran)["command"] == "UPDATE" and body(ran)["row_count"] == 1
    assert body(again)["status"] == "pending_review" and body(again)["review_id"] != review_id
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select qty from {shop} where id = 1").fetchone() == (10,)


def test_propose_change_and_fetch_the_outcome(mcp_gw: Gateway, it_database: str, shop: str) -> None:
    statements = [
        f"update {shop} set qty = 7 where id = 1",
        f"update {shop} set qty = 8 where id = 2",
    ]
    blocked, proposed = call(
        mcp_gw,
        "agent",
        (
            "propose_change",
            {"connection": "it", "statements": [f"drop table {shop}"], "justification": "x"},
        ),
        (
            "propose_change",
            {"connection": "it", "statements": statements, "justification": "fix counts"},
        ),
    )
    assert "no-drop" in error_text(blocked)
    review_id = body(proposed)["review_id"]
    with httpx.Client(
        base_url=f"http://127.0.0.1:{mcp_gw.api_port}/api/v1",
        headers={"Authorization": f"Bearer {mcp_gw.token('reviewer')}"},
    ) as reviewer:
        assert reviewer.post(f"/reviews/{review_id}/approve", json={}).status_code == 200
    deadline = time.monotonic() + 15
    while True:
        (status,) = call(mcp_gw, "agent", ("review_status", {"review_id": review_id}))
        if body(status)["status"] in ("executed", "failed") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert body(status)["status"] == "executed" and body(status)["result"]["ok"] is True
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select qty from {shop} order by id").fetchall() == [(7,), (8,)]


def test_request_access_files_a_grant_review(mcp_gw: Gateway) -> None:
    asked, refused, bad = call(
        mcp_gw,
        "agent",
        (
            "request_access",
            {"connection": "it", "role": "engineer", "duration": "15m", "reason": "incident"},
        ),
        (
            "request_access",
            {"connection": "it", "role": "proposer", "duration": "15m", "reason": "x"},
        ),
        (
            "request_access",
            {"connection": "it", "role": "engineer", "duration": "soon", "reason": "x"},
        ),
    )
    answer = body(asked)
    assert (
        answer["kind"] == "grant" and answer["status"] == "pending" and answer["role"] == "engineer"
    )
    assert "grantable roles: engineer" in error_text(refused)
    assert "duration" in error_text(bad)


def test_someone_elses_review_is_not_visible(mcp_gw: Gateway, shop: str) -> None:
    (pending,) = call(
        mcp_gw,
        "agent",
        ("query", {"connection": "it", "sql": f"update {shop} set qty = 3 where id = 2"}),
    )
    review_id = body(pending)["review_id"]
    (other,) = call(mcp_gw, "dev", ("review_status", {"review_id": review_id}))
    assert "no review" in error_text(other)


def test_mcp_sessions_are_recorded_with_client_and_trace(mcp_gw: Gateway) -> None:
    (result,) = call(
        mcp_gw,
        "agent",
        ("query", {"connection": "it", "sql": "select 42"}),
        meta={"trace_id": "conv-7f3a"},
    )
    assert body(result)["rows"] == [["42"]]
    store = mcp_gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    deadline = time.monotonic() + 10
    while True:
        db = sqlite3.connect(store)
        try:
            sessions = db.execute(
                "select id, application_name from sessions where protocol = 'mcp' and principal = 'agent'"
            ).fetchall()
            actions = [
                json.loads(p)
                for (p,) in db.execute("select payload from audit_events where type = 'action'")
            ]
        finally:
            db.close()
        traced = [a for a in actions if a.get("trace_id") == "conv-7f3a"]
        if traced or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert any(name == "pytest-agent 1.0" for _, name in sessions)
    assert traced and traced[0]["text"] == "select 42" and traced[0]["status"] == "ok"


def test_tool_results_are_recorded_masked_with_a_digest(mcp_gw: Gateway, shop: str) -> None:
    """The query tool's result as the agent received it (masked), in the record, and
    shown by `sessions show` and the API beside the statement."""
    sql = f"select id, email from {shop} order by id"
    (result,) = call(mcp_gw, "agent", ("query", {"connection": "it", "sql": sql}))
    sent = body(result)
    assert "jane.doe@example.com" not in json.dumps(sent)  # the agent sees it masked
    store = mcp_gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    deadline = time.monotonic() + 10
    while True:
        db = sqlite3.connect(store)
        try:
            found = db.execute(
                "select session_id, payload from audit_events where type = 'action' "
                "and payload like ?",
                (f"%{shop} order by id%",),
            ).fetchall()
        finally:
            db.close()
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    session_id, payload = found[-1]
    response = json.loads(payload)["result"]
    assert response["format"] == "text/1" and response["complete"] is True
    assert json.loads(response["text"])["rows"] == sent["rows"]
    assert "jane.doe@example.com" not in payload
    assert response["sha256"] == hashlib.sha256(response["text"].encode()).hexdigest()
    shown = mcp_gw.cli("sessions", "show", session_id).stdout
    assert f"response: {response['stream_bytes']} bytes (all recorded)" in shown
    assert sent["rows"][0][1] in shown
    api = httpx.get(
        f"http://127.0.0.1:{mcp_gw.api_port}/api/v1/sessions/{session_id}/export",
        headers={"Authorization": f"Bearer {mcp_gw.token('reviewer')}"},
        timeout=30,
    )
    exported = [json.loads(line) for line in api.text.splitlines()]
    assert any((a.get("result") or {}).get("text") == response["text"] for a in exported)


def test_config_example_has_mcp_json(tmp_path: Path) -> None:
    # the docs' mcp.json snippet is valid JSON with the fields MCP clients read
    from tests.integration.conftest import ROOT

    text = (ROOT / "docs" / "mcp.md").read_text()
    start = text.index("```json\n") + len("```json\n")
    snippet = json.loads(text[start : text.index("```", start)])
    server = snippet["mcpServers"]["wardgate"]
    assert server["url"].endswith("/mcp") and "Authorization" in server["headers"]


def test_client_disconnects_are_not_errors(it_database: str, tmp_path: Path) -> None:
    """An MCP client that goes away mid-stream (its SSE stream, a call whose answer it
    never reads) is an everyday event: no ERROR line, no traceback in the log."""
    gw = make_gateway(tmp_path / "gw", mcp_config(it_database))
    gw.start()
    try:
        url = f"http://127.0.0.1:{gw.api_port}/mcp"
        headers = {
            "Authorization": f"Bearer {gw.token('agent')}",
            "Accept": "application/json, text/event-stream",
        }
        hello = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "dropper", "version": "1"},
            },
        }
        with httpx.Client(headers=headers, timeout=30) as http:
            r = http.post(url, json=hello)
            assert r.status_code == 200, r.text
            sid = r.headers["mcp-session-id"]
            session = {**headers, "mcp-session-id": sid, "mcp-protocol-version": "2025-06-18"}
            http.post(
                url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=session
            )
            # the standalone SSE stream, dropped once it is open
            with http.stream("GET", url, headers=session) as sse:
                assert sse.status_code == 200
            # a slow call whose answer the client does not wait for
            call = {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {
                    "name": "query",
                    "arguments": {
                        "connection": "it",
                        "sql": "select pg_sleep(1), 'gone' as answer",
                    },
                },
            }
            with http.stream("POST", url, json=call, headers=session):
                pass
        time.sleep(2.5)
        # the session still serves a client that comes back
        (again,) = call_tool_after(gw)
        assert not again.isError
    finally:
        gw.stop()
    log = gw.log
    assert "Traceback" not in log, log[-3000:]
    assert " ERROR " not in log, log[-3000:]


def call_tool_after(gw: Gateway) -> list[CallToolResult]:
    return call(gw, "agent", ("query", {"connection": "it", "sql": "select 1 as back"}))


def _mcp_actions(gw: Gateway, session_of: str, count: int) -> list[dict[str, Any]]:
    """The action records of the MCP session that recorded ``session_of`` (a marker in
    one of its actions' text), once ``count`` of them are in the store."""
    store = gw.env["WARDGATE_STORE"].removeprefix("sqlite:///")
    deadline = time.monotonic() + 15
    while True:
        db = sqlite3.connect(store)
        try:
            rows = db.execute(
                "select session_id, payload from audit_events where type = 'action' "
                "and session_id in (select session_id from audit_events where type = 'action' "
                "and payload like ?) order by id",
                (f"%{session_of}%",),
            ).fetchall()
        finally:
            db.close()
        if len(rows) >= count or time.monotonic() > deadline:
            return [json.loads(p) for _, p in rows]
        time.sleep(0.2)


def test_every_tool_call_is_an_action_with_its_arguments_and_masked_result(
    mcp_gw: Gateway, it_database: str, shop: str
) -> None:
    """Not only `query`: each of the gateway's tools is recorded with all its arguments,
    its outcome, and the result the agent got (masked by the agent's rules)."""
    marker = f"why-{uuid.uuid4().hex[:8]}"
    statements = [f"update {shop} set qty = 5 where id = 1"]
    with admin_conn(it_database) as conn:
        conn.execute(f'alter table {shop} add column "jane.doe@example.com" int')
    results = call(
        mcp_gw,
        "agent",
        ("list_connections", {}),
        ("describe", {"connection": "it"}),
        ("propose_change", {"connection": "it", "statements": statements, "justification": marker}),
        ("review_status", {"review_id": "r_nope"}),
        (
            "request_access",
            {"connection": "it", "role": "engineer", "duration": "15m", "reason": marker},
        ),
        ("describe", {"connection": "nope"}),
    )
    proposed = body(results[2])
    assert "no review" in error_text(results[3]) and "nope" in error_text(results[5])
    actions = _mcp_actions(mcp_gw, marker.split()[0], 6)
    by_tool = [(a["text"].split(" ", 1)[0], a) for a in actions]
    assert [t for t, _ in by_tool] == [
        "list_connections",
        "describe",
        "propose_change",
        "review_status",
        "request_access",
        "describe",
    ], [a["text"] for a in actions]
    tools = dict(by_tool[:5])
    # Arguments: the whole call, statements and justification included.
    args = json.loads(tools["propose_change"]["text"].split(" ", 1)[1])
    assert args == {"connection": "it", "statements": statements, "justification": marker}
    assert json.loads(tools["request_access"]["text"].split(" ", 1)[1])["role"] == "engineer"
    # Outcomes and results, as the agent got them.
    assert all(tools[t]["status"] == "ok" for t in ("list_connections", "describe"))
    listed = json.loads(tools["list_connections"]["result"]["text"])
    assert listed == body(results[0])
    described = json.loads(tools["describe"]["result"]["text"])
    assert any(t["table"] == f"public.{shop}" for t in described["tables"])
    filed = json.loads(tools["propose_change"]["result"]["text"])
    assert filed["review_id"] == proposed["review_id"] and filed["status"] == "pending_review"
    assert tools["review_status"]["status"] == "error"
    assert "no review 'r_nope'" in tools["review_status"]["error"]
    assert by_tool[5][1]["status"] == "error" and "nope" in by_tool[5][1]["error"]
    granted = tools["request_access"]["result"]
    assert granted["sha256"] == hashlib.sha256(granted["text"].encode()).hexdigest()
    assert json.loads(granted["text"])["kind"] == "grant"
    # The agent's masking rules hold in the recorded result: a column named like an
    # e-mail address is in the describe result, not in the clear in the record.
    assert any(
        c["name"] == "jane.doe@example.com"
        for t in body(results[1])["tables"]
        for c in t["columns"]
    )
    assert "jane.doe@example.com" not in json.dumps([a.get("result") for a in actions])
    assert "@" in described_text(tools["describe"])  # masked, not dropped


def described_text(action: dict[str, Any]) -> str:
    return str(action["result"]["text"])
