"""Attacks on the Kubernetes gateway as a hostile agent would make them (issue 18): the
MCP tools (``query``, ``propose_change``) and the proxy's judging of request bodies.
Real clients (the official MCP SDK client, httpx) against a real wardgate process and
the API server DOUBLE (tests/integration/k8s_double.py): what the double stores and
what the agent received are asserted. Found and fixed:

- a YAML body's ``privileged: y`` (goyaml.v2, which the API server reads YAML with,
  takes ``y``/``n`` for booleans; PyYAML took a string): a privileged pod passed the
  guardrail (verified against the double's goyaml-like reading, not a real server);
- a container ``hostPort`` and a Service's ``externalIPs`` opened ports to the world
  past the guardrails on host networking and public Services;
- ``pods/<name>/ephemeralcontainers`` answers with the whole Pod: its env values were
  not masked (nor ``controllerrevisions.apps``, which hold pod templates);
- a Secret inside a ``kind: List``, a JSON array or spelled ``kind: secret`` was
  recorded in the clear in the audit log of a refused ``propose_change``;
- a JSON Patch replacing the whole object (path ``""``) was judged without its
  value, and one with move/copy made the gateway answer 500;
- on a connection in observe mode, a request the resolver cannot read
  (``secrets/d%62``) ran and its answer was not masked: a Secret in clear;
- a guardrail on a namespace did not match a list without one in its path,
  which answers with every namespace's objects;
- the preview of a held create read the live object at the body's name:
  ``../secrets/db`` showed a Secret in clear in the reviewer's diff (double only);
- ``query`` read ``follow`` by its last value (the API server by its first) and took
  an empty one for false (true to the API server): a log followed for ever.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Gateway, free_port
from tests.integration.k8s_double import RunningDouble, start_double
from tests.integration.test_kubernetes import (
    UPSTREAM_TOKEN,
    KubeGateway,
    kube_config,
    start_kube_gateway,
)
from tests.integration.test_mcp import _mcp_actions, body, call, error_text
from wardgate.policy.kubernetes import classify_request

EMAIL = "jane.doe@example.com"
SECRET_B64 = "aHVudGVyMi1wbGFpbg=="
K18 = tuple[Gateway, RunningDouble, KubeGateway]


@pytest.fixture(scope="module")
def k18(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Gateway, RunningDouble, KubeGateway]]:
    tmp = tmp_path_factory.mktemp("attack18b")
    double = start_double(tmp / "double", free_port(), UPSTREAM_TOKEN)
    double.cluster.put("", "pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx",
                                 "env": [{"name": "ADMIN_EMAIL", "value": EMAIL}]}]},
    })  # fmt: skip
    double.cluster.put("", "configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keys", "namespace": "audit"},
        "data": {"note": "audit-only-marker"},
    })  # fmt: skip
    double.cluster.put("", "secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db", "namespace": "default"},
        "data": {"password": SECRET_B64},
    })  # fmt: skip
    config = kube_config(double).replace(
        "guardrails:\n",
        "guardrails:\n  - {name: no-audit-reads, match: {namespaces: [audit], kubernetes: [read]},"
        " verdict: block}\n",
    )
    # The same cluster again, in observe mode (verdicts recorded, everything runs).
    cluster = config[config.index("  cluster:\n") : config.index("roles:\n  k8s-agent")]
    observed = cluster.replace("  cluster:", "  observed:") + "    mode: observe\n"
    gw, port = start_kube_gateway(
        tmp / "gw", double, config.replace("connections:\n", "connections:\n" + observed)
    )
    try:
        yield gw, double, KubeGateway(gw, double, "kubectl", port)
    finally:
        gw.stop()
        double.stop()


def _k8s(kube: KubeGateway, principal: str) -> httpx.Client:
    """A plain HTTPS client of the gateway's Kubernetes listener, on the connection."""
    client = kube.k8s(principal)
    client.base_url = client.base_url.join("/k8s/cluster")
    return client


def _writes(double: RunningDouble, before: int) -> list[tuple[str, str]]:
    return [(m, p) for m, p, _, _ in double.cluster.requests[before:] if m != "GET"]


PRIVILEGED_Y = """\
apiVersion: v1
kind: Pod
metadata: {name: root-shell, namespace: default}
spec:
  hostPID: y
  containers:
  - name: c
    image: busybox
    securityContext: {privileged: Y}
"""


def test_yaml_one_letter_booleans_are_read_as_the_api_server_reads_them(
    k18: K18,
) -> None:
    gw, double, kube = k18
    before = len(double.cluster.requests)
    with _k8s(kube, "dev") as dev:  # may write; the guardrail must still hold
        created = dev.post(
            "/api/v1/namespaces/default/pods",
            content=PRIVILEGED_Y,
            headers={"Content-Type": "application/yaml"},
        )
        applied = dev.patch(
            "/api/v1/namespaces/default/pods/root-shell?fieldManager=x",
            content=PRIVILEGED_Y,
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
    for r in (created, applied):
        assert r.status_code == 403 and "guardrail:no-privileged-pods" in r.text, r.text
    assert ("", "pods", "default", "root-shell") not in double.cluster.objects
    assert _writes(double, before) == []


HOST_PORT = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "exposed", "namespace": "default"},
    "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": {
        "metadata": {"labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "nginx",
                                 "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}},
}  # fmt: skip
EXTERNAL_IPS = {
    "apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "default"},
    "spec": {"selector": {"app": "x"}, "ports": [{"port": 80}], "externalIPs": ["203.0.113.7"]},
}  # fmt: skip


def test_host_ports_and_external_ips_are_guarded(k18: K18) -> None:
    gw, double, kube = k18
    before = len(double.cluster.requests)
    with _k8s(kube, "dev") as dev:
        deployment = dev.post("/apis/apps/v1/namespaces/default/deployments", json=HOST_PORT)
        service = dev.post("/api/v1/namespaces/default/services", json=EXTERNAL_IPS)
    assert deployment.status_code == 403, deployment.text
    assert "guardrail:no-privileged-pods" in deployment.text
    assert service.status_code == 403 and "guardrail:no-public-services" in service.text
    (proposed,) = call(
        gw, "agent",
        ("propose_change", {"connection": "cluster", "justification": "x",
                            "manifests": [json.dumps(HOST_PORT)]}),
    )  # fmt: skip
    assert "blocked by guardrail:no-privileged-pods" in error_text(proposed)
    assert not {k for k in double.cluster.objects if k[3] in ("exposed", "ext")}
    assert _writes(double, before) == []


def test_subresources_answering_with_the_pod_are_masked(
    k18: K18,
) -> None:
    gw, double, _ = k18
    path = "/api/v1/namespaces/default/pods/web-1/ephemeralcontainers"
    (read,) = call(gw, "agent", ("query", {"connection": "cluster", "path": path}))
    got = body(read)["object"]
    assert got["kind"] == "Pod" and "ADMIN_EMAIL" in json.dumps(got)
    assert EMAIL not in json.dumps(read.structuredContent)
    assert any(p == path for m, p, _, _ in double.cluster.requests if m == "GET")


def test_refused_proposals_record_no_secret_in_any_shape(
    k18: K18,
) -> None:
    gw, double, _ = k18
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
              "stringData": {"token": "plain-s3cret-1"}}  # fmt: skip
    listed = {"apiVersion": "v1", "kind": "List", "items": [secret]}
    lower = {**secret, "kind": "secret", "stringData": {"token": "plain-s3cret-2"}}
    array = [{**secret, "stringData": {"token": "plain-s3cret-3"}}]
    before = len(double.cluster.requests)
    results = call(
        gw, "agent",
        *[("propose_change", {"connection": "cluster", "justification": "creds-18b",
                              "manifests": [json.dumps(m)]}) for m in (listed, lower, array)],
    )  # fmt: skip
    assert all(r.isError for r in results)
    recorded = _mcp_actions(gw, "creds-18b", 3)
    assert len([a for a in recorded if "propose_change" in json.dumps(a)]) == 3
    assert "plain-s3cret" not in json.dumps(recorded)
    assert _writes(double, before) == []


def test_query_reads_follow_as_the_api_server_does(k18: K18) -> None:
    gw, double, _ = k18
    before = len(double.cluster.requests)
    log = "/api/v1/namespaces/default/pods/web-1/log"
    followed = call(
        gw, "agent",
        *[("query", {"connection": "cluster", "path": f"{log}?{q}"})
          for q in ("follow=true&follow=false", "follow=", "follow")],
    )  # fmt: skip
    for result in followed:
        assert "does not follow logs" in error_text(result)
    assert double.cluster.requests[before:] == []  # nothing was sent


def test_json_patches_the_gateway_cannot_judge_are_refused(k18: K18) -> None:
    """A JSON Patch replacing the whole object (path "") carried a body the guardrails
    never saw; one with move/copy made the gateway fail with HTTP 500 (unrecorded)."""
    gw, double, kube = k18
    before = len(double.cluster.requests)
    pod = "/api/v1/namespaces/default/pods/web-1"
    whole = [{"op": "replace", "path": "", "value": {"spec": {"hostPID": True}}}]
    moved = [{"op": "move", "from": "/metadata/labels", "path": "/metadata/annotations"}]
    with _k8s(kube, "dev") as dev:
        answers = [
            dev.patch(pod, content=json.dumps(ops),
                      headers={"Content-Type": "application/json-patch+json"})
            for ops in (whole, moved)
        ]  # fmt: skip
    for r in answers:
        assert r.status_code == 403 and r.json()["reason"] == "Forbidden", r.text
    assert "must start with '/'" in answers[0].text and "move/copy" in answers[1].text
    assert "hostPID" not in json.dumps(double.cluster.objects[("", "pods", "default", "web-1")])
    assert _writes(double, before) == []


def test_answers_to_requests_the_gateway_cannot_read_are_not_passed_unmasked(k18: K18) -> None:
    """On a connection in observe mode (or with on_parse_error: review, once approved) a
    request the resolver cannot read ran, and masking, which reads the resource from
    the path, passed a Secret in clear: Go decodes ``d%62`` to ``db``."""
    gw, double, kube = k18
    before = len(double.cluster.requests)
    with kube.k8s("agent") as agent:
        got = agent.get("/k8s/observed/api/v1/namespaces/default/secrets/d%62")
        plain = agent.get("/k8s/observed/api/v1/namespaces/default/secrets/db")
    assert SECRET_B64[:18] not in got.text
    assert got.status_code == 403 and "cannot be masked" in got.text, got.text
    assert plain.status_code == 200 and SECRET_B64[:18] not in plain.text
    assert [p for _, p, _, _ in double.cluster.requests[before:]] == [
        "/api/v1/namespaces/default/secrets/db"
    ]  # only the readable request reached the cluster


def test_a_list_across_namespaces_meets_the_guardrails_of_each(k18: K18) -> None:
    """A list without a namespace in its path answers with every namespace's objects:
    a guardrail on the namespace ``audit`` did not match it, so the agent read audit's
    ConfigMaps by listing /api/v1/configmaps."""
    gw, double, kube = k18
    before = len(double.cluster.requests)
    everywhere, audit, default = call(
        gw, "agent",
        ("query", {"connection": "cluster", "path": "/api/v1/configmaps"}),
        ("query", {"connection": "cluster", "resource": "cm", "namespace": "audit"}),
        ("query", {"connection": "cluster", "resource": "cm", "namespace": "default"}),
    )  # fmt: skip
    for refused in (everywhere, audit):
        assert "blocked by guardrail:no-audit-reads" in error_text(refused)
    assert body(default)["status"] == 200
    with kube.k8s("dev") as dev:
        watched = dev.get("/k8s/cluster/api/v1/configmaps?watch=1&timeoutSeconds=1")
        assert watched.status_code == 403 and "no-audit-reads" in watched.text
        nodes = dev.get("/k8s/cluster/api/v1/namespaces")  # cluster-scoped: no namespace
        assert nodes.status_code == 200, nodes.text
    sent = [p for _, p, _, _ in double.cluster.requests[before:] if "namespaces" in p]
    assert sent == ["/api/v1/namespaces/default/configmaps", "/api/v1/namespaces"]
    assert "audit-only-marker" not in json.dumps([r.structuredContent for r in (everywhere,)])


def test_a_held_write_naming_another_object_previews_no_secret(k18: K18) -> None:
    """The preview of a held create reads the live object by the body's name: one of
    ``../secrets/db`` (httpx resolves dot segments) fetched the Secret and showed it in
    clear in the reviewer's diff, kept in the review (the double accepts the name in
    its dry run; a real API server refuses it, which leaves no diff)."""
    gw, double, kube = k18
    cm = {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "../secrets/db", "namespace": "default"}, "data": {"a": "b"}}  # fmt: skip
    before = len(double.cluster.requests)
    with kube.k8s("agent") as agent:
        held = agent.post("/k8s/cluster/api/v1/namespaces/default/configmaps", json=cm)
    assert held.status_code == 403 and "ReviewPending" in held.text, held.text
    review_id = next(
        c["message"] for c in held.json()["details"]["causes"] if c["reason"] == "ReviewPending"
    )
    reviewer = httpx.Client(
        base_url=f"http://127.0.0.1:{gw.api_port}",
        headers={"Authorization": f"Bearer {gw.token('reviewer')}"},
        timeout=30,
    )
    with reviewer:
        deadline = time.monotonic() + 15
        shown: dict[str, object] = {}
        while not shown.get("preview") and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = reviewer.get(f"/api/v1/reviews/{review_id}").json()
    assert shown.get("preview"), shown
    assert SECRET_B64[:18] not in json.dumps(shown)
    assert not any(p.endswith("/secrets/db") for _, p, _, _ in double.cluster.requests[before:])


def test_gateway_api_routes_count_as_public_ingress() -> None:
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"parentRefs": [{"name": "public"}], "rules": [{"backendRefs": [{"name": "web"}]}]},
    }  # fmt: skip
    text = "POST /apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes"
    info = classify_request(text, json.dumps(route), "application/json")
    assert "ingress_public" in info.kinds
