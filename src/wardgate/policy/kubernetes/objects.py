"""What a Kubernetes request body would do, for guardrails: privileged or host-sharing
pods, Services opened on node ports or load balancers, bindings to cluster-admin.

Bodies are JSON or YAML (objects, merge/strategic/apply patches) or JSON Patch. The
scan is structural and deliberately broad: a pod template nested in a Deployment,
CronJob or a patch is found wherever it sits. Duplicate keys (also differing only in
case) are refused: the server and the gateway could keep different ones.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import yaml


class BodyError(ValueError):
    """The body cannot be judged; the request is treated as unparsable."""


JSON_TYPES = frozenset(
    {
        "application/json",
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+json",
    }
)
JSON_PATCH = "application/json-patch+json"
YAML_TYPES = frozenset({"application/yaml", "application/apply-patch+yaml"})
PROTOBUF = "application/vnd.kubernetes.protobuf"

OBJECT_KINDS = (
    "privileged",
    "host_path",
    "host_network",
    "host_pid",
    "host_ipc",
    "service_nodeport",
    "service_loadbalancer",
    "cluster_admin_binding",
    "open_cidr",
    "ingress_public",
)
_WORLD = frozenset({"0.0.0.0/0", "::/0"})
# The Gateway API's objects that route outside traffic to a workload
# (gateway.networking.k8s.io, and the experimental channel's).
GATEWAY_API_RESOURCES = frozenset(
    {"gateways", "httproutes", "grpcroutes", "tlsroutes", "tcproutes", "udproutes", "listenersets"}
)
# Annotations with which ingress controllers limit who may reach an Ingress.
SOURCE_RANGE_ANNOTATIONS = (
    "nginx.ingress.kubernetes.io/whitelist-source-range",
    "nginx.ingress.kubernetes.io/allowlist-source-range",
    "haproxy.org/allow-list",
    "traefik.ingress.kubernetes.io/whitelist-source-range",
)


def media_type(content_type: str) -> str:
    return content_type.partition(";")[0].strip().lower()


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        folded = key.lower()
        if folded in seen:
            raise BodyError(f"duplicate key {key!r} in the body")
        seen.add(folded)
    return dict(pairs)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading scalars as the API server's YAML (sigs.k8s.io/yaml,
    goyaml.v2) does where the two differ on what guardrails judge: ``y``/``Y`` are
    true and ``n``/``N`` false there (YAML 1.1), strings to PyYAML. The stricter
    reading wins: ``privileged: y`` is a privileged container."""

    bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}


def _yaml_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[str, Any]:
    loader.flatten_mapping(node)
    pairs = [
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
        for k, v in node.value
    ]
    return _pairs([(str(k), v) for k, v in pairs])


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _yaml_mapping)
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN")
)


def parse_body(body: str, content_type: str) -> Any:
    """The body as data; BodyError when it is not JSON/YAML the gateway can judge."""
    kind = media_type(content_type)
    if kind == PROTOBUF or kind.endswith("+protobuf"):
        raise BodyError(
            "protobuf bodies are not judged (kubectl's create/expose/run subcommands send "
            "protobuf); send the object as JSON or YAML, e.g. kubectl apply -f or create -f"
        )
    if kind in JSON_TYPES or kind == JSON_PATCH or not kind:
        with _unreadable("the body", kind or "JSON"):
            return json.loads(body, object_pairs_hook=_pairs)
    if kind in YAML_TYPES:
        docs = _yaml_documents(body, "the body", kind)
        if len(docs) != 1:
            raise BodyError("a YAML body must hold exactly one document")
        return docs[0]
    raise BodyError(f"content type {kind!r} is not judged; send JSON or YAML")


@contextlib.contextmanager
def _unreadable(what: str, kind: str) -> Iterator[None]:
    """Any failure to read ``what`` as ``kind`` becomes a BodyError that says so."""
    try:
        yield
    except BodyError:
        raise
    except RecursionError:
        raise BodyError(f"{what} is nested too deeply") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise BodyError(f"{what} is not valid {kind}: {exc}") from None


def _yaml_documents(text: str, what: str, kind: str = "YAML") -> list[Any]:
    with _unreadable(what, kind):
        # Aliases could expand a small body into an exponential tree (and hide what it
        # sets behind a reference): refused, as no manifest needs them.
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=_StrictLoader)):
            raise BodyError(f"YAML aliases are not accepted in {what}")
        return list(yaml.load_all(text, Loader=_StrictLoader))  # noqa: S506 (strict safe loader)


def parse_manifests(text: str) -> list[Any]:
    """The documents of a manifest file (JSON, or YAML with ``---`` between documents),
    read as strictly as a request body: no aliases, no duplicate keys."""
    if text.lstrip().startswith(("{", "[")):
        return [parse_body(text, "application/json")]
    return [d for d in _yaml_documents(text, "the manifest") if d is not None]


def _from_json_patch(ops: Any) -> dict[str, Any]:
    """JSON Patch operations as one nested object of the values they set."""
    if not isinstance(ops, list):
        raise BodyError("a JSON Patch body must be a list of operations")
    tree: dict[str, Any] = {}
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise BodyError("a JSON Patch operation needs a path")
        if op.get("op") not in ("add", "replace", "test", "remove", "move", "copy"):
            raise BodyError(f"unknown JSON Patch op {op.get('op')!r}")
        if op["op"] in ("move", "copy"):
            # Values taken from elsewhere in the object: the gateway cannot see them.
            raise BodyError("JSON Patch move/copy operations are not judged")
        if not op["path"].startswith("/"):
            # "" is the whole object (RFC 6901): a value the tree below would drop;
            # any other path without "/" first, libraries read apart.
            raise BodyError(
                f"a JSON Patch path must start with '/' (not {op['path']!r}); to replace "
                "the whole object send it with PUT or apply"
            )
        keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
        node = tree
        for key in keys[:-1]:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        if keys and op["op"] == "remove":
            node[keys[-1]] = None  # as a merge patch says it (an allow-list removed...)
        elif keys and "value" in op:
            node[keys[-1]] = op["value"]
    return tree


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                yield key, child
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)


def object_kinds(data: Any, resource: str, content_type: str) -> tuple[str, ...]:
    """The guardrail kinds a request body carries (OBJECT_KINDS)."""
    if media_type(content_type) == JSON_PATCH:
        data = _from_json_patch(data)
    found: set[str] = set()
    for key, value in _walk(data):
        if key == "privileged" and value is True:
            found.add("privileged")
        elif key == "hostPath" and value is not None:
            found.add("host_path")
        elif key == "hostNetwork" and value is True:
            found.add("host_network")
        elif key == "hostPort" and value:
            # A container port bound on the node's own addresses: reachable from
            # wherever the node is, as with hostNetwork.
            found.add("host_network")
        elif key == "hostPID" and value is True:
            found.add("host_pid")
        elif key == "hostIPC" and value is True:
            found.add("host_ipc")
        elif key == "type" and resource == "services":
            if value == "NodePort":
                found.add("service_nodeport")
            elif value == "LoadBalancer":
                found.add("service_loadbalancer")
        elif key == "nodePort" and resource == "services" and value:
            found.add("service_nodeport")
        elif key == "externalIPs" and resource == "services" and value:
            # Every node routes these addresses to the Service: as open as a load
            # balancer, whatever its type.
            found.add("service_loadbalancer")
        elif key == "roleRef" and isinstance(value, dict) and value.get("name") == "cluster-admin":
            found.add("cluster_admin_binding")
        elif key == "cidr" and isinstance(value, str) and value.strip() in _WORLD:
            found.add("open_cidr")  # a NetworkPolicy ipBlock open to every address
        elif key == "loadBalancerSourceRanges" and isinstance(value, list):
            if any(isinstance(v, str) and v.strip() in _WORLD for v in value):
                found.add("open_cidr")
    if resource == "ingresses" and isinstance(data, dict):
        found.update(_ingress_kinds(data))
    if resource in GATEWAY_API_RESOURCES and isinstance(data, dict):
        # A route attached to a Gateway (or a Gateway's listener) opens a workload as an
        # Ingress does; whether that Gateway's address is public is not known here, so
        # the stricter reading: every change of one is ingress_public.
        found.add("ingress_public")
    if resource == "networkpolicies" and isinstance(data, dict) and _allows_every_source(data):
        found.add("open_cidr")
    return tuple(k for k in OBJECT_KINDS if k in found)


def _allows_every_source(obj: dict[str, Any]) -> bool:
    """A NetworkPolicy ingress rule without ``from`` (or with an empty one) admits every
    source, inside the cluster and out: as open as an ``ipBlock`` of 0.0.0.0/0."""
    spec = obj.get("spec")
    rules = spec.get("ingress") if isinstance(spec, dict) else None
    return isinstance(rules, list) and any(
        isinstance(rule, dict) and not rule.get("from") for rule in rules
    )


def _ingress_kinds(obj: dict[str, Any]) -> set[str]:
    """An Ingress routes traffic from outside the cluster to a workload: open to the
    world (``ingress_public``) unless a source-range annotation limits it to addresses
    other than every address. Removing that limit (a patch setting it to null, or a
    JSON Patch ``remove``) opens it too."""
    spec = obj.get("spec")
    routes = isinstance(spec, dict) and any(
        spec.get(k) for k in ("rules", "defaultBackend", "backend")
    )
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    if isinstance(meta, dict) and "annotations" in meta and notes is None:
        return {"ingress_public"}  # every annotation removed, a limit with them
    limits = [notes[k] for k in SOURCE_RANGE_ANNOTATIONS if isinstance(notes, dict) and k in notes]
    if any(not isinstance(v, str) for v in limits):
        return {"ingress_public"}
    cidrs = {c.strip() for v in limits for c in v.split(",") if c.strip()}
    if cidrs & _WORLD:
        return {"ingress_public", "open_cidr"}
    if routes and not cidrs:
        return {"ingress_public"}
    return set()
