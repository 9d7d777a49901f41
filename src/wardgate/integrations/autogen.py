"""AutoGen (AgentChat 0.7) with wardgate: an agent's tools, a human's approval.

- ``wardgate_workbench(url, token)``: an ``McpWorkbench`` on wardgate's MCP server, for
  ``AssistantAgent(workbench=...)``. The agent queries, proposes changes and asks for
  access through the gateway's policy, masking, reviews and audit log.
- ``WardgateApproval(url, token)``: an ``approval_func`` for ``CodeExecutorAgent``. Code
  the agent wants to run on its own side is filed as a wardgate review; it runs only
  after a human (never the agent, never its sponsor unless allowed) approves it, and each
  approval is used once.
- ``wait_for_review(url, token, review_id)``: wait for the outcome of a review the agent
  filed (a proposed change set, an access grant), bounded.

Only users of the ``wardgate[autogen]`` extra import this module.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

try:
    from autogen_agentchat.agents import ApprovalRequest, ApprovalResponse
    from autogen_core.models import LLMMessage, SystemMessage
    from autogen_ext.tools.mcp import McpWorkbench, StreamableHttpServerParams
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        f"wardgate's AutoGen integration needs AutoGen ({exc}): pip install 'wardgate[autogen]'"
    ) from exc

__all__ = [
    "FINAL_STATUSES",
    "WardgateApiError",
    "WardgateApproval",
    "wait_for_review",
    "wardgate_workbench",
]

log = logging.getLogger("wardgate.autogen")

HTTP_SECONDS = 10.0  # one API request; waiting for a human is bounded separately
JUSTIFICATION_CHARS = 1000  # the API takes 2000; reviewers read a summary, not a transcript
MESSAGE_CHARS = 300
MESSAGES_SUMMARISED = 3
# A review in one of these states will not change any more.
FINAL_STATUSES = frozenset(
    {"executed", "failed", "rolled_back", "denied", "expired", "cancelled", "revoked"}
)
# A code review is decided once it is no longer pending (approved is not final: it is used).
_DECIDED = FINAL_STATUSES | {"approved"}
_CODE_FENCE = re.compile(r"```.*?(```|$)", re.DOTALL)


def wardgate_workbench(url: str, token: str, *, timeout: float = 30.0) -> McpWorkbench:
    """wardgate's MCP tools (``list_connections``, ``describe``, ``query``,
    ``propose_change``, ``review_status``, ``request_access``) for an AutoGen agent,
    authenticated as the principal of ``token``. Use it as ``async with`` (or
    ``start()``/``stop()``): one MCP session, recorded as one session in the audit log."""
    return McpWorkbench(
        StreamableHttpServerParams(
            url=url.rstrip("/") + "/mcp",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
    )


class WardgateApiError(Exception):
    """wardgate's REST API refused a request: ``status`` is the HTTP status, the message
    the problem detail."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail


async def wait_for_review(
    url: str,
    token: str,
    review_id: str,
    *,
    wait: float = 300.0,
    poll: float = 1.0,
    until: Collection[str] = FINAL_STATUSES,
) -> dict[str, Any]:
    """The review as the API shows it, once its status is in ``until`` or after ``wait``
    seconds (then its status is still the one before, e.g. ``pending``).

    Raises ``WardgateApiError`` when the API refuses (a review that is not yours: 404)
    and ``httpx.HTTPError`` when wardgate cannot be reached."""
    async with _client(url, token) as http:
        return await _poll(http, review_id, until, wait=wait, poll=poll)


@dataclass(frozen=True, slots=True)
class _Settings:
    url: str
    token: str = field(repr=False)
    wait: float
    poll: float
    context: str
    announce: Callable[[str], object]


class WardgateApproval(functools.partial[Coroutine[Any, Any, ApprovalResponse]]):
    """An ``approval_func`` for AutoGen's ``CodeExecutorAgent`` that asks a human
    through wardgate::

        CodeExecutorAgent("executor", executor, approval_func=WardgateApproval(url, token))

    For each code block the agent wants to run it files a code review
    (``POST /api/v1/reviews``), says once where to approve it, waits up to ``wait``
    seconds, and on approval uses the review (once) and lets the code run. A denial, a
    timeout, an expired review or any error answers "not approved" with the reason
    (fail closed); it never raises into AutoGen. Filing the same code again while its
    review is pending joins that review, so a retry after a timeout keeps waiting for
    the same decision. ``announce`` gets the line that says where to approve (default:
    printed to stderr); ``context`` names the agent to the reviewers.

    It is a ``functools.partial`` of a coroutine function rather than an object with an
    async ``__call__`` because AutoGen tells async approval functions apart with
    ``inspect.iscoroutinefunction``, which sees through partials but (before Python
    3.12) not through ``__call__``.
    """

    def __new__(
        cls,
        url: str,
        token: str,
        *,
        wait: float = 300.0,
        poll: float = 1.0,
        context: str = "autogen",
        announce: Callable[[str], object] | None = None,
    ) -> Self:
        settings = _Settings(
            url=url,
            token=token,
            wait=max(0.0, float(wait)),
            poll=max(0.05, float(poll)),
            context=context,
            announce=announce or _to_stderr,
        )
        return super().__new__(cls, _approve, settings)

    def __repr__(self) -> str:  # the partial's own repr would show the token
        s: _Settings = self.args[0]
        return f"WardgateApproval(url={s.url!r}, wait={s.wait}, context={s.context!r})"


async def _approve(settings: _Settings, request: ApprovalRequest) -> ApprovalResponse:
    review_id = ""
    try:
        async with _client(settings.url, settings.token) as http:
            filed = await _api(
                http,
                "POST",
                "/reviews",
                {
                    "code": request.code,
                    "justification": _justification_of(request.context),
                    "context": settings.context[:200],
                },
            )
            review_id = str(filed["id"])
            if filed["status"] == "pending":
                settings.announce(
                    f"wardgate: code from {settings.context} waits for a human approval: "
                    f"review {review_id}; approve with `wardgate reviews approve {review_id}` "
                    f"or at {filed.get('url', '')}"
                )
            review = await _poll(http, review_id, _DECIDED, wait=settings.wait, poll=settings.poll)
            return await _answer(http, review, settings.wait)
    except Exception as exc:  # fail closed: AutoGen gets "not approved", never an exception
        where = f" (review {review_id})" if review_id else ""
        expected = isinstance(exc, httpx.HTTPError | WardgateApiError)
        log.warning(
            "code approval through wardgate failed%s: %s", where, exc, exc_info=not expected
        )
        return ApprovalResponse(
            approved=False,
            reason=f"wardgate could not get an approval{where}: {_describe(exc)}; "
            "the code was not run",
        )


async def _answer(
    http: httpx.AsyncClient, review: dict[str, Any], waited: float
) -> ApprovalResponse:
    review_id, status = str(review["id"]), str(review["status"])
    votes: list[dict[str, Any]] = review.get("votes") or []
    if status == "approved":
        await _api(http, "POST", f"/reviews/{review_id}/use")  # 409 when someone used it first
        voters = ", ".join(str(v["voter"]) for v in votes if v.get("decision") == "approve")
        return ApprovalResponse(
            approved=True, reason=f"approved by {voters or 'a human'} in review {review_id}"
        )
    if status == "denied":
        denial = next((v for v in votes if v.get("decision") == "deny"), {})
        said = f": {denial['reason']}" if denial.get("reason") else " (no reason given)"
        return ApprovalResponse(
            approved=False,
            reason=f"denied by {denial.get('voter', 'a human')} in review {review_id}{said}",
        )
    if status == "pending":
        return ApprovalResponse(
            approved=False,
            reason=f"review {review_id} is still pending after {waited:g} s, so the code was "
            "not run. It stays pending: once a human approves it (`wardgate reviews approve "
            f"{review_id}`), ask to run the same code again and the approval is used",
        )
    return ApprovalResponse(
        approved=False,
        reason=f"review {review_id} is {status}, so the code was not run; running the code "
        "again files a new review",
    )


def _justification_of(messages: Sequence[LLMMessage]) -> str:
    """What the conversation was about, for the reviewer: the last few messages with
    text, code blocks left out (the review shows the code itself), bounded."""
    parts: list[str] = []
    for message in reversed(messages):
        content = getattr(message, "content", None)
        if isinstance(message, SystemMessage) or not isinstance(content, str):
            continue
        text = " ".join(_CODE_FENCE.sub(" [code] ", content).split())
        if not text or text == "[code]":
            continue
        if len(text) > MESSAGE_CHARS:
            text = text[: MESSAGE_CHARS - 1] + "…"
        parts.append(f"{getattr(message, 'source', 'agent')}: {text}")
        if len(parts) == MESSAGES_SUMMARISED:
            break
    summary = " | ".join(reversed(parts)) or "code an AutoGen agent wants to run"
    return summary[:JUSTIFICATION_CHARS]


# -- the REST API ---------------------------------------------------------------------------


def _client(url: str, token: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url.rstrip("/") + "/api/v1",
        headers={"Authorization": f"Bearer {token}"},
        timeout=HTTP_SECONDS,
    )


async def _api(
    http: httpx.AsyncClient, method: str, path: str, body: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await http.request(method, path, json=body)
    if response.status_code >= 400:
        raise WardgateApiError(response.status_code, _problem_detail(response))
    answer = response.json()
    if not isinstance(answer, dict):
        raise ValueError(f"unexpected answer from wardgate to {method} {path}")
    return answer


async def _poll(
    http: httpx.AsyncClient, review_id: str, until: Collection[str], *, wait: float, poll: float
) -> dict[str, Any]:
    deadline = time.monotonic() + wait
    while True:
        review = await _api(http, "GET", f"/reviews/{review_id}")
        remaining = deadline - time.monotonic()
        if review.get("status") in until or remaining <= 0:
            return review
        await asyncio.sleep(min(poll, remaining))


def _problem_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except json.JSONDecodeError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])[:500]
    return response.reason_phrase


def _describe(exc: Exception) -> str:
    if isinstance(exc, WardgateApiError):
        return f"the API answered {exc}"
    return f"{type(exc).__name__}: {str(exc) or 'no answer'}"


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
