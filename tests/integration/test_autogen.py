"""AutoGen (AgentChat 0.7) through wardgate, with real AutoGen objects against a real
gateway and PostgreSQL: the examples/autogen_sod.py run end to end (masking, a block, a
proposal a different human approves, the audit trail), WardgateApproval as a
CodeExecutorAgent's approval function, and the MCP workbench."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from autogen_agentchat.agents import ApprovalRequest, ApprovalResponse, CodeExecutorAgent
from autogen_agentchat.messages import TextMessage
from autogen_core.models import AssistantMessage, SystemMessage, UserMessage
from autogen_ext.code_executors.local import LocalCommandLineCodeExecutor

from tests.integration.conftest import ROOT, Gateway, admin_conn, make_gateway
from tests.integration.test_mcp import mcp_config
from wardgate.integrations.autogen import WardgateApproval, wait_for_review, wardgate_workbench

pytestmark = [
    pytest.mark.integration,
    # autogen-ext 0.7.5's McpWorkbench opens its session with mcp's deprecated
    # streamablehttp_client; nothing a caller can choose avoids it.
    pytest.mark.filterwarnings("ignore:Use `streamable_http_client` instead:DeprecationWarning"),
]

EXAMPLE = ROOT / "examples" / "autogen_sod.py"
CLEAR_EMAILS = ("amelie.fischer@example.com", "o.bennett@example.org", "lucas.moreau@example.com")


@pytest.fixture(scope="module")
def ag_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("autogen"), mcp_config(it_database))
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture
def demo_shop(it_database: str) -> Iterator[None]:
    with admin_conn(it_database) as conn:
        conn.execute((ROOT / "examples" / "demo_shop.sql").read_text())
    yield
    with admin_conn(it_database) as conn:
        conn.execute("drop schema if exists shop cascade")


def url(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.api_port}"


def api(gw: Gateway, principal: str) -> httpx.Client:
    return httpx.Client(
        base_url=url(gw) + "/api/v1",
        headers={"Authorization": f"Bearer {gw.token(principal)}"},
        timeout=30,
    )


def until(what: str, check: Any, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


# -- the example, end to end -----------------------------------------------------------------


def test_example_agent_proposes_and_a_human_approves(
    ag_gw: Gateway, it_database: str, demo_shop: None, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["WARDGATE_TOKEN"] = ag_gw.token("agent")
    output = tmp_path / "example.out"
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--url", url(ag_gw), "--connection", "it"]
            + ["--wait", "60"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with api(ag_gw, "reviewer") as reviewer:

            def pending_proposal() -> dict[str, Any] | None:
                assert proc.poll() is None, output.read_text()
                found = reviewer.get("/reviews", params={"status": "pending", "kind": "proposal"})
                return next(iter(found.json()["reviews"]), None)

            review = until("the agent's proposal", pending_proposal, 60)
            assert review["principal"] == "agent" and review["connection"] == "it"
            assert "stuck in 'pending'" in review["justification"]
            approved = reviewer.post(f"/reviews/{review['id']}/approve", json={"reason": "ok"})
            assert approved.status_code == 200, approved.text
        assert proc.wait(60) == 0, output.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    text = output.read_text()

    assert "-> query(connection='it', sql='SELECT * FROM shop.customers ORDER BY id')" in text
    assert not any(email in text for email in CLEAR_EMAILS), text
    assert re.search(r'"a\*+@\*+\.com"', text), text  # amelie.fischer@example.com, masked
    assert "DE89370400440532013000" not in text
    assert re.search(r"<- ERROR: .*wardgate: blocked by guardrail:no-drop", text), text
    assert f"waiting for a human: wardgate reviews approve {review['id']}" in text
    assert f"review {review['id']} is executed" in text
    assert '"status": "executed"' in text  # the agent's own review_status call
    with admin_conn(it_database) as conn:
        statuses = dict(conn.execute("select id, status from shop.orders order by id").fetchall())
    assert statuses == {1001: "shipped", 1002: "paid", 1003: "pending", 1004: "paid", 1005: "paid"}

    # The audit log: one MCP session of the agent with its actions, and the review in it.
    def audit() -> tuple[list[str], list[dict[str, Any]]] | None:
        db = sqlite3.connect(ag_gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
        try:
            sessions = db.execute(
                "select id from sessions where protocol = 'mcp' and principal = 'agent'"
            ).fetchall()
            if len(sessions) != 1:
                return None
            events = db.execute(
                "select type, payload from audit_events where session_id = ? order by id",
                sessions[0],
            ).fetchall()
        finally:
            db.close()
        types = [t for t, _ in events]
        if "review.result" not in types or "session.end" not in types:
            return None
        return types, [json.loads(p) for t, p in events if t == "action"]

    types, actions = until("the audit events", audit, 15)
    done = {(a["text"], a["status"]) for a in actions}
    assert ("SELECT * FROM shop.customers ORDER BY id", "ok") in done
    assert ("DROP TABLE shop.orders", "blocked") in done
    reviews = [t for t in types if t.startswith("review.")]
    assert reviews[0] == "review.requested" and reviews[-1] == "review.result"
    assert {"review.vote.approve", "review.approved"} <= set(reviews)


def test_example_says_when_the_token_is_refused(ag_gw: Gateway) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    env["WARDGATE_TOKEN"] = "wg_not_a_token"
    ran = subprocess.run(
        [sys.executable, str(EXAMPLE), "--url", url(ag_gw), "--connection", "it"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 1
    assert ran.stderr.strip() == f"wardgate at {url(ag_gw)} refused WARDGATE_TOKEN: HTTP 401"


# -- WardgateApproval ------------------------------------------------------------------------


def request(code: str) -> ApprovalRequest:
    return ApprovalRequest(
        code=f"```python\n{code}\n```",
        context=[
            SystemMessage(content="You write Python."),
            UserMessage(content="How many orders are pending?", source="user"),
            AssistantMessage(content=f"Let me count:\n```python\n{code}\n```", source="coder"),
        ],
    )


async def decide(gw: Gateway, code: str, decision: str, reason: str) -> str:
    """As the human ``reviewer``: find the pending review of this code and decide it."""
    headers = {"Authorization": f"Bearer {gw.token('reviewer')}"}
    async with httpx.AsyncClient(base_url=url(gw) + "/api/v1", headers=headers) as reviewer:
        for _ in range(150):
            listed = (await reviewer.get("/reviews", params={"status": "pending"})).json()
            mine = [r for r in listed["reviews"] if r["kind"] == "code" and code in r["text"]]
            if mine:
                review_id = str(mine[0]["id"])
                voted = await reviewer.post(
                    f"/reviews/{review_id}/{decision}", json={"reason": reason}
                )
                assert voted.status_code == 200, voted.text
                return review_id
            await asyncio.sleep(0.1)
    raise AssertionError("the code review never appeared")


def ask_and_decide(
    gw: Gateway, code: str, decision: str, reason: str = ""
) -> tuple[ApprovalResponse, str, list[str]]:
    said: list[str] = []
    approval = WardgateApproval(
        url(gw), gw.token("agent"), wait=30, poll=0.1, context="coder", announce=said.append
    )

    async def both() -> tuple[ApprovalResponse, str]:
        return await asyncio.gather(approval(request(code)), decide(gw, code, decision, reason))

    answer, review_id = asyncio.run(both())
    return answer, review_id, said


def test_approval_is_granted_by_a_human_and_used_once(ag_gw: Gateway) -> None:
    code = f"print({uuid.uuid4().int % 1000})"
    answer, review_id, said = ask_and_decide(ag_gw, code, "approve", "fine")
    assert answer.approved is True
    assert answer.reason == f"approved by reviewer in review {review_id}"
    assert said == [
        f"wardgate: code from coder waits for a human approval: review {review_id}; approve "
        f"with `wardgate reviews approve {review_id}` or at "
        f"http://127.0.0.1:{ag_gw.api_port}/ui/reviews/{review_id}"
    ]
    with api(ag_gw, "agent") as agent:
        review = agent.get(f"/reviews/{review_id}").json()
        assert review["status"] == "executed" and review["principal"] == "agent"
        assert review["justification"].startswith("user: How many orders are pending? | coder:")
        assert "[code]" in review["justification"] and code not in review["justification"]
        again = agent.post(f"/reviews/{review_id}/use")
        assert again.status_code == 409 and "executed" in again.json()["detail"]


def test_approval_denied_carries_the_humans_reason(ag_gw: Gateway) -> None:
    code = f"import shutil; shutil.rmtree('/srv/{uuid.uuid4().hex[:6]}')"
    answer, review_id, _ = ask_and_decide(ag_gw, code, "deny", "never delete /srv")
    assert answer.approved is False
    assert answer.reason == f"denied by reviewer in review {review_id}: never delete /srv"


def test_approval_times_out_and_the_review_stays_pending(ag_gw: Gateway) -> None:
    code = f"print('slow human {uuid.uuid4().hex[:6]}')"
    approval = WardgateApproval(url(ag_gw), ag_gw.token("agent"), wait=1, poll=0.2, announce=print)
    started = time.monotonic()
    answer = asyncio.run(approval(request(code)))
    assert time.monotonic() - started < 10
    assert answer.approved is False
    with api(ag_gw, "reviewer") as reviewer:
        (review,) = [
            r
            for r in reviewer.get("/reviews", params={"status": "pending"}).json()["reviews"]
            if code in r["text"]
        ]
        assert f"review {review['id']} is still pending" in answer.reason
        assert f"wardgate reviews approve {review['id']}" in answer.reason
        # The retry the message describes: a human approves later, the same code asks again.
        assert reviewer.post(f"/reviews/{review['id']}/approve", json={}).status_code == 200
    retried = asyncio.run(approval(request(code)))
    assert retried.approved is True and review["id"] in retried.reason


def test_approval_fails_closed(ag_gw: Gateway) -> None:
    request_ = request("print(1)")
    nowhere = WardgateApproval("http://127.0.0.1:1", "wg_not_sent_anywhere", wait=1)
    unreachable = asyncio.run(nowhere(request_))
    assert unreachable.approved is False and "could not get an approval" in unreachable.reason
    assert "wg_not_sent_anywhere" not in repr(nowhere) + unreachable.reason
    wrong = WardgateApproval(url(ag_gw), "wg_wrong_token", wait=1)
    refused = asyncio.run(wrong(request_))
    assert refused.approved is False and "HTTP 401" in refused.reason
    assert "wg_wrong_token" not in refused.reason


@pytest.mark.filterwarnings("ignore:Using LocalCommandLineCodeExecutor:UserWarning")
def test_code_executor_agent_runs_code_only_after_approval(ag_gw: Gateway, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:8]
    code = f"print('approved run {marker}')"

    async def run() -> str:
        executor = LocalCommandLineCodeExecutor(work_dir=tmp_path, timeout=30)
        agent = CodeExecutorAgent(
            "executor",
            executor,
            approval_func=WardgateApproval(
                url(ag_gw), ag_gw.token("agent"), wait=30, poll=0.1, announce=lambda _: None
            ),
        )
        task = TextMessage(content=f"```python\n{code}\n```", source="coder")
        result, _ = await asyncio.gather(
            agent.run(task=task), decide(ag_gw, code, "approve", "harmless")
        )
        final = result.messages[-1]
        assert isinstance(final, TextMessage)
        return final.content

    assert f"approved run {marker}" in asyncio.run(run())


# -- the workbench ---------------------------------------------------------------------------


def test_workbench_lists_and_calls_wardgate_tools(ag_gw: Gateway) -> None:
    async def run() -> tuple[set[str], Any]:
        async with wardgate_workbench(url(ag_gw), ag_gw.token("agent")) as wb:
            tools = {t["name"] for t in await wb.list_tools()}
            result = await wb.call_tool("query", {"connection": "it", "sql": "select 6 * 7"})
            return tools, result

    tools, result = asyncio.run(run())
    assert tools == {
        "list_connections",
        "describe",
        "query",
        "propose_change",
        "review_status",
        "request_access",
    }
    assert not result.is_error and json.loads(result.to_text())["rows"] == [["42"]]


def test_wait_for_review_is_bounded(ag_gw: Gateway) -> None:
    with api(ag_gw, "agent") as agent:
        filed = agent.post("/reviews", json={"code": f"print('{uuid.uuid4().hex}')"})
    review_id = filed.json()["id"]
    started = time.monotonic()
    review = asyncio.run(
        wait_for_review(url(ag_gw), ag_gw.token("agent"), review_id, wait=0.5, poll=0.1)
    )
    assert review["status"] == "pending" and time.monotonic() - started < 5
