"""How reviews look in a terminal: the API's review dicts turned into text.

One-line outcomes after a request or a vote, the `reviews list` and `grants list`
tables, and the full page of `reviews show`. Everything a requester wrote goes through
`visible`, so what an approver reads is what would run.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console
from rich.padding import Padding
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from wardgate.cli.main import _fail, _when
from wardgate.visible import visible

_LINE_WIDTH = 60
_GAP = 2
_VOTED = {"approve": "approved", "deny": "denied"}

Review = dict[str, Any]


# -- reading answers ----------------------------------------------------------------


def review(answer: Any) -> Review:
    if not isinstance(answer, dict) or not isinstance(answer.get("id"), str):
        _fail("the API answered something that is not a review")
    return answer


def reviews(answer: Any, key: str) -> list[Review]:
    items = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(items, list):
        _fail(f"the API answered without a list of {key}")
    return [review(item) for item in items]


def detail(r: Review) -> dict[str, Any]:
    detail = r.get("detail")
    return detail if isinstance(detail, dict) else {}


def _span(seconds: float) -> str:
    s = abs(seconds)
    if s < 60:
        return f"{s:.0f}s"
    if s < 3600:
        return f"{s // 60:.0f}m"
    if s < 86400:
        return f"{s // 3600:.0f}h"
    return f"{s // 86400:.0f}d"


def _age(ts: Any) -> str:
    return _span(time.time() - ts) if isinstance(ts, int | float) else "-"


def _ago(ts: Any) -> str:
    return f"{_span(time.time() - ts)} ago" if isinstance(ts, int | float) else "-"


def _when_rel(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "-"
    delta = ts - time.time()
    rel = f"in {_span(delta)}" if delta > 0 else f"{_span(delta)} ago"
    return f"{_when(ts)} ({rel})"


def duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return visible(seconds)
    if seconds and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"


def one_line(text: Any, width: int = _LINE_WIDTH) -> str:
    line = " ".join(visible(text or "").split())
    return line if len(line) <= width else line[: width - 3] + "..."


def requester(r: Review) -> str:
    who = visible(r.get("principal") or "?")
    return f"{who} (agent of {visible(r['sponsor'])})" if r.get("sponsor") else who


def _rules(r: Review) -> str:
    return ", ".join(visible(x) for x in r.get("rules") or [r.get("rule") or "-"])


def _deadline(r: Review) -> str:
    """When the pending review, or the approval it gave, runs out."""
    status = r.get("status")
    ts = r.get("expires_at") if status == "pending" else None
    if status == "approved":
        ts = r.get("approved_until")
    if not isinstance(ts, int | float):
        return "-"
    left = ts - time.time()
    return _span(left) if left > 0 else "now"


def _needs(r: Review) -> str:
    needed = [visible(x) for x in r.get("still_needed") or []]
    if needed:
        return "still needed: " + ", ".join(needed)
    parts = []
    for req in r.get("requirements") or []:
        quorum = req.get("quorum", 1)
        groups = ", ".join(visible(g) for g in req.get("groups") or [])
        parts.append(f"{quorum} approval{'s' if quorum != 1 else ''} from {groups}")
    return "needs " + " and ".join(parts) if parts else "needs an approval"


def _voters(r: Review, decision: str) -> str:
    names = [visible(v.get("voter")) for v in r.get("votes") or [] if v.get("decision") == decision]
    return ", ".join(names)


def grant_what(r: Review) -> str:
    return f"role {visible(detail(r).get('role', '?'))} on {visible(r.get('connection'))}"


def outcome(r: Review) -> str:
    """One line: where a review stands after a request, vote, cancel or revoke."""
    rid, status, kind = visible(r["id"]), r.get("status"), r.get("kind")
    who = visible(r.get("principal") or "the requester")
    if status == "pending":
        if r.get("votes"):
            return f"{rid}: approval recorded, {_needs(r)}"
        return f"{rid} pending, {_needs(r)}"
    if status == "approved":
        by = _voters(r, "approve")
        until = r.get("approved_until")
        if kind == "grant":
            now = f"{who} has {grant_what(r)} until {_when(until)}"
        elif kind == "proposal":
            now = f"the gateway runs it on {visible(r.get('connection'))} now"
        else:
            limit = f" (until {_when(until)})" if isinstance(until, int | float) else ""
            now = f"{who}'s statement can now run once{limit}"
        return f"{rid} approved: " + (f"approved by {by}; " if by else "") + now
    if status == "denied":
        by = _voters(r, "deny")
        reasons = [visible(v["reason"]) for v in r.get("votes") or [] if v.get("reason")]
        why = f": {reasons[-1]}" if reasons else ""
        return f"{rid} denied" + (f" by {by}" if by else "") + why
    if status == "revoked":
        return f"{rid} revoked: {who} no longer has {grant_what(r)}"
    if status == "executing":
        return f"{rid} approved: running on {visible(r.get('connection'))} now"
    if status in ("executed", "failed", "rolled_back"):
        result = r.get("result") or {}
        said = (result.get("error") or result.get("message")) if isinstance(result, dict) else None
        return f"{rid} {status}" + (f": {visible(said)}" if said else "")
    return f"{rid} {visible(status)}"


# -- tables -------------------------------------------------------------------------


def plain_table(columns: tuple[str, ...], ids: list[str]) -> Table:
    """Plain columns, one line per row, like `kubectl get`: a narrow terminal cuts
    cells short rather than wrap them, except the first, the id you need to type."""
    table = Table(box=None, padding=(0, _GAP, 0, 0), pad_edge=False, header_style="bold")
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis")
    table.columns[0].min_width = max(len(i) for i in ids)
    return table


_COLUMNS = ("id", "kind", "status", "requester", "connection", "rule", "age", "expires")

_MIN_STATEMENT = 20


def table(reviews: list[Review], width: int) -> Table:
    """One line per review; the statement, last, gets the room the others leave."""
    rows = [
        (
            visible(r["id"]),
            visible(r.get("kind")),
            visible(r.get("status")),
            requester(r),
            visible(r.get("connection")),
            _rules(r),
            _age(r.get("created_at")),
            _deadline(r),
        )
        for r in reviews
    ]
    columns = zip(_COLUMNS, zip(*rows, strict=True), strict=True)
    used = sum(max(len(c) for c in (name, *cells)) + _GAP for name, cells in columns)
    room = max(_MIN_STATEMENT, min(width - used, 2 * _LINE_WIDTH))
    table = plain_table((*_COLUMNS, "statement"), [row[0] for row in rows])
    for r, row in zip(reviews, rows, strict=True):
        table.add_row(*(Text(c) for c in (*row, one_line(r.get("text"), room))))
    return table


# -- one review ---------------------------------------------------------------------


def _whole(text: Text) -> Text:
    """What is being approved is never cut: wrapped at the terminal's width, and a word
    longer than a line (an identifier, a parameter) folded onto the next one."""
    text.no_wrap = False
    text.overflow = "fold"
    return text


def _indented(out: Console, text: Text) -> None:
    out.print(Padding(_whole(text), (0, 0, 0, 4), expand=False))


def _sql(out: Console, text: str, protocol: object) -> None:
    # Highlighted text rather than a Syntax block, which pads every line to the width.
    # (Syntax.highlight returns no_wrap text: the end of a long statement would be cut.)
    # A Kubernetes review's text is a request line and YAML (a proposal's manifests).
    lexer = {"mysql": "mysql", "kubernetes": "yaml"}.get(str(protocol), "postgresql")
    highlighted = Syntax("", lexer, theme="ansi_dark").highlight(visible(text))
    highlighted.rstrip()
    _indented(out, highlighted)


def _params(detail: dict[str, Any]) -> list[str]:
    params = detail.get("params")
    if isinstance(params, list):
        return [f"${i} = {json.dumps(v, ensure_ascii=False)}" for i, v in enumerate(params, 1)]
    if isinstance(params, dict):
        return [f"{k} = {json.dumps(v, ensure_ascii=False)}" for k, v in params.items()]
    return [] if params is None else [json.dumps(params, ensure_ascii=False)]


def _preview(preview: dict[str, Any]) -> list[str]:
    kind = preview.get("kind")
    if kind == "explain":
        rows = preview.get("estimated_rows")
        lines = [f"planner estimate: {rows if rows is not None else '?'} rows"]
        plan = preview.get("plan")
        if isinstance(plan, list):
            plan = "\n".join(str(p) for p in plan)
        if plan:
            lines += [f"  {line}" for line in str(plan).splitlines()]
        return lines
    if kind == "rollback":
        return [f"dry run, rolled back: {preview.get('affected_rows', '?')} rows affected"]
    if kind in ("unavailable", "error", "none"):
        return [f"no preview ({kind}): {preview.get('reason') or 'no reason given'}"]
    return [json.dumps(preview, ensure_ascii=False)]


def show(r: Review) -> None:
    out = Console(highlight=False)
    info = detail(r)
    kind = r.get("kind")
    head = Table.grid(padding=(0, 2))
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")  # ids and names are copied: folded, never cut

    def row(label: str, value: object) -> None:
        head.add_row(label, _whole(Text(visible(value))))

    row("review", f"{r['id']}  {kind}, {r.get('status')}")
    row("requested by", f"{requester(r)} [{r.get('principal_kind') or '?'}]")
    where = f"{r.get('connection')} via {r.get('protocol') or '?'}"
    if r.get("session_id"):
        where += f", session {r['session_id']}"
    if r.get("client_addr"):
        where += f", from {r['client_addr']}"
    row("connection", where)
    if kind == "grant":
        row("role", info.get("role", "?"))
        row("for", duration(info.get("duration")))
    row("rule", _rules(r))
    if r.get("reason"):
        row("reason", r["reason"])
    if r.get("justification"):
        row("justification", r["justification"])
    row("created", _when_rel(r.get("created_at")))
    if r.get("status") == "pending":
        row("expires", _when_rel(r.get("expires_at")))
    if r.get("decided_at") is not None:
        row("decided", _when_rel(r.get("decided_at")))
    if r.get("approved_until") is not None:
        row("approved until", _when_rel(r.get("approved_until")))
    if r.get("executed_at") is not None:
        row("executed", _when_rel(r.get("executed_at")))
    approval = _needs(r) if r.get("status") == "pending" else _needs({**r, "still_needed": []})
    if r.get("sponsor"):
        may = "may" if r.get("sponsor_may_approve") else "may not"
        approval += f"; the sponsor {r['sponsor']} {may} approve"
    row("approval", approval)
    for vote in r.get("votes") or []:
        why = f": {vote['reason']}" if vote.get("reason") else ""
        decided = _VOTED.get(vote.get("decision"), vote.get("decision"))
        row("vote", f"{vote.get('voter')} {decided} {_ago(vote.get('at'))}{why}")
    if r.get("url"):
        row("url", r["url"])
    if r.get("can_vote"):
        row("you", f"can vote: wardgate reviews approve|deny {r['id']}")
    elif r.get("status") == "pending":
        row("you", "cannot vote on this review")
    out.print(head)

    if kind == "proposal":
        statements = info.get("statements") or [r.get("text", "")]
        for i, statement in enumerate(statements, 1):
            out.print(_whole(Text(f"statement {i} of {len(statements)}:")))
            _sql(out, str(statement), r.get("protocol"))
    elif kind == "action":
        out.print(Text("statement:"))
        _sql(out, str(r.get("text", "")), r.get("protocol"))
        params = _params(info)
        if params:
            out.print(Text("params:"))
            for line in params:
                _indented(out, Text(visible(line)))
        if info.get("resolved"):
            out.print(Text("runs as:"))
            _sql(out, str(info["resolved"]), r.get("protocol"))
        context = info.get("context")
        if isinstance(context, dict) and context:
            out.print(Text("in a session with:"))
            for key, value in context.items():
                _indented(out, Text(f"{visible(str(key))} = {visible(str(value))}"))
    preview = r.get("preview")
    if isinstance(preview, dict):
        out.print(Text("preview:"))
        for line in _preview(preview):
            _indented(out, Text(visible(line)))
    if r.get("result") is not None:
        out.print(Text("result:"))
        dumped = json.dumps(r["result"], indent=2, ensure_ascii=False, default=str)
        _indented(out, Text(visible(dumped)))
