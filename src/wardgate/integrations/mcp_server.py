"""wardgate as an MCP server: an agent gets tools, never credentials.

Streamable HTTP at ``/mcp`` on the API port (the official ``mcp`` SDK), authenticated
with ``Authorization: Bearer <wardgate token>``. Every tool call is an Action through
the same gate, review service, masking and recorder as a PostgreSQL client's
statement; a block comes back as a tool error naming the rule, a pending review as a
result that says what to do next.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mcp.server.fastmcp import Context, FastMCP
from mcp.server.fastmcp.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings

from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.records import (
    AUDIT_UNAVAILABLE,
    AUDIT_UNAVAILABLE_HINT,
    SessionEnd,
    SessionRecord,
    action_record,
    intended_record,
)
from wardgate.audit.responses import ResponseTap, SessionResults, session_budget
from wardgate.config import ResultsConfig, parse_duration
from wardgate.core.proposals import judge_proposal
from wardgate.identity.principals import Principal
from wardgate.kubernetes.tools import ReadArgs
from wardgate.postgres.catalog_watch import CatalogWatch
from wardgate.postgres.commit_barrier import CommitBarrier
from wardgate.postgres.query import QueryFailed, QueryFlight, run_sql
from wardgate.reviews.messages import outcome_text, review_url
from wardgate.reviews.model import ReviewError, ReviewInfo
from wardgate.reviews.settle import settle

if TYPE_CHECKING:
    from wardgate.core.services import Services

    Ctx = Context[Any, Any, Any]
else:
    Ctx = Context  # FastMCP finds the context parameter by this class

log = logging.getLogger("wardgate.mcp")


def _went_away(exc: BaseException | None) -> bool:
    import anyio
    from starlette.requests import ClientDisconnect

    gone = (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream)
    return isinstance(exc, (*gone, ClientDisconnect, ConnectionError))


class ClientGoneFilter(logging.Filter):
    """The MCP SDK logs a client that closed its stream (or a session ended while its
    SSE stream was open) as an ERROR with a traceback. It is an everyday event: one
    INFO line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and _went_away(exc):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = f"{record.getMessage()}: the client went away ({type(exc).__name__})"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


_CLIENT_GONE = ClientGoneFilter()

MAX_ROWS = 200  # rows a query tool call returns at most
MAX_VALUE = 2000  # characters of one value
QUERY_SECONDS = 30.0
IDLE_SESSION = 1800.0
INSTRUCTIONS = (
    "wardgate gives you governed access to databases and Kubernetes clusters. Call "
    "list_connections first, then describe(connection) to see the tables (or API "
    "resources) you may read. query(connection, sql, params) "
    "runs one statement as you; values may be masked. Writes may need a human approval: "
    "a query then returns status pending_review with a review_id; call review_status "
    "later and run the same statement again once it is approved, or use propose_change "
    "to have the gateway run a change set after approval. On a Kubernetes connection, "
    "query(connection, path=... or resource=...) reads, and propose_change(connection, "
    "manifests=[...], justification) proposes objects. A tool error that contains "
    "'wardgate: blocked' is a policy decision: do not retry it as it is."
)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass
class _McpSession:
    id: str
    principal: str
    seq: int = 0
    last_used: float = field(default_factory=time.monotonic)
    # Per connection: what is left of this session's budget for recording results.
    budgets: dict[str, SessionResults | None] = field(default_factory=dict)


class McpGateway:
    """The MCP server of one gateway process, and the ASGI endpoint that guards it."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.server = FastMCP(
            "wardgate",
            instructions=INSTRUCTIONS,
            streamable_http_path="/mcp",
            session_idle_timeout=IDLE_SESSION,
            # Bearer tokens, not cookies: a rebinding page cannot present one.
            transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )
        self._sessions: dict[str, _McpSession] = {}
        for name in ("mcp.server.streamable_http", "mcp.server.streamable_http_manager"):
            logging.getLogger(name).addFilter(_CLIENT_GONE)  # idempotent: one instance
        self._register_tools()
        self.server.streamable_http_app()  # creates the session manager

    # -- running ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve MCP sessions until cancelled; then end their recordings."""
        try:
            async with self.server.session_manager.run():
                while True:
                    await asyncio.sleep(60)
                    self._end_idle()
        finally:
            for sid in list(self._sessions):
                self._end(sid, "closed")

    def _end_idle(self) -> None:
        now = time.monotonic()
        for sid, s in list(self._sessions.items()):
            if now - s.last_used > IDLE_SESSION:
                self._end(sid, "idle")

    def _end(self, mcp_session_id: str, status: str) -> None:
        s = self._sessions.pop(mcp_session_id, None)
        if s is not None:
            self.services.recorder.submit(SessionEnd(s.id, time.time(), status))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI: authenticate, then hand the request to the MCP transport."""
        from starlette.requests import Request

        from wardgate.api.app import problem
        from wardgate.api.auth import caller

        request = Request(scope, receive)
        try:
            who = await caller(request)
        except Exception as exc:  # HTTPException from the shared authentication
            status = int(getattr(exc, "status_code", 401))
            response = problem(status, str(getattr(exc, "detail", "authentication required")))
            await response(scope, receive, send)
            return
        sid = request.headers.get("mcp-session-id")
        known = self._sessions.get(sid) if sid else None
        if known is not None and known.principal != who.principal.name:
            response = problem(404, "no such MCP session")  # never someone else's
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["wardgate_principal"] = who.principal
        await self.server.session_manager.handle_request(scope, receive, send)
        if scope.get("method") == "DELETE" and sid:
            self._end(sid, "closed")

    # -- tools --------------------------------------------------------------------------

    def _register_tools(self) -> None:
        tool = self.server.tool

        @tool(description="The connections you may use, with your roles on each.")
        async def list_connections(ctx: Ctx) -> dict[str, Any]:
            async def run(who: Principal, session: _McpSession) -> dict[str, Any]:
                return {"connections": self._connections(who)}

            return await self._call(ctx, "list_connections", {}, run)

        @tool(
            description="What you may read on a connection: tables and columns of a "
            "database; on a Kubernetes connection, the API resources (from discovery)."
        )
        async def describe(connection: str, ctx: Ctx) -> dict[str, Any]:
            async def run(who: Principal, session: _McpSession) -> dict[str, Any]:
                if self._usable(who, connection) == "kubernetes":
                    return await self._kube_describe(who, connection)
                return await self._describe(who, connection)

            return await self._call(ctx, "describe", {"connection": connection}, run)

        @tool(
            description="Run one SQL statement on a connection, as you. Rows come back as "
            "JSON with column names, masked where policy says so, at most "
            f"{MAX_ROWS} rows. params are the values of $1, $2, ... as text. On a "
            "Kubernetes connection, run one read request instead: path (e.g. "
            "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb) or resource (pods, "
            "deployments.apps, ...) with namespace, name and label_selector, verb get or "
            "list; the answer is the API server's JSON, Secret values redacted and values "
            "masked where policy says so. Writes go through propose_change."
        )
        async def query(
            connection: str,
            ctx: Ctx,
            sql: str | None = None,
            params: list[str | None] | None = None,
            path: str | None = None,
            verb: str | None = None,
            resource: str | None = None,
            namespace: str | None = None,
            name: str | None = None,
            label_selector: str | None = None,
        ) -> dict[str, Any]:
            who, session = self._enter(ctx)
            kube = ReadArgs(path, verb, resource, namespace, name, label_selector)
            try:
                kind = self._usable(who, connection)
                if kind == "postgres" and not sql:
                    raise ToolError("query on a database connection needs sql")
            except ToolError as exc:
                # Nothing ran, but the call is recorded like any refused tool call (an
                # agent probing for connections leaves a trace: attack17b).
                said = str(exc)

                async def refused(who: Principal, session: _McpSession) -> dict[str, Any]:
                    raise ToolError(said)

                args = {"connection": connection, "sql": sql, "params": list(params or ())}
                return await self._call(ctx, "query", args, refused)
            if kind == "kubernetes":
                return await self._kube_query(ctx, who, session, connection, sql, kube)
            assert sql is not None
            return await self._query(ctx, who, session, connection, sql, tuple(params or ()))

        @tool(
            description="Propose a change set (several SQL statements and why). After a "
            "human approves it, wardgate runs it in one transaction; check the outcome "
            "with review_status. On a Kubernetes connection, give manifests (YAML or JSON "
            "objects, several per item with ---): a human sees each object and the "
            "server-side dry run, then wardgate applies them once (server-side apply)."
        )
        async def propose_change(
            connection: str,
            justification: str,
            ctx: Ctx,
            statements: list[str] | None = None,
            manifests: list[str] | None = None,
        ) -> dict[str, Any]:
            async def run(who: Principal, session: _McpSession) -> dict[str, Any]:
                kind = self._usable(who, connection)
                if kind == "kubernetes":
                    parts = manifests or statements or []
                    return await self._propose(
                        ctx, who, session, connection, parts, justification, kind
                    )
                if manifests:
                    raise ToolError("manifests are for Kubernetes connections; give statements")
                return await self._propose(
                    ctx, who, session, connection, statements or [], justification, kind
                )

            given = {"statements": statements, "manifests": manifests}
            conn = self.services.config.connections.get(connection)
            if conn is not None and conn.type == "kubernetes":
                from wardgate.kubernetes.proposals import recorded_manifests

                # A Secret's values never reach the audit log (refused, but recorded).
                given = {k: recorded_manifests(v) if v else v for k, v in given.items()}
            args = {
                "connection": connection,
                **{k: v for k, v in given.items() if v is not None},
                "justification": justification,
            }
            return await self._call(ctx, "propose_change", args, run)

        @tool(description="Status of a review you filed and, once executed, its result.")
        async def review_status(review_id: str, ctx: Ctx) -> dict[str, Any]:
            async def run(who: Principal, session: _McpSession) -> dict[str, Any]:
                review = await asyncio.to_thread(self._reviews().service.get, review_id)
                if review is None or review.principal != who.name:
                    raise ToolError(f"no review {review_id!r} of yours")
                return self._review_answer(review)

            return await self._call(ctx, "review_status", {"review_id": review_id}, run)

        @tool(
            description="Ask for a role on a connection for a limited time (e.g. 30m); a "
            "human must approve it. Check with review_status."
        )
        async def request_access(
            connection: str,
            role: str,
            duration: str,
            reason: str,
            ctx: Ctx,
        ) -> dict[str, Any]:
            async def run(who: Principal, session: _McpSession) -> dict[str, Any]:
                try:
                    seconds = parse_duration(duration)
                except ValueError as exc:
                    raise ToolError(str(exc)) from None
                service = self._reviews().service
                try:
                    review = await asyncio.to_thread(
                        service.request_grant, who, connection, role, seconds, reason
                    )
                except ReviewError as exc:
                    raise ToolError(str(exc)) from None
                return self._review_answer(review)

            args = {"connection": connection, "role": role, "duration": duration, "reason": reason}
            return await self._call(ctx, "request_access", args, run)

    # -- tool bodies ----------------------------------------------------------------------

    async def _call(
        self,
        ctx: Ctx,
        tool_name: str,
        args: dict[str, Any],
        run: Callable[[Principal, _McpSession], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Every tool but ``query`` (which is judged and recorded as SQL): run it and
        record the call as an action, with all its arguments, its outcome and its result
        as the client got it (masked, within the recording budgets), so the session tells
        the whole conversation. What a call files (proposals, grants) is in the review
        events too."""
        who, session = self._enter(ctx)
        recorder = self.services.recorder
        if recorder.unavailable:
            recorder.refused()  # counted, not queued (AUDIT_UNAVAILABLE_RULE)
            raise ToolError(f"{AUDIT_UNAVAILABLE}. {AUDIT_UNAVAILABLE_HINT}")
        connection = str(args.get("connection", ""))
        text = f"{tool_name} {json.dumps(args, sort_keys=True, ensure_ascii=False)}"
        action = Action(
            who,
            connection,
            "mcp",
            "mcp",
            text,
            session_id=session.id,
            client_addr=_client_addr(ctx),
        )
        verdict = Verdict(Decision.ALLOW, f"mcp:{tool_name}", "an MCP tool of the gateway")
        started, t0, trace = time.time(), time.perf_counter(), _trace_id(ctx)
        try:
            body = await run(who, session)
        except ToolError as exc:
            error = str(exc)
            self._record(session, action, verdict, started, t0, "error", error=error, trace=trace)
            raise
        except BaseException as exc:
            self._record(
                session,
                action,
                verdict,
                started,
                t0,
                "interrupted",
                error=f"the tool call ended unfinished: {type(exc).__name__}",
                trace=trace,
            )
            raise
        result = self._response(
            session, connection, body, masking_for=(who, str(body.get("connection") or connection))
        )
        self._record(session, action, verdict, started, t0, "ok", trace=trace, result=result)
        return body

    def _enter(self, ctx: Ctx) -> tuple[Principal, _McpSession]:
        request = ctx.request_context.request
        principal: Principal | None = getattr(
            getattr(request, "state", None), "wardgate_principal", None
        )
        if principal is None or request is None:
            raise ToolError("not authenticated")
        # The principal as the configuration says now (groups may have changed).
        current = self.services.config.principal(principal.name)
        if current is None:
            raise ToolError("your principal is no longer configured")
        sid = request.headers.get("mcp-session-id") or "stateless"
        session = self._sessions.get(sid)
        if session is None:
            session = _McpSession("m_" + secrets.token_hex(8), current.name)
            self._sessions[sid] = session
            client = ctx.session.client_params
            name = client.clientInfo.name if client is not None else ""
            version = client.clientInfo.version if client is not None else ""
            self.services.recorder.submit(
                SessionRecord(
                    id=session.id,
                    protocol="mcp",
                    principal=current,
                    connection="",
                    client_addr=request.client.host if request.client else "",
                    started_at=time.time(),
                    application_name=f"{name} {version}".strip()[:200],
                    tls=request.url.scheme == "https",
                )
            )
        session.last_used = time.monotonic()
        return current, session

    def _reviews(self) -> Any:
        if self.services.reviews is None:
            raise ToolError("reviews are not running on this gateway process")
        return self.services.reviews

    async def _first_look(self, connection: str) -> None:
        """A query right after the gateway started waits for the catalogue watch's first
        look at its connection (user casts, shadowing routines), as a client session
        does (postgres/listener.py); and one right after DDL through the gateway waits for
        the watch to read what it changed (postgres/relay.py `_wait_for_facts`)."""
        watch = self.services.state(CatalogWatch)
        await watch.first_look(self.services, connection)
        await watch.fresh(self.services, connection)

    def _granted(self, who: Principal, connection: str) -> frozenset[str]:
        reviews = self.services.reviews
        return reviews.granted(who.name, connection) if reviews is not None else frozenset()

    def _connections(self, who: Principal) -> list[dict[str, Any]]:
        out = []
        for name, conn in self.services.config.connections.items():
            roles = sorted({conn.roles[g] for g in who.groups if g in conn.roles})
            granted = sorted(self._granted(who, name))
            if roles or granted:
                out.append(
                    {
                        "name": name,
                        "type": conn.type,
                        "description": conn.description,
                        "roles": roles,
                        "granted_roles": granted,
                    }
                )
        return out

    def _usable(self, who: Principal, connection: str) -> str:
        """The connection's type, when these tools reach it (a database, a cluster)."""
        if not any(c["name"] == connection for c in self._connections(who)):
            raise ToolError(
                f"connection {connection!r} does not exist or you have no role on it; "
                "call list_connections to see yours"
            )
        kind = self.services.config.connections[connection].type
        if kind not in ("postgres", "kubernetes"):
            raise ToolError(
                f"connection {connection!r} is an {kind} target; these tools reach databases "
                "and Kubernetes clusters"
            )
        return kind

    async def _describe(self, who: Principal, connection: str) -> dict[str, Any]:
        sql = (
            "SELECT table_schema, table_name, column_name, data_type "
            "FROM information_schema.columns "
            "WHERE table_schema NOT IN ('pg_catalog', 'information_schema') "
            "AND table_schema NOT LIKE 'pg_toast%' "
            "ORDER BY table_schema, table_name, ordinal_position"
        )
        from wardgate.postgres.internal import InternalQueryFailed, internal_session

        try:
            async with internal_session(
                self.services, connection, application_name="wardgate-mcp", max_rows=20000
            ) as s:
                (result,) = await s.simple(sql)
        except InternalQueryFailed as exc:
            raise ToolError(f"wardgate: {exc.reason}") from None
        granted = self._granted(who, connection)
        await self._first_look(connection)
        tables: dict[str, list[dict[str, str]]] = {}
        for schema, table, column, type_ in result.rows:
            qualified = f"{schema}.{table}"
            text = f'SELECT "{column}" FROM "{schema}"."{table}" LIMIT 1'
            verdict = self.services.gate.check(Action(who, connection, "mcp", "sql", text), granted)
            if verdict.decision is Decision.ALLOW:
                tables.setdefault(qualified, []).append({"name": str(column), "type": str(type_)})
        return {
            "connection": connection,
            "tables": [{"table": t, "columns": cols} for t, cols in tables.items()],
        }

    async def _kube_describe(self, who: Principal, connection: str) -> dict[str, Any]:
        from wardgate.kubernetes.tools import describe

        try:
            return await describe(self.services, who, connection, self._granted(who, connection))
        except ValueError as exc:  # DiscoveryError
            raise ToolError(f"wardgate: {exc}") from None

    async def _kube_query(
        self,
        ctx: Ctx,
        who: Principal,
        session: _McpSession,
        connection: str,
        sql: str | None,
        kube: ReadArgs,
    ) -> dict[str, Any]:
        """One read request through the Kubernetes gateway's own code (judged, masked
        and recorded there, in this MCP session); a call that sends nothing is recorded
        as a refused tool call."""
        from wardgate.kubernetes.proxy import KubernetesGateway
        from wardgate.kubernetes.tools import ToolRefused, read_target, run_read

        args = {"connection": connection, **{k: v for k, v in asdict(kube).items() if v}}
        try:
            if sql:
                raise ToolRefused("this is a Kubernetes connection: give path or resource, not sql")
            target, query = await read_target(self.services, connection, kube)

            def next_seq() -> int:
                session.seq += 1
                return session.seq

            answer = await run_read(
                KubernetesGateway(self.services),
                who,
                connection,
                target,
                query,
                session_id=session.id,
                client_addr=_client_addr(ctx),
                next_seq=next_seq,
                trace_id=_trace_id(ctx),
            )
        except ToolRefused as exc:
            said = str(exc)

            async def refused(who: Principal, session: _McpSession) -> dict[str, Any]:
                raise ToolError(said)

            return await self._call(ctx, "query", args, refused)
        if isinstance(answer, dict):
            return answer
        message, hint = answer.said
        if not answer.pending or answer.review is None:
            raise ToolError(answer.message)
        return self._pending_answer(answer.review, message, hint)

    async def _query(
        self,
        ctx: Ctx,
        who: Principal,
        session: _McpSession,
        connection: str,
        sql: str,
        params: tuple[str | None, ...],
    ) -> dict[str, Any]:
        action = Action(
            who,
            connection,
            "mcp",
            "sql",
            sql,
            params,
            session_id=session.id,
            client_addr=_client_addr(ctx),
        )
        granted = self._granted(who, connection)
        await self._first_look(connection)
        # In flight from before it is judged until its server session is gone: a DDL
        # commit meanwhile waits for it (postgres/commit_barrier.py).
        flight = QueryFlight(connection)
        barrier = self.services.state(CommitBarrier)
        barrier.add(flight)
        try:
            return await self._judged_query(ctx, who, session, action, granted, flight)
        finally:
            barrier.landed(flight, flight.closing())

    async def _judged_query(
        self,
        ctx: Ctx,
        who: Principal,
        session: _McpSession,
        action: Action,
        granted: frozenset[str],
        flight: QueryFlight,
    ) -> dict[str, Any]:
        connection, sql, params = action.connection, action.text, action.params
        flight.judged = time.monotonic_ns()
        verdict = self.services.gate.check(action, granted)
        started, t0 = time.time(), time.perf_counter()
        trace = _trace_id(ctx)
        settled = await settle(
            self.services.reviews,
            action,
            verdict,
            wait=0.0,  # a tool call answers at once; review_status tells the rest
            base_url=self.services.config.review_url,
        )
        if settled.refusal is not None:
            said = settled.refusal
            self._record(
                session,
                action,
                settled.verdict,
                started,
                t0,
                "blocked",
                error=said.message,
                trace=trace,
            )
            if settled.status in ("blocked", "denied") or settled.review is None:
                raise ToolError(f"{said.message}. {said.hint}")
            return self._pending_answer(settled.review, said.message, said.hint)
        verdict, review = settled.verdict, settled.review
        recorder = self.services.recorder
        if recorder.unavailable:
            recorder.refused()  # counted, not queued (AUDIT_UNAVAILABLE_RULE)
            raise ToolError(f"{AUDIT_UNAVAILABLE}. {AUDIT_UNAVAILABLE_HINT}")
        # Journalled before it runs (audit.journal): if the gateway dies while the
        # statement runs, the store still gets its record, as interrupted.
        session.seq += 1
        seq = session.seq
        recorder.intend(
            intended_record(session.id, seq, action, verdict, started=started, trace_id=trace)
        )
        try:
            answer = await run_sql(
                self.services,
                who,
                connection,
                sql,
                params,
                max_rows=MAX_ROWS,
                seconds=QUERY_SECONDS,
                granted=granted,
                changes=self.services.gate.changes_catalogue(verdict.statements, connection),
                flight=flight,
            )
        except QueryFailed as exc:
            self._record(
                session,
                action,
                verdict,
                started,
                t0,
                "error",
                error=str(exc),
                sqlstate=exc.sqlstate,
                trace=trace,
                review=review,
                seq=seq,
            )
            raise ToolError(f"the database refused the statement ({exc.sqlstate}): {exc}") from None
        rows = [[_capped(v) for v in row] for row in answer.rows]
        body: dict[str, Any] = {
            "command": answer.command,
            "row_count": answer.row_count,
            "columns": answer.columns,
            "rows": rows,
            "truncated": answer.truncated,
        }
        if answer.truncated:
            body["note"] = (
                f"truncated: only the first {MAX_ROWS} of {answer.row_count} rows are shown; "
                "add a WHERE or LIMIT to see the rest"
            )
        if review is not None:
            body["review_id"] = review.id
        self._record(
            session,
            action,
            verdict,
            started,
            t0,
            "ok",
            rows=answer.row_count,
            command=answer.command,
            trace=trace,
            review=review,
            seq=seq,
            result=self._response(session, connection, body),
        )
        return body

    def _response(
        self,
        session: _McpSession,
        connection: str,
        body: dict[str, Any],
        *,
        masking_for: tuple[Principal, str] | None = None,
    ) -> dict[str, Any] | None:
        """The tool result as the client gets it (masked rows), for the record, within
        the connection's budgets (``audit/responses.py``, as for SQL and SSH); a call
        naming no connection has the default budgets. ``masking_for``: (principal,
        connection) whose masking rules apply to the text of a result that did not go
        through the masking engine on its way (the gateway's own tools)."""
        config = self.services.config
        if connection not in session.budgets:
            if connection in config.connections:
                session.budgets[connection] = session_budget(config, connection)
            else:
                d = ResultsConfig()
                session.budgets[connection] = SessionResults(d.rows, d.bytes, d.session_bytes)
        budget = session.budgets[connection]
        if budget is None:
            return None
        text = json.dumps(body, ensure_ascii=False, default=str)
        if masking_for is not None:
            masking = self.services.masking.for_session(*masking_for)
            if masking is not None:
                text = masking.mask_text(text)
        tap = ResponseTap(budget, "utf-8", kind="text")
        tap.feed(text.encode())
        return tap.summary()

    async def _propose(
        self,
        ctx: Ctx,
        who: Principal,
        session: _McpSession,
        connection: str,
        statements: list[str],
        justification: str,
        kind: str = "postgres",
    ) -> dict[str, Any]:
        if not justification.strip():
            raise ToolError("a proposal needs a justification for the human reviewer")
        service = self._reviews().service
        if kind == "kubernetes":
            from wardgate.kubernetes.proposals import propose

            try:
                review = await propose(
                    self.services,
                    who,
                    connection,
                    statements,
                    justification,
                    session_id=session.id,
                    client_addr=_client_addr(ctx),
                )
            except ReviewError as exc:
                raise ToolError(f"wardgate: {exc}") from None
            said = outcome_text(
                "pending", review, self.services.config.review_url, what="change set"
            )
            return self._pending_answer(review, said.message, said.hint)
        try:
            verdict = judge_proposal(self.services, who, connection, statements, protocol="mcp")
            review = await asyncio.to_thread(
                lambda: service.request_proposal(
                    who,
                    connection,
                    statements,
                    justification,
                    verdict,
                    client_addr=_client_addr(ctx),
                    session_id=session.id,
                    protocol="mcp",
                )
            )
        except ReviewError as exc:
            raise ToolError(f"wardgate: {exc}") from None
        said = outcome_text("pending", review, self.services.config.review_url, what="change set")
        return self._pending_answer(review, said.message, said.hint)

    def _pending_answer(self, review: ReviewInfo, message: str, hint: str) -> dict[str, Any]:
        return {
            "status": "pending_review",
            "review_id": review.id,
            "url": review_url(self.services.config.review_url, review.id),
            "message": message,
            "next": hint + f" Check the decision with review_status(review_id={review.id!r}).",
        }

    def _review_answer(self, review: ReviewInfo) -> dict[str, Any]:
        body: dict[str, Any] = {
            "review_id": review.id,
            "kind": review.kind,
            "status": review.status,
            "connection": review.connection,
            "url": review_url(self.services.config.review_url, review.id),
            "votes": [
                {"by": v.voter, "decision": v.decision, "reason": v.reason} for v in review.votes
            ],
        }
        if review.kind == "grant":
            body["role"] = review.detail.get("role")
            body["until"] = review.approved_until
        if review.result is not None:
            body["result"] = review.result
        if review.status == "approved" and review.kind == "action":
            body["next"] = (
                "approved: run the same statement again (same text and params); it runs once"
            )
        return body

    def _record(
        self,
        session: _McpSession,
        action: Action,
        verdict: Verdict,
        started: float,
        t0: float,
        status: str,
        *,
        rows: int | None = None,
        command: str | None = None,
        error: str | None = None,
        sqlstate: str | None = None,
        trace: str | None = None,
        result: dict[str, Any] | None = None,
        review: ReviewInfo | None = None,
        seq: int | None = None,
    ) -> None:
        """``seq``: the action's number when its intent is already journalled."""
        if seq is None:
            session.seq += 1
            seq = session.seq
        self.services.recorder.submit(
            action_record(
                session.id,
                seq,
                action,
                verdict,
                status,
                started=started,
                t0=t0,
                rows=rows,
                command=command,
                error=error,
                sqlstate=sqlstate,
                trace_id=trace,
                result=result,
            )
        )
        if review is not None and self.services.reviews is not None:
            outcome = {"status": status, "rows": rows, "command": command, "error": error}
            self.services.tasks.spawn(
                asyncio.to_thread(
                    self.services.reviews.service.record_action_result, review, outcome
                ),
                name="review-result",
            )


def _client_addr(ctx: Ctx) -> str:
    request = ctx.request_context.request
    client = getattr(request, "client", None)
    return str(client.host) if client else ""


_TRACE_KEYS = ("trace_id", "traceId", "conversation_id", "conversationId", "traceparent")


def _trace_id(ctx: Ctx) -> str | None:
    """The agent's conversation/trace id: from the call's ``_meta`` or the HTTP
    ``traceparent`` / ``X-Wardgate-Trace`` header, when the client sends one."""
    meta = ctx.request_context.meta
    if meta is not None:
        extra = meta.model_dump(exclude_none=True)
        for key in _TRACE_KEYS:
            if isinstance(extra.get(key), str):
                return str(extra[key])[:200]
    request = ctx.request_context.request
    headers = getattr(request, "headers", None)
    if headers is not None:
        for name in ("x-wardgate-trace", "traceparent"):
            if headers.get(name):
                return str(headers[name])[:200]
    return None


def _capped(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_VALUE:
        return value
    return value[:MAX_VALUE] + f"…[{len(value) - MAX_VALUE} more characters]"
