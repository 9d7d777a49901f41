"""The Kubernetes gateway: ``/k8s/<connection>/...`` on the HTTP listener is a reverse
proxy to that connection's API server. Each request is authenticated by its wardgate
bearer token, turned into one Action (policy/kubernetes), judged by the gate, held for
review or refused as a Kubernetes Status, and only then sent upstream with the
gateway's own credential. Secret values are redacted for masked principals; every
request is recorded.

The pump is thin: httpx streams the upstream response back (watch and log streams
included) and only responses that need redacting are read by the gateway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from wardgate.actions import Action, Verdict
from wardgate.audit.records import RecordingRecord, SessionEnd, SessionRecord, action_record
from wardgate.core.services import Services, TooManyFailures
from wardgate.identity.principals import Principal
from wardgate.kubernetes.redact import (
    RedactError,
    Transform,
    WatchRedactor,
    redact_body,
    redact_payload,
)
from wardgate.kubernetes.status import status_body
from wardgate.kubernetes.upstream import Upstreams
from wardgate.kubernetes.values import masks_values, value_masker
from wardgate.masking.stream import LineMasker
from wardgate.policy.kubernetes import RequestInfo, RequestInfoError, request_text, resolve
from wardgate.policy.kubernetes.sessions import STREAM_SUBRESOURCES, secret_mounts
from wardgate.policy.mask_rules import SessionMasking
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.settle import settle

log = logging.getLogger("wardgate.kubernetes")

PREFIX = "/k8s/"
# Request headers passed to the API server (the rest, Authorization first, are not).
FORWARDED = frozenset(
    {"accept", "content-type", "user-agent", "kubectl-command", "kubectl-session"}
)
IMPERSONATE = ("impersonate-user", "impersonate-group", "impersonate-uid", "impersonate-extra-")
RETURNED = frozenset(
    {
        "content-type",
        "warning",
        "audit-id",
        "cache-control",
        "x-kubernetes-pf-flowschema-uid",
        "x-kubernetes-pf-prioritylevel-uid",
    }
)
MAX_WATCH_LINE = 16 * 1024 * 1024
SESSION_IDLE = 300.0
TOKEN_CACHE = 5.0
TOKEN_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class KubeRequest:
    """One request to a Kubernetes connection, however it arrived: the HTTPS listener
    (kubectl), an MCP tool call. Judged, masked and recorded the same way."""

    principal: Principal
    connection: str
    method: str
    path: str  # from the API server's root: /api/v1/...
    query: str
    headers: tuple[tuple[str, str], ...]  # names in lower case, repeats kept
    body: bytes
    session_id: str
    client_addr: str
    protocol: str = "kubernetes"  # the Action's protocol ("mcp" for a tool call)
    # Numbers the caller's session's actions (an MCP session); else the listener's.
    next_seq: Callable[[], int] | None = None
    trace_id: str | None = None


def kube_action(req: KubeRequest) -> tuple[Action, RequestInfo]:
    """The Action a request becomes, and how the API server would read it."""
    try:
        info = resolve(req.method, req.path, req.query)
    except RequestInfoError:
        info = RequestInfo(False, req.path, req.method.lower())
    # exec/attach/port-forward connect the same way by GET (WebSocket) or POST
    # (SPDY), and the API server authorizes both as `create`: one action, one review.
    method = "POST" if info.subresource in STREAM_SUBRESOURCES else req.method
    text = request_text(method, req.path, req.query, list(req.headers))
    content_type = next((v for k, v in req.headers if k == "content-type"), "")
    body = req.body
    action = Action(
        req.principal,
        req.connection,
        req.protocol,
        "kubernetes",
        text,
        params=(body.decode("utf-8", "replace"),) if body else (),
        session_id=req.session_id,
        client_addr=req.client_addr,
        binding=hashlib.sha256(body).hexdigest() if body else "",
        context=(("content-type", content_type),) if body else (),
    )
    return action, info


@dataclass(frozen=True, slots=True)
class Judged:
    """A request the gate let through (allowed, or approved by a review)."""

    request: KubeRequest
    action: Action
    recorded: Action  # as reviews and the audit log keep it (_for_record)
    info: RequestInfo
    body: bytes
    verdict: Verdict
    review: ReviewInfo | None
    started: float
    t0: float


@dataclass
class _Session:
    id: str
    last_used: float
    seq: int = 0


@dataclass
class KubeState:
    """Per process: upstream clients and the open recording sessions (one per token,
    connection and client address, ended after SESSION_IDLE without a request)."""

    upstreams: Upstreams | None = None
    sessions: dict[tuple[str, str, str], _Session] = field(default_factory=dict)
    # sha256(token) -> (token id, principal, trusted until): see _authenticate
    tokens: dict[bytes, tuple[str, str, float]] = field(default_factory=dict)


def accept_without_protobuf(accept: str) -> str:
    """The client's Accept with protobuf ranges removed: the gateway reads JSON only."""
    kept = [part.strip() for part in accept.split(",") if part.strip() and "protobuf" not in part]
    return ", ".join(kept) or "application/json"


def _status(code: int, message: str, **kw: Any) -> Response:
    return Response(status_body(code, message, **kw), code, media_type="application/json")


class Refusal(Response):
    """A judged request that does not run: 403 with a Status; ``pending`` when a review
    holds it (an exec session ends with exit status 77 then, else 126)."""

    def __init__(
        self,
        message: str,
        pending: bool,
        causes: list[dict[str, str]],
        review: ReviewInfo | None = None,
        said: tuple[str, str] = ("", ""),
    ) -> None:
        super().__init__(
            status_body(403, message, causes=causes), 403, media_type="application/json"
        )
        self.message = message
        self.pending = pending
        self.review = review
        self.said = said  # the message and the hint apart (MCP answers with both)


class KubernetesGateway:
    """The ASGI app mounted at ``/k8s`` on the API listener."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.state = services.state(KubeState)
        if self.state.upstreams is None:
            self.state.upstreams = Upstreams(services.vault)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            # exec / attach (kubernetes/exec.py): judged like any request, then relayed.
            from wardgate.kubernetes.exec import websocket_session

            await websocket_session(self, scope, receive, send)
            return
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        response = await self.handle(request)
        await response(scope, receive, send)

    async def judge(self, request: Request) -> Judged | Response:
        """Authenticate, read, judge and settle one request: what may run, or the
        refusal to answer (recorded already)."""
        services = self.services
        raw = request.scope.get("raw_path") or request.scope["path"].encode()
        full = raw.decode("latin-1")
        rest = full[full.find(PREFIX) + len(PREFIX) :] if PREFIX in full else ""
        name, _, tail = rest.partition("/")
        conn = services.config.connections.get(name)
        if conn is None or conn.type != "kubernetes":
            return _status(404, f"wardgate: no Kubernetes connection named {name!r}")
        principal = await self._authenticate(request)
        if isinstance(principal, Response):
            return principal
        body = await _read_body(request, services.config.limits.max_message_bytes)
        if body is None:
            return _status(413, "wardgate: the request body is larger than the gateway accepts")
        if tail.startswith("/"):
            # "/k8s/<name>//api/...": httpx would take "api" for a host and send another
            # path than the one judged; refused whatever `on_parse_error` says.
            return _status(400, "wardgate: empty path segments ('//') are not accepted")
        kreq = KubeRequest(
            principal,
            name,
            request.method,
            "/" + tail,
            request.scope.get("query_string", b"").decode("latin-1"),
            tuple(request.headers.items()),
            body,
            self._session(request, principal, name),
            _addr(request),
        )
        return await self.judge_request(kreq, conn.reviews.wait)

    async def judge_request(self, req: KubeRequest, wait: float) -> Judged | Response:
        """Judge and settle one request (held up to ``wait`` seconds for a review): what
        may run, or the refusal to answer (a ``Refusal``, recorded already)."""
        services = self.services
        action, info = kube_action(req)
        if info.resource == "pods" and info.subresource == "exec" and not info.api_group:
            mounts = await self._secret_mounts(req.connection, info)
            action = replace(action, context=(*action.context, ("secret-mounts", mounts)))
        granted = (
            services.reviews.granted(req.principal.name, req.connection)
            if services.reviews
            else frozenset()
        )
        verdict = services.gate.check(action, granted)
        recorded = _for_record(action, info)
        started, t0 = time.time(), time.perf_counter()
        settled = await settle(
            services.reviews,
            recorded,
            verdict,
            wait=wait,
            base_url=services.config.review_url,
            what="request",
        )
        judged = Judged(
            req, action, recorded, info, req.body, settled.verdict, settled.review, started, t0
        )
        if settled.refusal is not None:
            # Not tied to the review: a held request's refusal is no result of it.
            self._record(
                recorded, settled.verdict, started, t0, "blocked",
                error=settled.refusal.message, next_seq=req.next_seq, trace_id=req.trace_id,
            )  # fmt: skip
            causes = [{"reason": "wardgate", "message": f"rule: {settled.verdict.rule}"}]
            if settled.review is not None:
                causes.append(
                    {"reason": "ReviewPending", "field": "review", "message": settled.review.id}
                )
            text = f"{settled.refusal.message}. {settled.refusal.hint}"
            pending = settled.review is not None and settled.status == "pending"
            said = (settled.refusal.message, settled.refusal.hint)
            return Refusal(text, pending, causes, settled.review, said)
        return judged

    async def handle(self, request: Request) -> Response:
        judged = await self.judge(request)
        if isinstance(judged, Response):
            return judged
        if (
            request.headers.get("upgrade")
            or "upgrade" in request.headers.get("connection", "").lower()
        ):
            message = (
                "wardgate: this stream is not offered through the gateway: exec and attach "
                "are relayed over WebSocket (v5.channel.k8s.io; kubectl 1.30 or later, "
                "without KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false), never over SPDY; "
                "port-forward is not relayed yet. Nothing was run"
            )
            self.record(judged, "not_executed", error=message)
            return _status(501, message)
        return await self.forward(judged)

    async def forward(self, judged: Judged) -> Response:
        """Send a judged request upstream with the cluster's credential and answer with
        the response as the principal may see it (Secrets redacted, values and logs
        masked), recorded. Streams (watch, logs) come back as a StreamingResponse."""
        masking = self.services.masking.for_session(
            judged.action.principal, judged.action.connection
        )
        info = judged.info
        if masking is not None and _unreadable(judged.request):
            # Masking reads the resource from the request: one it cannot read (allowed
            # in observe mode, or approved under on_parse_error: review) could answer
            # with anything, a Secret in clear among it.
            message = (
                "wardgate: the request cannot be read (see the unparsed-request rule), so "
                "its answer cannot be masked for you; it was not sent. Send the path "
                "without %-escapes, empty segments or ';'"
            )
            self.record(judged, "not_executed", error=message)
            return _status(403, message)
        transform = response_transform(info, masking)
        # Pod logs of a masked principal go through the masking engine line by line.
        log_masker = None
        if masking is not None and info.resource == "pods" and info.subresource == "log":
            log_masker = LineMasker(masking.mask_text)
        return await self._forward(judged, transform, log_masker)

    async def _authenticate(self, request: Request) -> Principal | Response:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _status(
                401, "wardgate: send your wardgate token as a bearer token (wardgate kubeconfig)"
            )
        # kubectl sends the token with every request, and proving one costs a PBKDF2
        # (SCRAM keys): a proven token is trusted for TOKEN_CACHE seconds (a revocation
        # takes effect within that), keyed by its digest, never the token itself.
        digest = hashlib.sha256(token.encode()).digest()
        now = time.monotonic()
        cached = self.state.tokens.get(digest)
        if cached is not None and cached[2] > now:
            principal = self.services.config.principal(cached[1])
            if principal is not None:
                request.scope["wardgate_token_id"] = cached[0]
                return principal
        try:
            checked = await self.services.check_bearer(token, _addr(request), "kubernetes")
        except TooManyFailures as exc:
            return _status(
                429, f"wardgate: too many failed authentications; retry in {exc.wait:.0f} s"
            )
        if checked is None:
            return _status(
                401, "wardgate: the token is wrong, revoked, or its principal no longer exists"
            )
        info, principal = checked
        if len(self.state.tokens) >= TOKEN_CACHE_SIZE:
            self.state.tokens.clear()
        self.state.tokens[digest] = (info.id, principal.name, now + TOKEN_CACHE)
        request.scope["wardgate_token_id"] = info.id
        return principal

    def _session(self, request: Request, principal: Principal, connection: str) -> str:
        now = time.monotonic()
        sessions = self.state.sessions
        for key in [k for k, s in sessions.items() if now - s.last_used > SESSION_IDLE]:
            ended = sessions.pop(key)
            self.services.recorder.submit(SessionEnd(ended.id, time.time(), "closed"))
        key = (str(request.scope.get("wardgate_token_id", "")), connection, _addr(request))
        session = sessions.get(key)
        if session is None:
            session = sessions[key] = _Session("k_" + secrets.token_hex(8), now)
            self.services.recorder.submit(
                SessionRecord(
                    id=session.id,
                    protocol="kubernetes",
                    principal=principal,
                    connection=connection,
                    client_addr=_addr(request),
                    started_at=time.time(),
                    application_name=request.headers.get("user-agent", "")[:200],
                    tls=request.url.scheme == "https",
                )
            )
        session.last_used = now
        return session.id

    def record(self, judged: Judged, status: str, **extra: Any) -> None:
        """Record a judged request's outcome (kubernetes/exec.py's sessions)."""
        self._record(
            judged.recorded, judged.verdict, judged.started, judged.t0, status,
            review=judged.review, next_seq=judged.request.next_seq,
            trace_id=judged.request.trace_id, **extra,
        )  # fmt: skip

    async def _secret_mounts(self, connection: str, info: RequestInfo) -> str:
        """Where the pod of an exec mounts Secrets and tokens, one path a line
        (policy/kubernetes/sessions.py ``secret_mounts``): an exec reading there reads a
        credential. ``/`` when the pod cannot be read (any file may then be one: fail
        closed); empty when it does not exist (the exec fails upstream)."""
        assert self.state.upstreams is not None
        client, auth = self.state.upstreams.client(self.services.config, connection)
        headers = {"accept": "application/json", **({"authorization": auth} if auth else {})}
        target = f"/api/v1/namespaces/{info.namespace}/pods/{info.name}"
        try:
            got = await client.get(target, headers=headers)
            if got.status_code == 404:
                return ""
            pod = got.json() if got.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            pod = None
        if not isinstance(pod, dict):
            log.info("kubernetes %s: the pod of an exec could not be read", connection)
            return "/"
        return "\n".join(secret_mounts(pod))

    def record_action(
        self, action: Action, verdict: Verdict, started: float, t0: float, status: str, **extra: Any
    ) -> None:
        """Record an action judged inside a session (a port a tunnel opens)."""
        self._record(action, verdict, started, t0, status, **extra)

    def _record(
        self,
        action: Action,
        verdict: Verdict,
        started: float,
        t0: float,
        status: str,
        *,
        command: str | None = None,
        rows: int | None = None,
        error: str | None = None,
        review: ReviewInfo | None = None,
        recording: str | None = None,
        next_seq: Callable[[], int] | None = None,
        trace_id: str | None = None,
    ) -> None:
        """The one place a Kubernetes request's records are made: its ActionRecord and,
        for a terminal session (exec -it, attach), its asciicast ``recording``.
        ``next_seq``: the numbering of the caller's own session (an MCP session)."""
        session = next((s for s in self.state.sessions.values() if s.id == action.session_id), None)
        seq = 0
        if next_seq is not None:
            seq = next_seq()
        elif session is not None:
            session.seq += 1
            seq = session.seq
        if recording is not None:
            self.services.recorder.submit(
                RecordingRecord(action.session_id, seq, started, recording)
            )
        self.services.recorder.submit(
            action_record(
                action.session_id,
                seq,
                action,
                verdict,
                status,
                started=started,
                t0=t0,
                rows=rows,
                command=command,
                error=error,
                trace_id=trace_id,
            )
        )
        runtime = self.services.reviews
        if review is not None and runtime is not None:
            result = {"status": status, "rows": rows, "command": command, "error": error}
            self.services.tasks.spawn(
                _in_thread(runtime.service.record_action_result, review, result),
                name="review-result",
            )

    async def _forward(
        self, judged: Judged, transform: Transform | None, log_masker: LineMasker | None
    ) -> Response:
        services = self.services
        req, info, body = judged.request, judged.info, judged.body
        connection = req.connection
        assert self.state.upstreams is not None
        try:
            client, auth = self.state.upstreams.client(services.config, connection)
        except Exception as exc:  # a missing secret or CA file: said, never detailed
            log.warning("kubernetes %s: cannot make the upstream client: %s", connection, exc)
            self.record(judged, "error", error="upstream not configured")
            return _status(
                503, "wardgate: the cluster credential or CA is not available to the gateway"
            )
        # A list, not a dict: Impersonate-Group may repeat, and every copy was judged.
        headers = [
            (k, v)
            for k, v in req.headers
            if (k in FORWARDED and k != "accept") or k.startswith(IMPERSONATE)
        ]
        accept = next((v for k, v in req.headers if k == "accept"), "")
        headers.append(("accept", accept_without_protobuf(accept)))
        if auth:
            headers.append(("authorization", auth))
        url = info.path + (f"?{req.query}" if req.query else "")
        streaming = info.verb == "watch" or info.subresource == "log"
        upstream_req = client.build_request(
            req.method,
            url,
            headers=headers,
            content=body or None,
            # Watches and logs may be quiet for long: no read timeout, only the dial's.
            timeout=httpx.Timeout(None, connect=services.config.limits.connect_timeout)
            if streaming
            else httpx.USE_CLIENT_DEFAULT,
        )
        try:
            upstream = await client.send(upstream_req, stream=True)
        except httpx.HTTPError as exc:
            log.info("kubernetes %s: upstream unreachable: %s", connection, type(exc).__name__)
            self.record(judged, "error", error="upstream unreachable")
            return _status(503, "wardgate: the cluster's API server could not be reached")
        out_headers = {k: v for k, v in upstream.headers.items() if k.lower() in RETURNED}
        status = "ok" if upstream.status_code < 400 else "error"
        command = f"HTTP {upstream.status_code}"
        if transform is not None and not streaming:
            try:
                raw = await _read_capped(upstream, judged.action, services)
                data = redact_body(raw, transform) if raw else raw
            except RedactError as exc:
                self.record(judged, "error", command=command, error=str(exc))
                return _status(
                    502,
                    f"wardgate: the response could not be redacted ({exc}); it was not passed on",
                )
            finally:
                await upstream.aclose()
            self.record(judged, status, command=command, rows=_items(data))
            return Response(data, upstream.status_code, headers=out_headers)

        async def pump() -> AsyncIterator[bytes]:
            redactor = WatchRedactor(MAX_WATCH_LINE, transform) if transform else None
            sent, error = 0, None
            try:
                async for chunk in upstream.aiter_raw():
                    if redactor is not None:
                        out = redactor.feed(chunk)
                    elif log_masker is not None:
                        out = log_masker.feed(chunk)
                    else:
                        out = chunk
                    sent += len(out)
                    if out:
                        yield out
                if redactor is not None and (tail := redactor.end()):
                    yield tail
                if log_masker is not None and (tail := log_masker.flush()):
                    yield tail
            except RedactError as exc:
                error = str(exc)  # the stream ends here: nothing unredacted goes out
            except httpx.HTTPError as exc:
                error = f"upstream stream ended: {type(exc).__name__}"
            finally:
                await upstream.aclose()
                self.record(
                    judged,
                    "error" if error else status,
                    command=f"{command} ({sent} bytes)",
                    error=error,
                )

        return StreamingResponse(pump(), upstream.status_code, headers=out_headers)


async def _in_thread(fn: Callable[..., Any], *args: Any) -> None:
    await asyncio.to_thread(fn, *args)


def _addr(request: Request) -> str:
    return request.client.host if request.client else ""


async def _read_body(request: Request, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _read_capped(upstream: httpx.Response, action: Action, services: Services) -> bytes:
    limit = services.config.connections[action.connection].kube.max_response_bytes
    chunks, size = [], 0
    async for chunk in upstream.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise RedactError("the response is larger than max_response_bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def response_transform(info: RequestInfo, masking: SessionMasking | None) -> Transform | None:
    """What a masked principal's response goes through before it leaves: Secrets
    redacted (kubernetes/redact.py), ConfigMap and env values masked (values.py)."""
    if masking is None or not info.is_resource_request:
        return None
    if info.resource == "secrets" and not info.api_group:
        return redact_payload
    if masks_values(info):
        return value_masker(masking.mask_text, info.resource == "configmaps")
    return None


def _unreadable(req: KubeRequest) -> bool:
    try:
        resolve(req.method, req.path, req.query)
    except RequestInfoError:
        return True
    return False


def _items(data: bytes) -> int | None:
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if isinstance(payload, dict):
        for key in ("items", "rows"):
            if isinstance(payload.get(key), list):
                return len(payload[key])
    return None


def _for_record(action: Action, info: RequestInfo) -> Action:
    """The action as reviews and the audit log keep it: a Secret's values in a request
    body are hidden there (the gate judged the real body; ``binding`` still binds it)."""
    if not action.params or info.resource != "secrets" or info.api_group:
        return action
    try:
        payload = json.loads(action.params[0] or "")
        text = redact_body(json.dumps(payload).encode()).decode()
    except (ValueError, RedactError):
        text = "wardgate: a Secret body (not shown)"
    return replace(action, params=(text,))
