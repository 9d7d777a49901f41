"""What a cluster serves, read from its discovery documents with the gateway's own
credential (as the SQL catalog is read on an internal session): the resources of each
group-version, for MCP's ``describe`` and ``query`` and for turning a proposed manifest's
``apiVersion``/``kind`` into the request that writes it. Cached per process briefly."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from wardgate.kubernetes.proxy import KubeState
from wardgate.kubernetes.upstream import Upstreams

if TYPE_CHECKING:
    from wardgate.core.services import Services

CACHE_SECONDS = 30.0


class DiscoveryError(ValueError):
    """The cluster's discovery documents could not be read (said, never detailed)."""


@dataclass(frozen=True, slots=True)
class ApiResource:
    group: str
    version: str
    name: str  # plural, as in the path
    kind: str
    namespaced: bool
    verbs: tuple[str, ...]
    short_names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """kubectl's ``deployments.apps`` form."""
        return self.name + (f".{self.group}" if self.group else "")

    def path(self, namespace: str = "", name: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        return f"{base}/{self.name}" + (f"/{name}" if name else "")


@dataclass
class _Cache:
    documents: dict[tuple[str, str], tuple[float, Any]] = field(default_factory=dict)


async def _get(services: Services, connection: str, path: str) -> Any:
    cache = services.state(_Cache)
    now = time.monotonic()
    found = cache.documents.get((connection, path))
    if found is not None and found[0] > now:
        return found[1]
    state = services.state(KubeState)
    if state.upstreams is None:
        state.upstreams = Upstreams(services.vault)
    try:
        client, auth = state.upstreams.client(services.config, connection)
        headers = {"accept": "application/json"} | ({"authorization": auth} if auth else {})
        answer = await client.get(path, headers=headers)
    except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
        raise DiscoveryError(
            f"the cluster's API server could not be asked for {path} ({type(exc).__name__})"
        ) from None
    if answer.status_code != 200:
        raise DiscoveryError(
            f"the cluster's API server answered {path} with HTTP {answer.status_code}"
        )
    try:
        doc = answer.json()
    except ValueError:
        raise DiscoveryError(f"the cluster's answer to {path} is not JSON") from None
    cache.documents[(connection, path)] = (now + CACHE_SECONDS, doc)
    return doc


async def group_version(services: Services, connection: str, api_version: str) -> list[ApiResource]:
    """The resources of one group-version (``v1``, ``apps/v1``)."""
    group, _, version = api_version.rpartition("/")
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    doc = await _get(services, connection, path)
    out = []
    for r in doc.get("resources") or [] if isinstance(doc, dict) else []:
        if not isinstance(r, dict) or not isinstance(r.get("name"), str):
            continue
        out.append(
            ApiResource(
                group,
                version,
                r["name"],
                str(r.get("kind", "")),
                bool(r.get("namespaced")),
                tuple(str(v) for v in r.get("verbs") or []),
                tuple(str(v) for v in r.get("shortNames") or []),
            )
        )
    return out


async def discover(services: Services, connection: str) -> list[ApiResource]:
    """Every resource the cluster serves, in the preferred version of each group. A group
    whose document cannot be read (an aggregated API that is down) is left out."""
    core = await _get(services, connection, "/api")
    groups = await _get(services, connection, "/apis")
    versions = [f"{v}" for v in (core.get("versions") or [])[:1]] if isinstance(core, dict) else []
    for g in groups.get("groups") or [] if isinstance(groups, dict) else []:
        preferred = (
            (g.get("preferredVersion") or {}).get("groupVersion") if isinstance(g, dict) else None
        )
        if isinstance(preferred, str):
            versions.append(preferred)
    found = await asyncio.gather(
        *(group_version(services, connection, gv) for gv in versions), return_exceptions=True
    )
    if versions and "/" not in versions[0] and isinstance(found[0], BaseException):
        raise DiscoveryError(f"the cluster's core API could not be read: {found[0]}")
    return [r for part in found if not isinstance(part, BaseException) for r in part]


def find_resource(resources: list[ApiResource], word: str) -> ApiResource | None:
    """A resource as kubectl names one: ``pods``, ``pod``, ``po``, ``Pod``,
    ``deployments.apps``; a top-level resource (no subresource), the core group first."""
    word = word.strip().lower()
    name, _, group = word.partition(".")
    top = [r for r in resources if "/" not in r.name]
    for r in sorted(top, key=lambda r: (r.group != "", r.group)):
        if group and r.group != group:
            continue
        if name in (r.name, r.kind.lower(), *r.short_names):
            return r
    return None
