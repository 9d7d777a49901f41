"""Segregation of duties for an AutoGen agent: the agent proposes, a human approves.

An AgentChat AssistantAgent investigates the demo shop through wardgate's MCP tools: it
reads customers (wardgate masks their PII), tries to drop a table (blocked by policy),
and proposes a fix. wardgate runs the fix only after a different human approved it; the
script waits for that human, then the agent checks the outcome.

    psql -h 127.0.0.1 -U postgres -d test -f examples/demo_shop.sql
    scripts/serve                                      # terminal 1: examples/quickstart.yaml
    export WARDGATE_TOKEN=$(.venv/bin/wardgate token create agent -c examples/quickstart.yaml | tail -1)
    .venv/bin/python examples/autogen_sod.py           # terminal 2: the agent
    # terminal 3, a human approver (not dev: dev sponsors the agent):
    WARDGATE_TOKEN=$(.venv/bin/wardgate token create reviewer -c examples/quickstart.yaml | tail -1) \
        .venv/bin/wardgate reviews approve r_...

The model is scripted (no network but wardgate, no key) unless OPENAI_API_KEY is set
(then OpenAI, or OPENAI_BASE_URL, with OPENAI_MODEL, default gpt-4o-mini). Exits 0 when
the approved change ran, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from typing import Any

import httpx
from autogen_agentchat.agents import AssistantAgent
from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import (
    TextMessage,
    ThoughtEvent,
    ToolCallExecutionEvent,
    ToolCallRequestEvent,
)
from autogen_core import EVENT_LOGGER_NAME, FunctionCall
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    ModelFamily,
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Workbench
from autogen_ext.models.replay import ReplayChatCompletionClient

from wardgate.integrations.autogen import wait_for_review, wardgate_workbench

SYSTEM = (
    "You support a small web shop. You reach its database only through wardgate's tools, "
    "on connection {connection!r}; personal data comes back masked. Investigate with query; "
    "change data only with propose_change (a human reviews every change). A tool error "
    "starting 'wardgate: blocked' is a policy decision: do not work around it."
)
INVESTIGATE = (
    "Customers say their paid orders are stuck in 'pending'. Look at customers and orders, "
    "find the broken orders and propose a fix."
)
REPORT = "A human decided on your proposal {review_id}. Check it with review_status and report."
TOOL_CALLING = ModelInfo(
    vision=False,
    function_calling=True,
    json_output=False,
    structured_output=False,
    family=ModelFamily.UNKNOWN,
)


# -- the model: scripted by default, OpenAI with OPENAI_API_KEY ------------------------------


def call(name: str, thought: str | None = None, **arguments: Any) -> CreateResult:
    return CreateResult(
        finish_reason="function_calls",
        content=[FunctionCall(id=f"call_{name}", name=name, arguments=json.dumps(arguments))],
        usage=RequestUsage(prompt_tokens=0, completion_tokens=0),
        cached=False,
        thought=thought,
    )


def say(text: str) -> CreateResult:
    usage = RequestUsage(prompt_tokens=0, completion_tokens=0)
    return CreateResult(finish_reason="stop", content=text, usage=usage, cached=False)


def investigation(connection: str) -> list[CreateResult]:
    fix = "UPDATE shop.orders SET status = 'paid' WHERE id = {} AND status = 'pending' AND paid_at IS NOT NULL"
    return [
        call("query", connection=connection, sql="SELECT * FROM shop.customers ORDER BY id"),
        call("query", connection=connection, sql="SELECT * FROM shop.orders WHERE status = 'pending'"),
        call(
            "query",
            "The orders table looks inconsistent; I'll drop it and rebuild it.",
            connection=connection,
            sql="DROP TABLE shop.orders",
        ),
        call(
            "propose_change",
            "Dropping is not allowed. Only 1002 and 1005 are wrong: paid, still pending.",
            connection=connection,
            statements=[fix.format(1002), fix.format(1005)],
            justification="Orders 1002 and 1005 were paid (paid_at is set) but are stuck in "
            "'pending': the payment callback failed. Set them to 'paid'.",
        ),
        say(
            "Orders 1002 and 1005 were paid but are stuck in 'pending'. Dropping the table was "
            "blocked by policy, so I proposed a fix that marks them paid; it waits for a human."
        ),
    ]


def report(review_id: str, status: str) -> list[CreateResult]:
    outcome = {
        "executed": "the fix ran: orders 1002 and 1005 are 'paid' now",
        "denied": "a human denied the fix; nothing changed",
        "failed": "wardgate ran the fix but it failed; nothing was committed",
    }.get(status, f"the proposal is {status}; nothing changed yet")
    return [call("review_status", review_id=review_id), say(f"Review {review_id}: {outcome}.")]


def model(script: list[CreateResult]) -> ChatCompletionClient:
    if not os.environ.get("OPENAI_API_KEY"):
        # The replay client warns that it counts no tokens of tool messages: true, harmless.
        logging.getLogger(EVENT_LOGGER_NAME).setLevel(logging.ERROR)
        return ReplayChatCompletionClient(script, model_info=TOOL_CALLING)
    try:
        from autogen_ext.models.openai import OpenAIChatCompletionClient
    except ImportError:
        sys.exit("OPENAI_API_KEY is set: this needs pip install 'autogen-ext[openai]'")
    compatible: dict[str, Any] = {}  # AutoGen knows OpenAI's own models, not others'
    if base_url := os.environ.get("OPENAI_BASE_URL"):
        compatible = {"base_url": base_url, "model_info": TOOL_CALLING}
    return OpenAIChatCompletionClient(
        model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"), **compatible
    )


# -- the conversation ------------------------------------------------------------------------


def show(item: object) -> None:
    if isinstance(item, TextMessage):
        print(f"\n{item.source}: {item.content}")
    elif isinstance(item, ThoughtEvent):
        print(f"{item.source} (thinking): {item.content}")
    elif isinstance(item, ToolCallRequestEvent):
        for c in item.content:
            print(
                f"  -> {c.name}({', '.join(f'{k}={v!r}' for k, v in json.loads(c.arguments).items())})"
            )
    elif isinstance(item, ToolCallExecutionEvent):
        for r in item.content:
            print(f"  <- {'ERROR' if r.is_error else 'result'}: {compact(r.content)}")


def compact(text: str, limit: int = 900) -> str:
    try:
        text = json.dumps(json.loads(text), ensure_ascii=False)
    except ValueError:
        text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " …"


async def turn(
    workbench: Workbench, client: ChatCompletionClient, connection: str, task: str, state: Any
) -> tuple[TaskResult, Any]:
    """One run of the agent, continuing the conversation saved in ``state``."""
    agent = AssistantAgent(
        "shop_agent",
        client,
        workbench=workbench,
        system_message=SYSTEM.format(connection=connection),
        max_tool_iterations=8,
    )
    if state is not None:
        await agent.load_state(state)
    result = None
    async for item in agent.run_stream(task=task):  # to the end: the result comes last
        if isinstance(item, TaskResult):
            result = item
        show(item)
    await client.close()
    assert result is not None
    return result, await agent.save_state()


def proposal_of(result: TaskResult) -> str | None:
    """The review id of the agent's last pending propose_change."""
    found = None
    for message in result.messages:
        if isinstance(message, ToolCallExecutionEvent):
            for r in message.content:
                if r.name == "propose_change" and not r.is_error:
                    found = json.loads(r.content).get("review_id") or found
    return found


async def main(args: argparse.Namespace, token: str) -> int:
    try:  # a clear word now rather than a failing MCP session later
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
            me = (await http.get(f"{args.url}/api/v1/whoami")).raise_for_status().json()
    except httpx.HTTPStatusError as exc:
        sys.exit(f"wardgate at {args.url} refused WARDGATE_TOKEN: HTTP {exc.response.status_code}")
    except httpx.HTTPError as exc:
        sys.exit(f"cannot reach wardgate at {args.url}: {exc}")
    print(f"the agent is {me['principal']} ({me['kind']}) at {args.url}")

    async with wardgate_workbench(args.url, token) as workbench:
        client = model(investigation(args.connection))
        result, state = await turn(workbench, client, args.connection, INVESTIGATE, None)
        review_id = proposal_of(result)
        if review_id is None:
            print("\nThe agent proposed no change.")
            return 1

        print(
            f"\nwaiting for a human: wardgate reviews approve {review_id}  (up to {args.wait:g} s)"
        )
        review = await wait_for_review(args.url, token, review_id, wait=args.wait)
        print(f"review {review_id} is {review['status']}")

        client = model(report(review_id, review["status"]))
        task = REPORT.format(review_id=review_id)
        await turn(workbench, client, args.connection, task, state)
    return 0 if review["status"] == "executed" else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("WARDGATE_URL", "http://127.0.0.1:8080"))
    parser.add_argument("--connection", default="demo")
    parser.add_argument("--wait", type=float, default=600, help="seconds to wait for the human")
    args = parser.parse_args()
    token = os.environ.get("WARDGATE_TOKEN")
    if not token:
        parser.error("set WARDGATE_TOKEN to the agent's wardgate token")
    sys.exit(asyncio.run(main(args, token)))
