"""Recorded sessions: the list with filters and search, one session's timeline, its
exports, and the terminal recording of an interactive SSH shell.

Which sessions a caller sees, and what a session holds, come from the API's handlers
(``api/resources.py``). A recording is served only when its text still hashes to the
SHA-256 the audit chain recorded for it, the check ``wardgate sessions replay`` makes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import func, select

from wardgate.api import resources as api
from wardgate.api.auth import services_of
from wardgate.api.schemas import MAX_SEARCH_TEXT, Text
from wardgate.audit.asciicast import replay_text
from wardgate.audit.chain import event_hash
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, Recording
from wardgate.web.auth import SignedIn, UiUser
from wardgate.web.render import PLAYER_BUNDLE, plain, render, ui_errors

router = APIRouter()

SHOWN = 100
SEARCHED = 1000  # sessions (the newest matching the filters) a text search looks through
_NAME = re.compile(r"^[a-z0-9_]{1,32}$")  # api.resources' pattern for protocol and status
_ANSI = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78])")
Verdict = Literal["allow", "review", "block"]
VERDICTS: tuple[Verdict, ...] = ("allow", "review", "block")
PROTOCOLS = ("postgres", "ssh", "kubernetes", "mcp")
STATUSES = ("active", "closed", "error", "interrupted", "upstream_lost")


# -- the list -------------------------------------------------------------------------


def _time(value: str, what: str) -> datetime | None:
    """A ``datetime-local`` field (or any ISO 8601 time): UTC unless it says otherwise."""
    if not value.strip():
        return None
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise HTTPException(422, f"{what}: not a time (use YYYY-MM-DD HH:MM, UTC)") from None


def _verdict(value: str) -> Verdict | None:
    for verdict in VERDICTS:
        if value == verdict:
            return verdict
    if value:
        raise HTTPException(422, f"verdict: one of {', '.join(VERDICTS)}")
    return None


def _sessions_with_text(store: Store, ids: list[str], text: str) -> set[str]:
    """Of ``ids``, the sessions with an action whose recorded text (or output) contains
    ``text``, ignoring case. Payloads are canonical JSON, so the needle is JSON-escaped."""
    if not ids:
        return set()
    needle = json.dumps(text.lower(), ensure_ascii=False)[1:-1]
    stmt = (
        select(AuditEvent.session_id)
        .where(
            AuditEvent.session_id.in_(ids),
            AuditEvent.type == "action",
            func.lower(AuditEvent.payload).contains(needle, autoescape=True),
        )
        .distinct()
    )
    with store.session(write=False) as session:
        return set(session.scalars(stmt))


@router.get("/sessions")
@ui_errors
async def sessions_page(
    request: Request,
    me: UiUser,
    principal: str = "",
    connection: str = "",
    protocol: str = "",
    status: str = "",
    verdict: str = "",
    since: str = "",
    until: str = "",
    q: str = "",
) -> Response:
    form = {
        "principal": principal, "connection": connection, "protocol": protocol,
        "status": status, "verdict": verdict, "since": since, "until": until, "q": q.strip(),
    }  # fmt: skip
    principals = plain(await api.list_principals(request=request, who=me.caller))["principals"]
    connections = list(services_of(request).config.connections)
    context: dict[str, Any] = {
        "form": form,
        "principals": [p["name"] for p in principals],
        "connections": connections,
        "protocols": PROTOCOLS,
        "statuses": STATUSES,
        "verdicts": VERDICTS,
        "nav": "sessions",
        "sessions": [],
        "complete": True,
        "error": None,
    }
    try:
        rows, complete = await _sessions(request, me, form)
    except HTTPException as exc:
        if exc.status_code != 422:
            raise
        context["error"] = str(exc.detail).removeprefix("invalid request: ")
        return render(request, "sessions.html", context, me=me, status=422)
    context["sessions"] = rows[:SHOWN]
    context["more"] = len(rows) > SHOWN
    context["complete"] = complete
    context["searched"] = SEARCHED
    return render(request, "sessions.html", context, me=me)


async def _sessions(
    request: Request, me: SignedIn, form: dict[str, str]
) -> tuple[list[dict[str, Any]], bool]:
    """The API's session list for these filters. A search adds, to the API's own
    free-text matches (session id, principal, connection, application), the sessions
    among the newest ``SEARCHED`` matching the filters in which a statement or command
    (or its masked output) contains the text."""
    for what, value in form.items():
        if "\x00" in value:
            raise HTTPException(422, f"{what}: a NUL character is not allowed")
    for what in ("protocol", "status"):
        if form[what] and not _NAME.match(form[what]):
            raise HTTPException(422, f"{what}: lowercase letters, digits and _ only")
    text = form["q"]
    if len(text) > MAX_SEARCH_TEXT:
        raise HTTPException(422, f"search: at most {MAX_SEARCH_TEXT} characters")
    filters: dict[str, Any] = {
        "principal": form["principal"] or None,
        "connection": form["connection"] or None,
        "protocol": form["protocol"] or None,
        "status": form["status"] or None,
        "since": _time(form["since"], "since"),
        "until": _time(form["until"], "until"),
        "verdict": _verdict(form["verdict"]),
    }
    found = plain(
        await api.list_sessions(
            request=request, who=me.caller, **filters, q=text or None, limit=SHOWN + 1
        )
    )
    if not text:
        return found["sessions"], found["complete"]
    window = plain(
        await api.list_sessions(request=request, who=me.caller, **filters, q=None, limit=SEARCHED)
    )["sessions"]
    store = services_of(request).store
    ids = [r["id"] for r in window]
    in_actions = await asyncio.to_thread(_sessions_with_text, store, ids, text)
    merged = {r["id"]: r for r in found["sessions"]}
    merged.update((r["id"], r) for r in window if r["id"] in in_actions)
    rows = sorted(merged.values(), key=lambda r: (-r["started_at"], r["id"]))
    return rows, found["complete"] and len(window) < SEARCHED


# -- recordings -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckedRecording:
    seq: int
    started_at: float
    size: int
    problem: str | None  # None: the text hashes to what the audit chain holds
    cast: str


def _checked_recordings(store: Store, session_id: str) -> list[CheckedRecording]:
    """The session's recordings, each checked against its hash and against the chain's
    ``recording`` event (itself checked against its own link hash)."""
    with store.session(write=False) as session:
        rows = session.scalars(
            select(Recording).where(Recording.session_id == session_id).order_by(Recording.seq)
        ).all()
        events = session.scalars(
            select(AuditEvent).where(
                AuditEvent.session_id == session_id, AuditEvent.type == "recording"
            )
        ).all()
        recordings = [(r.seq, r.started_at, r.cast, r.sha256) for r in rows]
        chained: dict[int, str] = {}
        broken: set[int] = set()
        for event in events:
            payload = json.loads(event.payload)
            seq = int(payload.get("seq", -1))
            chained[seq] = str(payload.get("sha256", ""))
            link = event_hash(
                event.prev_hash,
                id=event.id,
                ts=event.ts,
                type=event.type,
                session_id=event.session_id,
                principal=event.principal,
                connection=event.connection,
                payload=event.payload,
            )
            if link != event.hash:
                broken.add(seq)
    checked = []
    for seq, started_at, cast, digest in recordings:
        actual = hashlib.sha256(cast.encode("utf-8")).hexdigest()
        problem = None
        if actual != digest:
            problem = "the recording does not match its hash: it was changed after it was written"
        elif seq in broken:
            problem = "the audit event holding the recording's hash was changed"
        elif chained.get(seq) != actual:
            problem = "the audit chain holds no matching hash for this recording"
        checked.append(CheckedRecording(seq, started_at, len(cast), problem, cast))
    return checked


def transcript(cast: str, limit: int = 200_000) -> str:
    """What the terminal showed, as plain text: the fallback when the player cannot run."""
    text = _ANSI.sub("", replay_text(cast)).replace("\r\n", "\n").replace("\r", "")
    return text if len(text) <= limit else text[:limit] + "\n[… transcript cut here]"


# -- one session ----------------------------------------------------------------------


def _timeline(detail: dict[str, Any]) -> list[dict[str, Any]]:
    """Actions and review events in chain order."""
    items = [{"event": "action", **a} for a in detail["actions"]]
    items += [{"event": "review", **r} for r in detail["reviews"]]
    return sorted(items, key=lambda item: item["id"])


@router.get("/sessions/{session_id}")
@ui_errors
async def session_page(request: Request, session_id: Text, me: UiUser) -> Response:
    detail = plain(
        await api.get_session_detail(request=request, session_id=session_id, who=me.caller)
    )
    store = services_of(request).store
    recordings = await asyncio.to_thread(_checked_recordings, store, session_id)
    context = {
        "session": detail,
        "timeline": _timeline(detail),
        "recordings": recordings,
        "transcripts": {r.seq: transcript(r.cast) for r in recordings if r.problem is None},
        "player": PLAYER_BUNDLE.is_file(),
        "nav": "sessions",
    }
    return render(request, "session.html", context, me=me)


async def _export(
    request: Request, session_id: str, me: SignedIn, format: Literal["jsonl", "csv"]
) -> Response:
    return await api.export_session(
        request=request, session_id=session_id, who=me.caller, format=format
    )


@router.get("/sessions/{session_id}/export.jsonl")
@ui_errors
async def export_jsonl(request: Request, session_id: Text, me: UiUser) -> Response:
    return await _export(request, session_id, me, "jsonl")


@router.get("/sessions/{session_id}/export.csv")
@ui_errors
async def export_csv(request: Request, session_id: Text, me: UiUser) -> Response:
    return await _export(request, session_id, me, "csv")


@router.get("/sessions/{session_id}/recording/{seq}.cast")
@ui_errors
async def recording_cast(
    request: Request, session_id: Text, seq: int, me: UiUser, download: bool = False
) -> Response:
    """The asciicast v2 text, for the player or to download; refused (409) when it does
    not match the audit chain."""
    store = await api._visible_session(request, session_id, me.caller)
    found = [
        r for r in await asyncio.to_thread(_checked_recordings, store, session_id) if r.seq == seq
    ]
    if not found:
        raise HTTPException(404, f"session {session_id!r} has no recording {seq}")
    if found[0].problem is not None:
        raise HTTPException(409, f"recording refused: {found[0].problem}")
    headers = {}
    if download:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id)
        headers["Content-Disposition"] = f'attachment; filename="{safe}-{seq}.cast"'
    return PlainTextResponse(found[0].cast, media_type="application/x-asciicast", headers=headers)
