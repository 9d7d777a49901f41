"""Proposals on a Kubernetes connection: manifests the gateway applies itself once a
human approved them, as SQL proposals are statements it runs (reviews/service.py files
both; MCP's ``propose_change`` takes either).

Each object becomes one server-side apply request (``PATCH .../<name>?fieldManager=
wardgate``, ``application/apply-patch+yaml``), judged by ``gate.check()`` exactly as
kubectl's same request would be (the proxy's ``kube_action``: body conditions, roles,
guardrails). The reviewer reads each object and the server-side dry run diffed against
the live object (kubernetes/preview.py, as for held writes). After approval the review
is consumed once (whatever gateway process wins) and the requests run in order, each
judged again by the policy of that moment; the first failure stops the rest (the API
server has no transaction: the result says which objects were applied)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from wardgate.actions import Action, Decision, Verdict
from wardgate.core.proposals import proposal_verdict
from wardgate.identity.principals import Principal
from wardgate.kubernetes.discovery import DiscoveryError, group_version
from wardgate.kubernetes.preview import dry_run_preview
from wardgate.kubernetes.proxy import KubeRequest, KubeState, kube_action
from wardgate.kubernetes.redact import redact_secret
from wardgate.kubernetes.tools import NAME
from wardgate.kubernetes.upstream import Upstreams
from wardgate.policy.kubernetes.objects import BodyError, parse_manifests
from wardgate.reviews.model import ReviewError, ReviewInfo
from wardgate.reviews.service import ReviewService
from wardgate.reviews.waiting import ReviewRuntime

if TYPE_CHECKING:
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.kubernetes")

FIELD_MANAGER = "wardgate"
APPLY = "application/apply-patch+yaml"
MAX_OBJECTS = 50
API_VERSION = re.compile(r"(?:[a-z0-9][a-z0-9.-]{0,252}/)?v[0-9]+(?:(?:alpha|beta)[0-9]+)?")


@dataclass(frozen=True, slots=True)
class Planned:
    """One object of a proposal and the request that applies it."""

    shown: str  # what the reviewer reads: the request line and the object as YAML
    method: str
    path: str
    query: str
    body: str  # the object as JSON (JSON is YAML: the apply body)

    def request(self, principal: Principal, connection: str, **kw: Any) -> KubeRequest:
        return KubeRequest(
            principal,
            connection,
            self.method,
            self.path,
            self.query,
            (("content-type", APPLY),),
            self.body.encode(),
            kw.get("session_id", ""),
            kw.get("client_addr", ""),
            protocol=kw.get("protocol", "mcp"),
        )

    def as_detail(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "query": self.query, "body": self.body}


def _is_secret(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("kind") == "Secret" and doc.get("apiVersion") == "v1"


def recorded_manifests(manifests: list[str]) -> list[str]:
    """The manifests as the audit log keeps a call that carried them: a Secret's values
    hidden (as the proxy hides them in a request body it records) wherever it sits (in
    a ``List``, a JSON array, spelled ``kind: secret``); a manifest that cannot be read
    and names a Secret is not kept at all."""
    out = []
    for text in manifests:
        try:
            docs = parse_manifests(text)
        except BodyError:
            out.append("wardgate: an unreadable manifest naming a Secret (not recorded)"
                       if "secret" in text.lower() else text)  # fmt: skip
            continue
        if not _hide_secrets(docs):
            out.append(text)
            continue
        out.append(yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True))
    return out


def _hide_secrets(node: Any) -> bool:
    """Hide the values of every Secret-like mapping in ``node`` (in place); whether
    there was one."""
    found = False
    if isinstance(node, list):
        for item in node:
            found = _hide_secrets(item) or found
    elif isinstance(node, dict):
        if str(node.get("kind", "")).lower() == "secret":
            redact_secret(node)
            found = True
        for value in node.values():
            found = _hide_secrets(value) or found
    return found


def _objects(manifests: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, text in enumerate(manifests):
        try:
            docs = parse_manifests(text)
        except BodyError as exc:
            raise ReviewError(f"manifest {i + 1}: {exc}; the proposal was not filed", 422) from None
        for doc in docs:
            if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
                docs_in = doc.get("items")
                if isinstance(docs_in, list):
                    out.extend(docs_in)
                    continue
            out.append(doc)
    if not out:
        raise ReviewError("the proposal holds no manifests (give YAML or JSON objects)", 422)
    if len(out) > MAX_OBJECTS:
        raise ReviewError(f"a proposal holds at most {MAX_OBJECTS} objects", 413)
    return out


async def plan(services: Services, connection: str, manifests: list[str]) -> list[Planned]:
    """The server-side apply request of every object in ``manifests`` (resources and
    scopes from the cluster's discovery). ReviewError says what is wrong with one."""
    planned = []
    for n, obj in enumerate(_objects(manifests), 1):
        where = f"object {n}"
        if not isinstance(obj, dict):
            raise ReviewError(f"{where} is not a mapping; the proposal was not filed", 422)
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        meta = obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
            raise ReviewError(
                f"{where} needs apiVersion, kind and metadata.name (generateName cannot be "
                "applied); the proposal was not filed",
                422,
            )
        assert isinstance(meta, dict)
        where = f"object {n} ({kind} {name})"
        namespace = meta.get("namespace")
        # What goes into the request's path: nothing that would send other than judged.
        if not API_VERSION.fullmatch(api_version):
            raise ReviewError(f"{where}: apiVersion {api_version!r} is not one", 422)
        for what, value in (("name", name), ("namespace", namespace)):
            if value is not None and not (isinstance(value, str) and NAME.fullmatch(value)):
                raise ReviewError(f"{where}: metadata.{what} {value!r} is not a name", 422)
        if _is_secret(obj):
            raise ReviewError(
                f"{where}: a proposal cannot carry a Secret: its values would be kept in the "
                "review for every reviewer to read. Create Secrets with kubectl through the "
                "gateway (a held write keeps only a digest of its body); the proposal was not "
                "filed",
                422,
            )
        try:
            served = await group_version(services, connection, api_version)
        except DiscoveryError as exc:
            raise ReviewError(f"{where}: {exc}; the proposal was not filed", 422) from None
        found = next((r for r in served if r.kind == kind and "/" not in r.name), None)
        if found is None or "patch" not in found.verbs:
            raise ReviewError(
                f"{where}: the cluster serves no {kind} in {api_version} that can be applied; "
                "the proposal was not filed",
                422,
            )
        if found.namespaced:
            namespace = namespace or "default"
            if not isinstance(namespace, str):
                raise ReviewError(f"{where}: metadata.namespace is not a string", 422)
            meta["namespace"] = namespace  # the reviewer sees where it goes
        elif namespace:
            raise ReviewError(f"{where}: {kind} is not namespaced; remove metadata.namespace", 422)
        path = found.path(namespace or "", name)
        query = f"fieldManager={FIELD_MANAGER}"
        body = json.dumps(obj, ensure_ascii=False)
        shown = f"# PATCH {path}?{query} (server-side apply)\n" + yaml.safe_dump(
            obj, sort_keys=False, allow_unicode=True
        )
        planned.append(Planned(shown, "PATCH", path, query, body))
    return planned


def actions_of(
    services: Services,
    principal: Principal,
    connection: str,
    planned: list[Planned],
    **kw: Any,
) -> list[Action]:
    return [kube_action(p.request(principal, connection, **kw))[0] for p in planned]


def verdicts_of(services: Services, principal: Principal, actions: list[Action]) -> list[Verdict]:
    runtime = services.reviews
    out = []
    for action in actions:
        granted = runtime.granted(principal.name, action.connection) if runtime else frozenset()
        out.append(services.gate.check(action, granted))
    return out


async def propose(
    services: Services,
    principal: Principal,
    connection: str,
    manifests: list[str],
    justification: str,
    *,
    session_id: str,
    client_addr: str,
    protocol: str = "mcp",
) -> ReviewInfo:
    """Judge and file a proposal of manifests (ReviewError when it is refused: a
    blocked object, a manifest that cannot be applied); its dry-run preview follows."""
    if services.reviews is None:
        raise ReviewError("reviews are not running on this gateway process", 503)
    planned = await plan(services, connection, manifests)
    kw = {"session_id": session_id, "client_addr": client_addr, "protocol": protocol}
    actions = actions_of(services, principal, connection, planned, **kw)
    verdict = proposal_verdict(verdicts_of(services, principal, actions), what="object")
    service = services.reviews.service
    review = await asyncio.to_thread(
        lambda: service.request_proposal(
            principal,
            connection,
            [p.shown for p in planned],
            justification,
            verdict,
            client_addr=client_addr,
            session_id=session_id,
            # The target's protocol (how reviewers' pages show the text); the session
            # that filed it (an MCP session) is the review's session.
            protocol="kubernetes",
            requests=[p.as_detail() for p in planned],
        )
    )
    services.tasks.spawn(_preview(services, service, review, actions), name="proposal-preview")
    return review


async def _preview(
    services: Services, service: ReviewService, review: ReviewInfo, actions: list[Action]
) -> None:
    """One preview for the whole proposal: each object's dry run, diffs one after the
    other; the worst status and its reason lead."""
    parts: list[dict[str, Any]] = []
    for action in actions:
        try:
            parts.append(await dry_run_preview(services, action))
        except Exception as exc:  # a preview must never take the proposal down
            log.warning("proposal %s: dry run failed: %s", review.id, type(exc).__name__)
            parts.append({"kind": "error", "reason": "the dry run could not be made"})
    combined: dict[str, Any] = {"kind": "dry_run", "status": 200, "creates": False, "diff": ""}
    diffs = []
    for n, (part, action) in enumerate(zip(parts, actions, strict=True), 1):
        target = action.text.split("?", 1)[0]
        if part.get("kind") != "dry_run":
            part = {"status": 0, "reason": part.get("reason", "no dry run")}
        status = int(part.get("status") or 0)
        if status >= 400 or status == 0:
            if combined["status"] < 400:
                combined["status"] = status or 502
                combined["reason"] = f"object {n} ({target}): {part.get('reason', '')}"
        combined["creates"] = combined["creates"] or bool(part.get("creates"))
        diffs.append(f"# object {n}: {target}\n{part.get('diff', '')}")
        combined["truncated"] = combined.get("truncated") or bool(part.get("truncated"))
    combined["diff"] = "\n".join(diffs)
    combined["objects"] = len(actions)
    await asyncio.to_thread(service.set_preview, review.id, combined)


def register(services: Services, service: ReviewService, runtime: ReviewRuntime) -> None:
    """Approved Kubernetes proposals run here; every other proposal as before."""
    previous = runtime.on_proposal_approved

    async def on_approved(review: ReviewInfo) -> None:
        conn = services.config.connections.get(review.connection)
        if conn is None or conn.type != "kubernetes" or "requests" not in review.detail:
            if previous is not None:
                await previous(review)
            return
        await run_approved(services, service, review)

    runtime.on_proposal_approved = on_approved


async def run_approved(services: Services, service: ReviewService, review: ReviewInfo) -> None:
    if not await asyncio.to_thread(service.consume, review.id, executing=True):
        return  # another process took it, or it expired
    try:
        ok, result = await _apply(services, review)
    except Exception as exc:
        log.exception("proposal %s failed to run", review.id)
        ok, result = (
            False,
            {"ok": False, "error": f"the gateway could not run it: {type(exc).__name__}"},
        )
    await asyncio.to_thread(service.record_result, review.id, ok, result)


async def _apply(services: Services, review: ReviewInfo) -> tuple[bool, dict[str, Any]]:
    config = services.config
    principal = config.principal(review.principal)
    if principal is None:
        return False, {
            "ok": False,
            "applied": [],
            "error": "the proposer is no longer configured; nothing was applied",
        }
    planned = [
        Planned("", str(r["method"]), str(r["path"]), str(r["query"]), str(r["body"]))
        for r in review.detail.get("requests") or []
    ]
    actions = actions_of(services, principal, review.connection, planned)
    # The policy of this moment still applies: an object blocked since the proposal
    # was filed stops it before anything is applied.
    for n, verdict in enumerate(verdicts_of(services, principal, actions), 1):
        if verdict.decision is Decision.BLOCK and verdict.enforced:
            return False, {
                "ok": False,
                "applied": [],
                "error": f"object {n} is now blocked by {', '.join(verdict.rules)}: "
                f"{verdict.reason}; nothing was applied",
            }
    state = services.state(KubeState)
    if state.upstreams is None:
        state.upstreams = Upstreams(services.vault)
    client, auth = state.upstreams.client(config, review.connection)
    headers = {"content-type": APPLY, "accept": "application/json"}
    if auth:
        headers["authorization"] = auth
    applied: list[dict[str, Any]] = []
    for n, p in enumerate(planned, 1):
        try:
            answer = await client.request(
                p.method, f"{p.path}?{p.query}", headers=headers, content=p.body.encode()
            )
        except httpx.HTTPError as exc:
            return False, _stopped(
                applied, n, p, 0, f"the API server could not be reached ({type(exc).__name__})"
            )
        if answer.status_code >= 400:
            try:
                message = str(answer.json().get("message", ""))
            except (ValueError, AttributeError):
                message = answer.text[:500]
            return False, _stopped(applied, n, p, answer.status_code, message)
        applied.append(
            {"object": n, "request": f"{p.method} {p.path}", "status": answer.status_code,
             "created": answer.status_code == 201}
        )  # fmt: skip
    return True, {"ok": True, "applied": applied, "error": None}


def _stopped(
    applied: list[dict[str, Any]], n: int, p: Planned, status: int, message: str
) -> dict[str, Any]:
    return {
        "ok": False,
        "applied": applied,
        "error": {
            "object": n,
            "request": f"{p.method} {p.path}",
            "status": status,
            "message": f"{message[:2000]}; "
            + (
                f"objects 1-{n - 1} were applied, the rest were not"
                if n > 1
                else "nothing was applied"
            ),
        },
    }
