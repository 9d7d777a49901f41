"""The pure parts of the MCP tools on Kubernetes connections: reading manifests,
naming resources as kubectl does, and what ``query`` refuses before anything is sent."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from unittest.mock import patch

import pytest

from wardgate.kubernetes.discovery import ApiResource, find_resource
from wardgate.kubernetes.proposals import plan, recorded_manifests
from wardgate.kubernetes.tools import (
    ReadArgs,
    ToolRefused,
    _refuse_unless_read,
    _trimmed,
    read_target,
)
from wardgate.policy.kubernetes.objects import BodyError, parse_manifests
from wardgate.reviews.model import ReviewError

RESOURCES = [
    ApiResource("", "v1", "pods", "Pod", True, ("get", "list"), ("po",)),
    ApiResource("", "v1", "pods/log", "Pod", True, ("get",)),
    ApiResource("", "v1", "events", "Event", True, ("get", "list"), ("ev",)),
    ApiResource("events.k8s.io", "v1", "events", "Event", True, ("get", "list"), ("ev",)),
    ApiResource("apps", "v1", "deployments", "Deployment", True, ("get", "patch"), ("deploy",)),
    ApiResource("", "v1", "namespaces", "Namespace", False, ("get", "list"), ("ns",)),
]


@pytest.mark.parametrize(
    ("word", "key"),
    [
        ("pods", "pods"),
        ("Pod", "pods"),
        ("po", "pods"),
        ("deploy", "deployments.apps"),
        ("deployments.apps", "deployments.apps"),
        ("events", "events"),  # the core group first, as kubectl
        ("events.events.k8s.io", "events.events.k8s.io"),
        ("pods/log", None),  # subresources are not named this way
        ("deployments.batch", None),
    ],
)
def test_resources_are_named_as_kubectl_names_them(word: str, key: str | None) -> None:
    found = find_resource(RESOURCES, word)
    assert (found.key if found else None) == key


def test_paths_follow_scope() -> None:
    deploy, ns = RESOURCES[4], RESOURCES[5]
    assert deploy.path("prod", "web") == "/apis/apps/v1/namespaces/prod/deployments/web"
    assert deploy.path() == "/apis/apps/v1/deployments"
    assert ns.path("ignored", "prod") == "/api/v1/namespaces/prod"


def test_manifests_are_read_strictly() -> None:
    docs = parse_manifests("kind: A\n---\nkind: B\n---\n")
    assert docs == [{"kind": "A"}, {"kind": "B"}]
    assert parse_manifests('{"kind": "C"}') == [{"kind": "C"}]
    with pytest.raises(BodyError, match="aliases"):
        parse_manifests("a: &x {b: 1}\nc: *x\n")
    with pytest.raises(BodyError):
        parse_manifests("kind: A\nkind: B\n")  # a duplicate key
    with pytest.raises(BodyError, match="not valid YAML"):
        parse_manifests("kind: [unclosed")


@pytest.mark.parametrize(
    ("method", "path", "query", "said"),
    [
        ("DELETE", "/api/v1/namespaces/default/pods/web", "", "propose_change"),
        ("POST", "/api/v1/namespaces/default/pods", "", "propose_change"),
        ("GET", "/api/v1/pods", "watch=1", "does not watch"),
        ("GET", "/api/v1/namespaces/default/pods/web/log", "follow=true", "does not follow"),
        ("GET", "/api/v1/namespaces/default/pods/web/exec", "command=ls", "not offered"),
        ("GET", "/api/v1/namespaces/default/services/web/proxy/x", "", "not offered"),
        ("GET", "/api/v1/namespaces/../pods", "", "cannot be read"),
    ],
)
def test_query_refuses_what_is_not_a_read(method: str, path: str, query: str, said: str) -> None:
    with pytest.raises(ToolRefused, match=said):
        _refuse_unless_read(method, path, query)


def test_reads_pass() -> None:
    for path, query in [
        ("/api/v1/namespaces/default/pods", "labelSelector=app%3Dweb"),
        ("/api/v1/namespaces/default/pods/web/log", "tailLines=10"),
        ("/version", ""),
    ]:
        _refuse_unless_read("GET", path, query)


def test_answers_lose_managed_fields_and_are_capped() -> None:
    items = [{"metadata": {"name": str(i), "managedFields": [{}]}} for i in range(205)]
    body: dict[str, object] = {}
    out = _trimmed({"kind": "PodList", "items": items}, body)
    assert len(out["items"]) == 200 and body["truncated"] is True
    assert all("managedFields" not in i["metadata"] for i in out["items"])


@pytest.mark.parametrize(
    "args",
    [
        ReadArgs(path="/api/v1/pods#x"),
        ReadArgs(path="/api/v1/pods?a=b c"),
        ReadArgs(path="//evil.example/api"),
        ReadArgs(path="api/v1/pods"),
        ReadArgs(resource="pods", namespace="default", name="web?watch=1"),
        ReadArgs(resource="pods", namespace="a/b"),
        ReadArgs(resource="pods", verb="delete", name="web"),
        ReadArgs(resource="pods", verb="watch"),
    ],
)
def test_targets_that_would_send_other_than_judged_are_refused(args: ReadArgs) -> None:
    services = SimpleNamespace()  # refused before discovery is asked

    async def run() -> None:
        with pytest.raises(ToolRefused):
            await read_target(services, "cluster", args)  # type: ignore[arg-type]

    with patch("wardgate.kubernetes.tools.discover", return_value=RESOURCES):
        asyncio.run(run())


@pytest.mark.parametrize(
    ("manifest", "said"),
    [
        ("apiVersion: ../../api/v1\nkind: Secret\nmetadata: {name: x}\n", "apiVersion"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: 'x?watch=1'}\n", "metadata.name"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: a/b}\n", "namespace"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {generateName: x-}\n", "generateName"),
        ("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\ndata: {}\n", "Secret"),
        ("- a\n- b\n", "not a mapping"),
        ("", "no manifests"),
    ],
)
def test_manifests_that_cannot_be_applied_as_judged_are_refused(manifest: str, said: str) -> None:
    services = SimpleNamespace()  # refused before discovery is asked
    with pytest.raises(ReviewError, match=said):
        asyncio.run(plan(services, "cluster", [manifest]))  # type: ignore[arg-type]


def test_secret_values_in_manifests_are_hidden_in_records() -> None:
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {k: s3cr3t}\n"
    plain = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\n"
    kept = recorded_manifests([plain, secret + "---\n" + plain, "kind: Secret\n: ["])
    assert kept[0] == plain and "s3cr3t" not in "".join(kept)
    assert "name: cfg" in kept[1] and "k: wardgate:redacted" in kept[1]
    assert "not recorded" in kept[2]
