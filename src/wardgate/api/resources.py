"""Read-side REST endpoints: connections and their effective policy, principals, the
caller's tokens, recorded sessions (with export), policy checks and the audit chain.

Every response is a declared pydantic model, built field by field from the
configuration or the store: a credential (or a reference to one) cannot reach a
response because no model has a field for it, even if the configuration grows one.
Agents see themselves and their own sessions only; humans see everything.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import ColumnElement, func, or_, select

from wardgate.actions import Action
from wardgate.api.auth import Caller, caller, services_of
from wardgate.api.schemas import (
    MAX_SEARCH_TEXT,
    SEARCH_SCAN_SESSIONS,
    ActionOut,
    AuditVerification,
    CheckBody,
    CheckpointOut,
    CheckpointVerifyBody,
    CheckResult,
    Connection,
    ConnectionDetail,
    ConnectionList,
    EffectivePolicy,
    GuardrailConditionOut,
    GuardrailMatchOut,
    GuardrailOut,
    KubernetesUpstream,
    PostgresUpstream,
    PrincipalList,
    PrincipalOut,
    ReviewSettings,
    RolePolicy,
    SessionDetail,
    SessionList,
    SessionReviewEvent,
    SessionSummary,
    SshUpstream,
    StatementOut,
    Text,
    TokenList,
    TokenOut,
    _problems,
)
from wardgate.audit.chain import VerifyResult, verify_chain
from wardgate.audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_sweeps,
    latest_checkpoint,
    load_public_key,
    verify_with_checkpoint,
)
from wardgate.audit.query import get_session
from wardgate.audit.responses import decoded
from wardgate.config import (
    Config,
    ConnectionConfig,
    GuardrailConfig,
    KubernetesUpstreamConfig,
    UpstreamConfig,
)
from wardgate.core.services import Services
from wardgate.identity.principals import Principal
from wardgate.identity.tokens import TokenInfo
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent, SessionRow

router = APIRouter(prefix="/api/v1")
Authenticated = Annotated[Caller, Depends(caller)]

EXPORT_PAGE = 500
_KIND_OF_TYPE = {"postgres": "sql", "ssh": "shell", "kubernetes": "kubernetes"}
_NAME = r"^[a-z0-9_]{1,32}$"


def _connection_of(config: Config, name: str) -> ConnectionConfig:
    conn = config.connections.get(name)
    if conn is None:
        raise HTTPException(404, f"no connection named {name!r}")
    return conn


def _granted(services: Services, principal: str, connection: str) -> frozenset[str]:
    runtime = services.reviews
    return runtime.granted(principal, connection) if runtime is not None else frozenset()


def _connection(services: Services, name: str, conn: ConnectionConfig, who: Caller) -> Connection:
    p = who.principal
    up = conn.upstream
    upstream: PostgresUpstream | SshUpstream | KubernetesUpstream
    if isinstance(up, UpstreamConfig):
        upstream = PostgresUpstream(host=up.host, port=up.port, database=up.database, user=up.user)
    elif isinstance(up, KubernetesUpstreamConfig):
        upstream = KubernetesUpstream(url=up.url)
    else:
        upstream = SshUpstream(host=up.host, port=up.port, user=up.user, host_key=up.host_key)
    own = {conn.roles[g] for g in p.groups if g in conn.roles}
    granted = _granted(services, p.name, name) - own
    return Connection(
        name=name,
        type=conn.type,
        description=conn.description,
        mode=conn.mode,
        upstream=upstream,
        roles=dict(conn.roles),
        your_roles=sorted(own | granted),
        granted_roles=sorted(granted),
        reviews=ReviewSettings(
            wait=conn.reviews.wait, max_wait=conn.reviews.max_wait, preview=conn.reviews.preview
        ),
        grantable_roles=list(conn.grants.roles),
    )


def _rail_can_apply(rail: GuardrailConfig, name: str, conn: ConnectionConfig) -> bool:
    """Mirrors the gate's matching: SQL-only fields never match a shell command and
    shell-only fields never match SQL (see ``gate._rail_matches``)."""
    m = rail.match
    if m.connections and name not in m.connections:
        return False
    kube_only = m.kubernetes or m.resources or m.namespaces or m.verbs or m.ports
    shell_only = m.commands or m.programs or m.paths
    sql_only = m.sql or m.tables or m.tables_written or m.columns or m.functions
    if _KIND_OF_TYPE[conn.type] == "sql":
        return not (shell_only or kube_only)
    if _KIND_OF_TYPE[conn.type] == "kubernetes":
        return not (sql_only or shell_only or rail.condition)
    return not (sql_only or kube_only or rail.condition)


def _policy(config: Config, name: str, conn: ConnectionConfig) -> EffectivePolicy:
    role_names = sorted(set(conn.roles.values()) | set(conn.grants.roles))
    roles = []
    for role_name in role_names:
        role = config.roles[role_name]
        roles.append(
            RolePolicy(
                name=role_name,
                groups=sorted(g for g, r in conn.roles.items() if r == role_name),
                grantable=role_name in conn.grants.roles,
                read=role.read,
                write=role.write,
                ddl=role.ddl,
                admin=role.admin,
                shell=role.shell,
                sftp=role.sftp,
                forwarding=role.forwarding,
                forwarding_ports=role.forwarding_ports,
            )
        )
    rails = [
        GuardrailOut(
            name=rail.name,
            match=GuardrailMatchOut.model_validate(rail.match.model_dump()),
            condition=(
                GuardrailConditionOut.model_validate(rail.condition.model_dump())
                if rail.condition is not None
                else None
            ),
            verdict=rail.verdict,
            message=rail.message,
        )
        for rail in config.guardrails
        if _rail_can_apply(rail, name, conn)
    ]
    return EffectivePolicy(on_parse_error=conn.on_parse_error, roles=roles, guardrails=rails)


def _principal_out(p: Principal) -> PrincipalOut:
    return PrincipalOut(name=p.name, kind=p.kind.value, groups=sorted(p.groups), sponsor=p.sponsor)


def _token_out(t: TokenInfo, who: Caller) -> TokenOut:
    return TokenOut(
        id=t.id,
        name=t.name,
        created_at=t.created_at,
        last_used_at=t.last_used_at,
        revoked_at=t.revoked_at,
        active=t.active,
        current=t.id == who.token_id,
    )


def _epoch(value: datetime | float | None, what: str) -> float | None:
    """An ISO 8601 time (UTC when it has no offset) or Unix seconds, as Unix seconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        try:
            value = value.timestamp()
        except (OverflowError, ValueError, OSError):
            value = math.nan
    if not math.isfinite(value):
        raise HTTPException(422, f"invalid request: {what}: not a time wardgate can handle")
    return value


def _action_out(event_id: int, ts: float, payload: dict[str, Any]) -> ActionOut:
    if "result" in payload:  # stored as the wire bytes; rows for readers
        payload = {**payload, "result": decoded(payload["result"])}
    return ActionOut.model_validate({**payload, "id": event_id, "ts": ts})


def _review_event_out(event: dict[str, Any]) -> SessionReviewEvent:
    known = {"id", "ts", "type", "by", "review", "review_kind"}
    details = {k: v for k, v in event.items() if k not in known}
    return SessionReviewEvent.model_validate({**event, "details": details})


# -- store reads (run in a worker thread) --------------------------------------------


def _text_match(q: str) -> ColumnElement[bool]:
    """The free-text search: a session id prefix, or a substring of the principal, the
    connection or the client's application name; case-insensitive, ``%`` and ``_``
    taken literally."""
    return or_(
        SessionRow.id.istartswith(q, autoescape=True),
        SessionRow.principal.icontains(q, autoescape=True),
        SessionRow.connection.icontains(q, autoescape=True),
        SessionRow.application_name.icontains(q, autoescape=True),
    )


def _has_action_with(verdict: str) -> ColumnElement[bool]:
    # The recorded payload is canonical JSON (sorted keys, no whitespace: it is hashed
    # into the chain), so the verdict's first key is its decision, and quotes inside
    # any string value (statement text, output) are escaped: this substring can only
    # be the verdict itself.
    needle = f'"verdict":{{"decision":"{verdict}"'
    return (
        select(AuditEvent.id)
        .where(
            AuditEvent.session_id == SessionRow.id,
            AuditEvent.type == "action",
            AuditEvent.payload.contains(needle, autoescape=True),
        )
        .exists()
    )


def _find_sessions(
    store: Store,
    filters: list[ColumnElement[bool]],
    verdict: str | None,
    q: str | None,
    limit: int,
) -> tuple[list[SessionSummary], bool]:
    order = (SessionRow.started_at.desc(), SessionRow.id)
    if verdict is None and q is None:
        stmt = select(SessionRow).where(*filters).order_by(*order).limit(limit)
        with store.session(write=False) as session:
            rows = list(session.scalars(stmt))
        return [SessionSummary.model_validate(r, from_attributes=True) for r in rows], True
    # Neither filter can use an index (a substring, a probe per session), so both look
    # only at a bounded window: the newest sessions matching the indexed filters.
    window = select(SessionRow.id).where(*filters).order_by(*order).limit(SEARCH_SCAN_SESSIONS)
    narrowing: list[ColumnElement[bool]] = [SessionRow.id.in_(window.scalar_subquery())]
    if q is not None:
        narrowing.append(_text_match(q))
    if verdict is not None:
        narrowing.append(_has_action_with(verdict))
    stmt = select(SessionRow).where(*narrowing).order_by(*order).limit(limit)
    with store.session(write=False) as session:
        rows = list(session.scalars(stmt))
        scanned = session.scalar(select(func.count()).select_from(window.subquery())) or 0
    complete = len(rows) >= limit or scanned < SEARCH_SCAN_SESSIONS
    return [SessionSummary.model_validate(r, from_attributes=True) for r in rows], complete


def _session_owner(store: Store, session_id: str) -> str | None:
    with store.session(write=False) as session:
        return session.scalar(select(SessionRow.principal).where(SessionRow.id == session_id))


def _action_page(store: Store, session_id: str, after: int, size: int) -> list[ActionOut]:
    stmt = (
        select(AuditEvent.id, AuditEvent.ts, AuditEvent.payload)
        .where(
            AuditEvent.session_id == session_id,
            AuditEvent.type == "action",
            AuditEvent.id > after,
        )
        .order_by(AuditEvent.id)
        .limit(size)
    )
    with store.session(write=False) as session:
        events = session.execute(stmt).all()
    return [_action_out(e.id, e.ts, json.loads(e.payload)) for e in events]


# -- connections ------------------------------------------------------------------------


@router.get("/connections", response_model=ConnectionList, responses=_problems(401, 429))
async def list_connections(request: Request, who: Authenticated) -> ConnectionList:
    services = services_of(request)
    config = services.config
    return ConnectionList(
        connections=[
            _connection(services, name, conn, who) for name, conn in config.connections.items()
        ]
    )


@router.get(
    "/connections/{name}", response_model=ConnectionDetail, responses=_problems(401, 429, 404, 422)
)
async def get_connection(request: Request, name: Text, who: Authenticated) -> ConnectionDetail:
    services = services_of(request)
    config = services.config
    conn = _connection_of(config, name)
    base = _connection(services, name, conn, who)
    return ConnectionDetail(**base.model_dump(), policy=_policy(config, name, conn))


# -- principals -------------------------------------------------------------------------


@router.get("/principals", response_model=PrincipalList, responses=_problems(401, 429))
async def list_principals(request: Request, who: Authenticated) -> PrincipalList:
    """Humans see every principal; an agent sees only itself."""
    if who.principal.is_agent:
        return PrincipalList(principals=[_principal_out(who.principal)])
    config = services_of(request).config
    found = [config.principal(name) for name in sorted(config.principals)]
    return PrincipalList(principals=[_principal_out(p) for p in found if p is not None])


@router.get(
    "/principals/{name}", response_model=PrincipalOut, responses=_problems(401, 429, 404, 422)
)
async def get_principal(request: Request, name: Text, who: Authenticated) -> PrincipalOut:
    p = services_of(request).config.principal(name)
    if p is None or (who.principal.is_agent and name != who.principal.name):
        raise HTTPException(404, f"no principal named {name!r}")
    return _principal_out(p)


# -- tokens -----------------------------------------------------------------------------


@router.get("/tokens", response_model=TokenList, responses=_problems(401, 429))
async def list_tokens(request: Request, who: Authenticated) -> TokenList:
    """The caller's own tokens (never a token value: the store does not keep them)."""
    tokens = services_of(request).tokens
    found = await asyncio.to_thread(tokens.list, who.principal.name)
    return TokenList(tokens=[_token_out(t, who) for t in found])


@router.post(
    "/tokens/{token_id}/revoke", response_model=TokenOut, responses=_problems(401, 429, 404, 422)
)
async def revoke_token(request: Request, token_id: Text, who: Authenticated) -> TokenOut:
    """Revoke one of the caller's own tokens (the current one included); revoking a
    revoked token changes nothing."""
    tokens = services_of(request).tokens
    found = await asyncio.to_thread(tokens.get, token_id)
    if found is None or found.principal != who.principal.name:
        raise HTTPException(404, f"no token {token_id!r} of yours")
    await asyncio.to_thread(tokens.revoke, token_id)
    after = await asyncio.to_thread(tokens.get, token_id)
    return _token_out(after or found, who)


# -- sessions ---------------------------------------------------------------------------


@router.get("/sessions", response_model=SessionList, responses=_problems(401, 429, 422))
async def list_sessions(
    request: Request,
    who: Authenticated,
    principal: Text | None = None,
    connection: Text | None = None,
    protocol: Annotated[str | None, Query(pattern=_NAME)] = None,
    status: Annotated[str | None, Query(pattern=_NAME)] = None,
    since: Annotated[datetime | float | None, Query(description="Started at or after")] = None,
    until: Annotated[datetime | float | None, Query(description="Started before")] = None,
    verdict: Annotated[
        Literal["allow", "review", "block"] | None,
        Query(description="Sessions with at least one action of this decision (bounded scan)"),
    ] = None,
    q: Annotated[
        Text | None,
        Query(
            max_length=MAX_SEARCH_TEXT,
            description="Free text, case-insensitive: a session id prefix, or part of the "
            "principal, the connection or the client application name (bounded scan)",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> SessionList:
    """Newest first. Agents see only their own sessions. The verdict and q filters look
    at the newest sessions matching the other filters, up to a bound: ``complete`` says
    whether they stopped there."""
    start, end = _epoch(since, "since"), _epoch(until, "until")
    if start is not None and end is not None and start > end:
        raise HTTPException(422, "invalid request: since is after until")
    filters: list[ColumnElement[bool]] = []
    if who.principal.is_agent:
        filters.append(SessionRow.principal == who.principal.name)
    for column, value in (
        (SessionRow.principal, principal),
        (SessionRow.connection, connection),
        (SessionRow.protocol, protocol),
        (SessionRow.status, status),
    ):
        if value is not None:
            filters.append(column == value)
    if start is not None:
        filters.append(SessionRow.started_at >= start)
    if end is not None:
        filters.append(SessionRow.started_at < end)
    store = services_of(request).store
    text = (q or "").strip() or None
    rows, complete = await asyncio.to_thread(_find_sessions, store, filters, verdict, text, limit)
    return SessionList(sessions=rows, complete=complete)


async def _visible_session(request: Request, session_id: Text, who: Caller) -> Store:
    store = services_of(request).store
    owner = await asyncio.to_thread(_session_owner, store, session_id)
    if owner is None or (who.principal.is_agent and owner != who.principal.name):
        raise HTTPException(404, f"no session {session_id!r}")
    return store


@router.get(
    "/sessions/{session_id}", response_model=SessionDetail, responses=_problems(401, 429, 404, 422)
)
async def get_session_detail(
    request: Request, session_id: Text, who: Authenticated
) -> SessionDetail:
    store = await _visible_session(request, session_id, who)
    found = await asyncio.to_thread(get_session, store, session_id)
    if found is None:
        raise HTTPException(404, f"no session {session_id!r}")
    actions = [_action_out(a["id"], a["ts"], a) for a in found.pop("actions")]
    reviews = [_review_event_out(r) for r in found.pop("reviews")]
    return SessionDetail.model_validate({**found, "actions": actions, "reviews": reviews})


_CSV_COLUMNS = (
    "id", "ts", "seq", "kind", "text", "params", "decision", "rule", "rules", "reason",
    "enforced", "status", "rows", "command", "duration_ms", "error", "sqlstate", "output",
    "result",
)  # fmt: skip


# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and
# CR, strips them and looks again): recorded text is the client's, so it may be a
# `=HYPERLINK(...)` or `@SUM(...)` waiting for whoever opens the export.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """``value`` safe to open in a spreadsheet: text that would start a formula gets a
    leading apostrophe (OWASP's advice), which spreadsheets show as text. Also after
    leading blanks (spaces, newlines, NBSP ...): some spreadsheets trim them on import
    and then read the formula."""
    if isinstance(value, str) and (
        value.startswith(_FORMULA_STARTS) or value.lstrip().startswith(_FORMULA_STARTS)
    ):
        return "'" + value
    return value


def _csv_row(a: ActionOut) -> list[Any]:
    return [csv_cell(cell) for cell in _csv_cells(a)]


def _csv_cells(a: ActionOut) -> list[Any]:
    v = a.verdict
    return [
        a.id, a.ts, a.seq, a.kind, a.text, json.dumps(a.params), v.decision, v.rule,
        " ".join(v.rules), v.reason, v.enforced, a.status, a.rows, a.command, a.duration_ms,
        a.error, a.sqlstate, a.output,
        a.result.model_dump_json() if a.result is not None else None,
    ]  # fmt: skip


@router.get(
    "/sessions/{session_id}/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The session's actions in chain order: one JSON object per line "
            "(the `actions` items of GET /sessions/{id}), or CSV with a header row",
            "content": {"application/x-ndjson": {}, "text/csv": {}},
        },
        **_problems(401, 429, 404, 422),
    },
)
async def export_session(
    request: Request,
    session_id: Text,
    who: Authenticated,
    format: Literal["jsonl", "csv"] = "jsonl",
) -> StreamingResponse:
    """Streams page by page from the store: memory stays bounded whatever the size."""
    store = await _visible_session(request, session_id, who)

    async def lines() -> AsyncIterator[str]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if format == "csv":
            writer.writerow(_CSV_COLUMNS)
        after = 0
        while True:
            page = await asyncio.to_thread(_action_page, store, session_id, after, EXPORT_PAGE)
            if format == "csv":
                writer.writerows(_csv_row(a) for a in page)
                yield buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
            elif page:
                yield "".join(a.model_dump_json(by_alias=True) + "\n" for a in page)
            if len(page) < EXPORT_PAGE:
                return
            after = page[-1].id

    media = "text/csv; charset=utf-8" if format == "csv" else "application/x-ndjson"
    safe_id = re.sub(r"[^A-Za-z0-9_.-]", "_", session_id)
    headers = {"Content-Disposition": f'attachment; filename="{safe_id}.{format}"'}
    return StreamingResponse(lines(), media_type=media, headers=headers)


# -- policy check -----------------------------------------------------------------------


@router.post(
    "/policy/check", response_model=CheckResult, responses=_problems(400, 401, 429, 403, 404, 422)
)
async def check_policy(request: Request, body: CheckBody, who: Authenticated) -> CheckResult:
    """What the gate would decide for ``text`` on a connection, with nothing run.
    Only humans may check as another principal."""
    services = services_of(request)
    config = services.config
    name = body.principal or who.principal.name
    if name != who.principal.name and who.principal.is_agent:
        raise HTTPException(403, "agents may only check their own actions")
    principal = config.principal(name)
    if principal is None:
        raise HTTPException(404, f"no principal named {name!r}")
    conn = _connection_of(config, body.connection)
    kind = _KIND_OF_TYPE[conn.type]
    action = Action(principal, body.connection, conn.type, kind, body.text)
    granted = _granted(services, name, body.connection)
    verdict = await asyncio.to_thread(services.gate.check, action, granted)
    return CheckResult(
        principal=name,
        connection=body.connection,
        decision=verdict.decision.value,
        rule=verdict.rule,
        rules=list(verdict.rules or (verdict.rule,)),
        reason=verdict.reason,
        enforced=verdict.enforced,
        statements=[
            StatementOut.model_validate(s, from_attributes=True) for s in verdict.statements
        ],
    )


# -- audit ------------------------------------------------------------------------------


@router.get("/audit/verify", response_model=AuditVerification, responses=_problems(401, 429, 403))
async def audit_verify(request: Request, who: Authenticated) -> AuditVerification:
    """Walk the whole hash chain (humans only: it reads every event). One walk at a
    time per gateway process: concurrent requests queue rather than fill the threads."""
    store = services_of(request).store
    # No key here to check the stored checkpoints with: sweeps come back UNVERIFIED
    # (the CLI's `audit verify` uses the configured key; see docs/audit.md).
    return await _verify(request, who, lambda: check_sweeps(store, verify_chain(store), None))


@router.post(
    "/audit/verify",
    response_model=AuditVerification,
    responses=_problems(400, 401, 429, 403, 422),
)
async def audit_verify_checkpoint(
    request: Request, who: Authenticated, body: CheckpointVerifyBody
) -> AuditVerification:
    """The chain walk, plus: does the store still hold the events a signed checkpoint
    (kept outside the gateway) covers? Catches a rewrite-and-rehash before it."""
    try:
        key = load_public_key(body.public_key)
    except CheckpointError as exc:
        raise HTTPException(422, f"public_key: {exc}") from None
    checkpoint = Checkpoint.from_json(body.checkpoint.model_dump())
    store = services_of(request).store
    return await _verify(request, who, lambda: verify_with_checkpoint(store, checkpoint, key))


async def _verify(
    request: Request, who: Caller, walk: Callable[[], VerifyResult]
) -> AuditVerification:
    if who.principal.is_agent:
        raise HTTPException(403, "only humans verify the audit log")
    state = request.app.state
    lock: asyncio.Lock | None = getattr(state, "audit_verify_lock", None)
    if lock is None:
        lock = state.audit_verify_lock = asyncio.Lock()
    async with lock:
        result = await asyncio.to_thread(walk)
    return AuditVerification(
        ok=result.ok,
        checked=result.checked,
        first_bad_id=result.first_broken_id,
        reason=None if result.ok and result.reason == "chain intact" else result.reason,
        warning=result.warning,
    )


@router.get(
    "/audit/checkpoint", response_model=CheckpointOut, responses=_problems(401, 429, 403, 404)
)
async def audit_checkpoint(request: Request, who: Authenticated) -> CheckpointOut:
    """The newest signed checkpoint of the chain head; copy it somewhere the gateway
    cannot write."""
    if who.principal.is_agent:
        raise HTTPException(403, "only humans export audit checkpoints")
    found = await asyncio.to_thread(latest_checkpoint, services_of(request).store)
    if found is None:
        raise HTTPException(
            404, "no signed checkpoint yet: set audit.checkpoint.key (docs/audit.md)"
        )
    return CheckpointOut.model_validate(found.to_json())
