"""The MCP tools on a Kubernetes connection (integrations/mcp_server.py calls these):
``describe`` lists the resources the principal may read, ``query`` runs one read
request. A query is a ``KubeRequest`` through the very code kubectl's requests go
through (kubernetes/proxy.py): the request-info resolver, ``gate.check()``, reviews,
Secret redaction and value masking, recording. Writes are not queries: they go through
``propose_change`` (kubernetes/proposals.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

from starlette.responses import Response, StreamingResponse

from wardgate.actions import Decision
from wardgate.identity.principals import Principal
from wardgate.kubernetes.discovery import ApiResource, discover, find_resource
from wardgate.kubernetes.proxy import (
    KubeRequest,
    KubernetesGateway,
    Refusal,
    kube_action,
    response_transform,
)
from wardgate.policy.kubernetes import RequestInfoError, resolve
from wardgate.policy.kubernetes.sessions import STREAM_SUBRESOURCES

if TYPE_CHECKING:
    from wardgate.core.services import Services

MAX_ITEMS = 200  # items (or Table rows) a query returns at most
MAX_BYTES = 4 * 1024 * 1024  # of a streamed response (logs, unmasked reads) read at most
# A name or namespace as the API server accepts them (RBAC names may hold ':'): nothing
# that would make the path sent differ from the path judged ('?', '#', '/', escapes).
NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._:@-]{0,252})?")
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection", "apply"})


class ToolRefused(ValueError):
    """A call the tool does not run (nothing was sent); the message says what to do."""


def _to_propose(what: str) -> ToolRefused:
    return ToolRefused(
        f"wardgate: query runs read requests only (get, list); {what} changes the cluster. "
        "To change objects, call propose_change(connection, manifests=[...], justification): "
        "a human reviews the objects and the server-side dry run, then the gateway applies "
        "them once. Nothing was sent"
    )


@dataclass(frozen=True, slots=True)
class ReadArgs:
    path: str | None = None
    verb: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    label_selector: str | None = None


async def read_target(services: Services, connection: str, args: ReadArgs) -> tuple[str, str]:
    """The path and query of the read request the arguments ask for."""
    verb = (args.verb or "").strip().lower()
    if verb in WRITE_VERBS:
        raise _to_propose(f"verb {verb!r}")
    if verb and verb not in ("get", "list"):
        raise ToolRefused(
            f"wardgate: query runs get and list requests; verb {verb!r} is not offered here "
            "(watch streams, exec, attach, port-forward and proxy need kubectl through the "
            "gateway). Nothing was sent"
        )
    if args.path:
        if args.resource or args.name or args.namespace:
            raise ToolRefused("give either path or resource/namespace/name, not both")
        path, _, query = args.path.strip().partition("?")
        if "#" in args.path or any(c.isspace() or not c.isprintable() for c in args.path):
            raise ToolRefused("path holds '#', spaces or control characters; nothing was sent")
        if not path.startswith("/") or path.startswith("//"):
            raise ToolRefused(
                f"path must start with / (e.g. /api/v1/namespaces/default/pods), not {path!r}"
            )
        if args.label_selector:
            query = "&".join(
                p for p in (query, urlencode({"labelSelector": args.label_selector})) if p
            )
        return path, query
    if not args.resource:
        raise ToolRefused(
            "on a Kubernetes connection query needs path (e.g. /api/v1/namespaces/default/pods) "
            "or resource (pods, deployments.apps, ...) with namespace and name; call "
            "describe(connection) to see the resources"
        )
    try:
        found = find_resource(await discover(services, connection), args.resource)
    except ValueError as exc:
        raise ToolRefused(f"wardgate: {exc}") from None
    if found is None:
        raise ToolRefused(
            f"the cluster serves no resource {args.resource!r}; call describe(connection)"
        )
    for what, value in (("namespace", args.namespace), ("name", args.name)):
        if value and not NAME.fullmatch(value):
            raise ToolRefused(f"{what} {value!r} is not a Kubernetes name; nothing was sent")
    if verb == "get" and not args.name:
        raise ToolRefused("verb get needs a name (or use list)")
    name = "" if verb == "list" else (args.name or "")
    path = found.path(args.namespace or "", name)
    query = urlencode({"labelSelector": args.label_selector}) if args.label_selector else ""
    return path, query


def _refuse_unless_read(method: str, path: str, query: str) -> None:
    try:
        info = resolve(method, path, query)
    except RequestInfoError as exc:
        raise ToolRefused(
            f"wardgate: the request cannot be read ({exc}); nothing was sent"
        ) from None
    if info.verb in WRITE_VERBS:
        raise _to_propose(f"a {info.verb} request")
    if (
        info.subresource in STREAM_SUBRESOURCES
        or info.verb == "proxy"
        or info.subresource == "proxy"
    ):
        raise ToolRefused(
            f"wardgate: {info.subresource or info.verb} is not offered through query "
            "(use kubectl through the gateway); nothing was sent"
        )
    if info.verb == "watch":
        raise ToolRefused("wardgate: query does not watch; list instead (drop watch=1)")
    # Every `follow` counts (the API server reads the first, a dict would keep the last),
    # and an empty one is true there (apimachinery's Convert_Slice_string_To_bool): a
    # followed log never ends, and the tool call would not either.
    follows = [v for k, v in parse_qsl(query, keep_blank_values=True) if k == "follow"]
    if any(v.lower() not in ("0", "false") for v in follows):
        raise ToolRefused("wardgate: query does not follow logs; drop follow (tailLines helps)")


async def run_read(
    gateway: KubernetesGateway,
    principal: Principal,
    connection: str,
    path: str,
    query: str,
    *,
    session_id: str,
    client_addr: str,
    next_seq: Callable[[], int],
    trace_id: str | None,
) -> dict[str, Any] | Refusal:
    """Run one read request as ``principal``, judged, masked and recorded as kubectl's
    are: the answer as the principal may see it, or the refusal (blocked, held)."""
    _refuse_unless_read("GET", path, query)
    request = KubeRequest(
        principal,
        connection,
        "GET",
        path,
        query,
        (("accept", "application/json"),),
        b"",
        session_id,
        client_addr,
        protocol="mcp",
        next_seq=next_seq,
        trace_id=trace_id,
    )
    judged = await gateway.judge_request(request, 0.0)  # a tool call answers at once
    if isinstance(judged, Refusal):
        return judged
    if isinstance(judged, Response):
        raise ToolRefused(_message(judged.body))
    response = await gateway.forward(judged)
    raw, truncated = await _drain(response)
    text = raw.decode("utf-8", "replace")
    if response.status_code >= 400:
        raise ToolRefused(
            f"the API server answered HTTP {response.status_code}: {_message(raw) or text[:500]}"
        )
    body: dict[str, Any] = {
        "status": response.status_code,
        "path": path + (f"?{query}" if query else ""),
    }
    try:
        payload = None if truncated else json.loads(raw)
    except ValueError:
        payload = None
    if payload is None:
        body["text"] = text
    else:
        body["object"] = _trimmed(payload, body)
    if truncated:
        body["truncated"] = True
        body["note"] = f"only the first {MAX_BYTES} bytes are shown; narrow the request"
    return body


async def _drain(response: Response) -> tuple[bytes, bool]:
    if not isinstance(response, StreamingResponse):
        return bytes(response.body), False
    chunks: list[bytes] = []
    size, truncated = 0, False
    iterator = response.body_iterator
    try:
        async for chunk in iterator:
            data = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
            chunks.append(data)
            size += len(data)
            if size > MAX_BYTES:
                truncated = True
                break
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            await close()  # the pump records the request as it ends
    return b"".join(chunks)[:MAX_BYTES], truncated


def _message(raw: bytes | memoryview) -> str:
    try:
        payload = json.loads(bytes(raw))
    except ValueError:
        return ""
    return str(payload.get("message", "")) if isinstance(payload, dict) else ""


def _trimmed(payload: Any, body: dict[str, Any]) -> Any:
    """The answer without ``managedFields`` (field-manager bookkeeping, long and of no
    use to an agent) and with at most MAX_ITEMS items or rows."""
    if not isinstance(payload, dict):
        return payload
    objects = [payload]
    for key in ("items", "rows"):
        listed = payload.get(key)
        if isinstance(listed, list):
            if len(listed) > MAX_ITEMS:
                body["truncated"] = True
                body["note"] = (
                    f"only the first {MAX_ITEMS} of {len(listed)} {key} are shown; "
                    "narrow the request (namespace, labelSelector, limit)"
                )
                payload[key] = listed = listed[:MAX_ITEMS]
            objects += [
                o.get("object", o) if key == "rows" else o for o in listed if isinstance(o, dict)
            ]
    for obj in objects:
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        if isinstance(meta, dict):
            meta.pop("managedFields", None)
    return payload


async def describe(
    services: Services, principal: Principal, connection: str, granted: frozenset[str]
) -> dict[str, Any]:
    """The resources the cluster serves (discovery) that ``principal`` may list, with
    whether what it reads of them is masked."""
    masking = services.masking.for_session(principal, connection)
    readable = []
    for r in await discover(services, connection):
        if "/" in r.name or not {"get", "list"} & set(r.verbs):
            continue
        action, info = kube_action(
            KubeRequest(principal, connection, "GET", r.path(), "", (), b"", "", "", "mcp")
        )
        decision = services.gate.check(action, granted).decision
        if decision is Decision.BLOCK:
            continue
        # REVIEW: readable once approved (a list without a namespace reaches them all,
        # and a guardrail on one of them holds it).
        readable.append(
            _shown(r, response_transform(info, masking) is not None, decision is Decision.REVIEW)
        )
    return {
        "connection": connection,
        "type": "kubernetes",
        "resources": readable,
        "note": "query(connection, resource=..., namespace=..., name=...) or "
        "query(connection, path=...) reads them; propose_change(connection, "
        "manifests=[...]) changes them after a human approves",
    }


def _shown(r: ApiResource, masked: bool, reviewed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resource": r.key,
        "kind": r.kind,
        "apiVersion": f"{r.group}/{r.version}" if r.group else r.version,
        "namespaced": r.namespaced,
        "verbs": list(r.verbs),
    }
    if r.short_names:
        out["shortNames"] = list(r.short_names)
    if masked:
        out["masked"] = True
    if reviewed:
        out["review"] = (
            "listing it is held for review (a role, or a guardrail on a namespace: a list "
            "without one reaches every namespace); name a namespace or wait for approval"
        )
    return out
