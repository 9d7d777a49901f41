"""What a held Kubernetes write would do, for its reviewer: the same request sent with
``dryRun=All`` (the API server runs admission and validation and stores nothing) and a
diff of its answer against the live object. Secret values are redacted in both, for
every reviewer: a diff is no place for them."""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import yaml

from wardgate.actions import Action, Verdict
from wardgate.core.services import Services
from wardgate.kubernetes.proxy import KubeState
from wardgate.kubernetes.redact import RedactError, redact_payload
from wardgate.kubernetes.tools import NAME
from wardgate.kubernetes.upstream import Upstreams
from wardgate.policy.kubernetes import RequestInfoError, resolve
from wardgate.policy.kubernetes.objects import BodyError, parse_body
from wardgate.reviews.model import ReviewInfo
from wardgate.reviews.service import ReviewService
from wardgate.reviews.waiting import ReviewRuntime

log = logging.getLogger("wardgate.kubernetes")

MAX_DIFF = 64 * 1024
# Fields the server sets on every write: noise in a reviewer's diff.
_VOLATILE = ("resourceVersion", "uid", "generation", "creationTimestamp", "managedFields")

Previewer = Callable[[ReviewInfo, Action, Verdict], Coroutine[Any, Any, None]]


def register(services: Services, service: ReviewService, runtime: ReviewRuntime) -> None:
    """Previews of held Kubernetes writes; other protocols' previews go on as before."""
    previous: Previewer | None = runtime.previewer

    async def preview(review: ReviewInfo, action: Action, verdict: Verdict) -> None:
        if action.kind != "kubernetes":  # kubectl's requests, and MCP's
            if previous is not None:
                await previous(review, action, verdict)
            return
        try:
            result = await dry_run_preview(services, action)
        except Exception as exc:  # a preview must never take the review down
            log.warning("review %s: dry-run preview failed: %s", review.id, type(exc).__name__)
            result = {"kind": "error", "reason": "the dry run could not be made"}
        await asyncio.to_thread(service.set_preview, review.id, result)

    runtime.previewer = preview


def _clean(obj: Any, secret: bool) -> Any:
    if not isinstance(obj, dict):
        return obj
    obj = json.loads(json.dumps(obj))
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        for key in _VOLATILE:
            meta.pop(key, None)
    obj.pop("status", None)
    if secret:
        try:
            obj = redact_payload(obj)
        except RedactError:
            return {"wardgate": "a Secret response that could not be redacted"}
    return obj


def _yaml(obj: Any) -> list[str]:
    if obj is None:
        return []
    return yaml.safe_dump(obj, sort_keys=True).splitlines(keepends=True)


async def dry_run_preview(services: Services, action: Action) -> dict[str, Any]:
    line = action.judged_text.split("\n", 1)[0]
    method, _, target = line.partition(" ")
    path, _, query = target.partition("?")
    try:
        info = resolve(method, path, query)
    except RequestInfoError as exc:
        return {"kind": "unavailable", "reason": str(exc)}
    if info.verb not in ("create", "update", "patch", "delete") or info.subresource:
        return {"kind": "none"}
    body = action.params[0] if action.params else None
    content_type = dict(action.context).get("content-type", "")
    name = info.name
    if not name and body:
        try:
            data = parse_body(body, content_type)
        except BodyError as exc:
            return {"kind": "unavailable", "reason": str(exc)}
        meta = data.get("metadata") if isinstance(data, dict) else None
        name = meta.get("name", "") if isinstance(meta, dict) else ""
        if not (isinstance(name, str) and NAME.fullmatch(name)):
            # "../secrets/db" would make the live GET another object's (httpx resolves
            # dot segments), shown unredacted: no live object for a name that is none.
            name = ""
    state = services.state(KubeState)
    if state.upstreams is None:
        state.upstreams = Upstreams(services.vault)
    client, auth = state.upstreams.client(services.config, action.connection)
    headers = [("accept", "application/json")]
    if auth:
        headers.append(("authorization", auth))
    live = None
    if name:
        live_path = path if info.name else f"{path.rstrip('/')}/{name}"
        got = await client.get(live_path, headers=headers)
        if got.status_code == 200:
            live = got.json()
    dry_query = "&".join(p for p in (query, "dryRun=All") if p)
    sent = headers + ([("content-type", content_type)] if body else [])
    answer = await client.request(
        method, f"{path}?{dry_query}", headers=sent, content=body.encode() if body else None
    )
    try:
        result = answer.json()
    except ValueError:
        return {"kind": "error", "reason": f"the dry run answered HTTP {answer.status_code}"}
    if answer.status_code >= 400:
        message = result.get("message", "") if isinstance(result, dict) else ""
        return {
            "kind": "dry_run",
            "status": answer.status_code,
            "reason": str(message)[:2000],
            "diff": "",
        }
    secret = info.resource == "secrets" and not info.api_group
    after = None if info.verb == "delete" else _clean(result, secret)
    diff = "".join(
        difflib.unified_diff(
            _yaml(_clean(live, secret)), _yaml(after), "live", "after (dry run)", n=3
        )
    )
    truncated = len(diff) > MAX_DIFF
    return {
        "kind": "dry_run",
        "status": answer.status_code,
        "creates": live is None and info.verb != "delete",
        "diff": diff[:MAX_DIFF],
        "truncated": truncated,
    }
