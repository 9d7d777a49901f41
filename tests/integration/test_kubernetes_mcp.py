"""The MCP tools on a Kubernetes connection, driven by the official MCP SDK client
against a real wardgate process and the API server DOUBLE (tests/integration/
k8s_double.py): ``describe`` from discovery, ``query`` through the Kubernetes gateway's
own judging, masking and recording, ``propose_change`` of manifests applied once after a
human approves. Assertions are on the double's state and the requests it received."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Gateway, free_port, make_gateway
from tests.integration.k8s_double import RunningDouble, start_double
from tests.integration.test_kubernetes import DEPLOYMENT, SERVICE, UPSTREAM_TOKEN, kube_config
from tests.integration.test_mcp import _mcp_actions, body, call, error_text

SECRET_VALUE = "hunter2-plain"
SECRET_B64 = "aHVudGVyMi1wbGFpbg"
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {mode: green}
"""


@pytest.fixture(scope="module")
def kmcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, RunningDouble]]:
    tmp = tmp_path_factory.mktemp("k8s-mcp")
    double = start_double(tmp / "double", free_port(), UPSTREAM_TOKEN)
    cluster = double.cluster
    cluster.put("", "pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "nginx",
                                 "env": [{"name": "ADMIN_EMAIL", "value": "jane.doe@example.com"}]}]},
    })  # fmt: skip
    cluster.put("", "secrets", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "db", "namespace": "default"},
        "data": {"password": "aHVudGVyMi1wbGFpbg==", "user": "YXBw"},
    })  # fmt: skip
    config = kube_config(double).replace(
        "guardrails:\n",
        "guardrails:\n  - {name: no-rbac-reads, match: {resources: ['*.rbac.authorization.k8s.io']},"
        " verdict: block}\n"
        "  - {name: review-audit-reads, match: {namespaces: [audit], kubernetes: [read]},"
        " verdict: review}\n",
    )
    gw = make_gateway(tmp / "gw", config)
    gw.env["IT_KUBE_TOKEN"] = UPSTREAM_TOKEN
    gw.start()
    try:
        yield gw, double
    finally:
        gw.stop()
        double.stop()


def _upstream(double: RunningDouble, method: str, part: str) -> list[str]:
    return [p for m, p, _, _ in double.cluster.requests if m == method and part in p]


def test_describe_lists_the_resources_the_principal_may_read(
    kmcp: tuple[Gateway, RunningDouble],
) -> None:
    gw, _ = kmcp
    listed, described = call(
        gw, "agent", ("list_connections", {}), ("describe", {"connection": "cluster"})
    )
    assert {"name": "cluster", "type": "kubernetes"}.items() <= {
        k: v for c in body(listed)["connections"] for k, v in c.items() if c["name"] == "cluster"
    }.items()
    resources = {r["resource"]: r for r in body(described)["resources"]}
    assert resources["pods"]["kind"] == "Pod" and resources["pods"]["namespaced"] is True
    assert resources["deployments.apps"]["apiVersion"] == "apps/v1"
    assert resources["secrets"]["masked"] is True  # the agent reads them redacted
    assert "clusterrolebindings.rbac.authorization.k8s.io" not in resources  # guardrail
    assert not any("/" in name for name in resources)  # subresources are not listed


def test_query_reads_through_the_gateway_masked_and_recorded(
    kmcp: tuple[Gateway, RunningDouble],
) -> None:
    gw, double = kmcp
    before = len(double.cluster.requests)
    secret, listed, pods, human = call(
        gw,
        "agent",
        ("query", {"connection": "cluster", "resource": "secret", "namespace": "default",
                   "name": "db", "verb": "get"}),
        ("query", {"connection": "cluster", "path": "/api/v1/namespaces/default/secrets"}),
        ("query", {"connection": "cluster", "resource": "po", "namespace": "default"}),
    ) + call(gw, "dev", ("query", {"connection": "cluster", "resource": "secrets",
                                   "namespace": "default", "name": "db"}))  # fmt: skip
    one = body(secret)["object"]
    assert one["kind"] == "Secret" and set(one["data"]) == {"password", "user"}
    for result in (secret, listed):
        text = json.dumps(result.structuredContent)
        assert SECRET_VALUE not in text and SECRET_B64 not in text
    assert body(listed)["object"]["items"][0]["metadata"]["name"] == "db"
    pod_text = json.dumps(body(pods)["object"])
    assert "ADMIN_EMAIL" in pod_text and "jane.doe@example.com" not in pod_text
    assert body(human)["object"]["data"]["password"] == "aHVudGVyMi1wbGFpbg=="  # unmasked human
    seen = double.cluster.requests[before:]
    assert {auth for _, _, auth, _ in seen} == {f"Bearer {UPSTREAM_TOKEN}"}
    assert ("GET", "/api/v1/namespaces/default/secrets/db") in {(m, p) for m, p, _, _ in seen}
    # recorded by the Kubernetes gateway's recorder, in the MCP session
    recorded = _mcp_actions(gw, "GET /api/v1/namespaces/default/secrets/db", 4)
    read = next(r for r in recorded if r["text"] == "GET /api/v1/namespaces/default/secrets/db")
    assert read["kind"] == "kubernetes" and read["command"] == "HTTP 200", read
    # numbered in their MCP sessions: the agent's three reads, the human's one
    assert sorted(r["seq"] for r in recorded) == [1, 1, 2, 3]
    assert all(SECRET_VALUE not in json.dumps(r) for r in recorded)


def test_query_refuses_writes_streams_and_blocked_reads(
    kmcp: tuple[Gateway, RunningDouble],
) -> None:
    gw, double = kmcp
    before = len(double.cluster.requests)
    delete, watch, rbac, sql = call(
        gw,
        "dev",
        ("query", {"connection": "cluster", "verb": "delete", "resource": "pods",
                   "namespace": "default", "name": "web-1"}),
        ("query", {"connection": "cluster", "path": "/api/v1/pods?watch=1"}),
        ("query", {"connection": "cluster",
                   "path": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"}),
        ("query", {"connection": "cluster", "sql": "select 1"}),
    )  # fmt: skip
    assert "propose_change" in error_text(delete) and "Nothing was sent" in error_text(delete)
    assert "does not watch" in error_text(watch)
    assert "wardgate: blocked by guardrail:no-rbac-reads" in error_text(rbac)
    assert "give path or resource" in error_text(sql)
    assert double.cluster.requests[before:] == []  # nothing reached the cluster
    assert ("", "pods", "default", "web-1") in double.cluster.objects


def _api(gw: Gateway, principal: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{gw.api_port}",
        headers={"Authorization": f"Bearer {gw.token(principal)}"},
        timeout=30,
    )


def test_proposed_manifests_are_reviewed_then_applied_once(
    kmcp: tuple[Gateway, RunningDouble],
) -> None:
    gw, double = kmcp
    objects = double.cluster.objects
    deployment, configmap = (
        ("apps", "deployments", "default", "web"),
        ("", "configmaps", "default", "settings"),
    )
    (proposed,) = call(
        gw,
        "agent",
        ("propose_change", {"connection": "cluster", "justification": "roll out web",
                            "manifests": [DEPLOYMENT + "---\n" + CONFIGMAP]}),
    )  # fmt: skip
    answer = body(proposed)
    assert answer["status"] == "pending_review", answer
    review_id = answer["review_id"]
    applies = lambda: [  # noqa: E731
        p for p in _upstream(double, "PATCH", "fieldManager=wardgate") if "dryRun" not in p
    ]
    assert applies() == [] and deployment not in objects and configmap not in objects
    with _api(gw, "reviewer") as reviewer, _api(gw, "dev") as dev:
        shown = reviewer.get(f"/api/v1/reviews/{review_id}").json()
        assert shown["kind"] == "proposal" and "nginx:1.27" in json.dumps(shown)
        assert "namespace: default" in json.dumps(shown)  # where each object goes
        deadline = time.monotonic() + 15
        while not (shown.get("preview") or {}).get("kind") and time.monotonic() < deadline:
            time.sleep(0.2)
            shown = reviewer.get(f"/api/v1/reviews/{review_id}").json()
        preview = shown["preview"]
        assert preview["kind"] == "dry_run" and preview["creates"] is True, preview
        assert (
            "+      - image: nginx:1.27" in preview["diff"] and "+  mode: green" in preview["diff"]
        )
        assert _upstream(double, "PATCH", "dryRun=All")  # the dry runs reached the cluster
        assert applies() == [] and deployment not in objects  # still nothing applied
        assert dev.post(f"/api/v1/reviews/{review_id}/approve", json={}).status_code == 403
        assert reviewer.post(f"/api/v1/reviews/{review_id}/approve", json={}).status_code == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            shown = reviewer.get(f"/api/v1/reviews/{review_id}").json()
            if shown["status"] in ("executed", "failed"):
                break
            time.sleep(0.2)
    assert shown["status"] == "executed", shown
    assert objects[deployment]["spec"]["replicas"] == 2
    assert objects[configmap]["data"] == {"mode": "green"}
    time.sleep(1.0)  # anything that would apply it a second time has had its chance
    assert len(applies()) == 2
    (status,) = call(gw, "agent", ("review_status", {"review_id": review_id}))
    result = body(status)["result"]
    assert result["ok"] is True and [a["created"] for a in result["applied"]] == [True, True]


def test_blocked_or_unsafe_manifests_file_no_proposal(
    kmcp: tuple[Gateway, RunningDouble],
) -> None:
    gw, double = kmcp
    secret = "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\nstringData: {k: s3cr3t-value}\n"
    before = len(double.cluster.requests)
    marker = f"unsafe-{uuid.uuid4().hex[:8]}"  # this test's MCP session, not an earlier one
    lb, sec, bad = call(
        gw,
        "agent",
        ("propose_change", {"connection": "cluster", "justification": f"{marker} expose",
                            "manifests": [SERVICE]}),
        ("propose_change", {"connection": "cluster", "justification": "creds",
                            "manifests": [secret]}),
        ("propose_change", {"connection": "cluster", "justification": "x",
                            "manifests": ["kind: [unclosed"]}),
    )  # fmt: skip
    assert "object 1 is blocked by guardrail:no-public-services" in error_text(lb)
    assert "cannot carry a Secret" in error_text(sec)
    assert "not valid YAML" in error_text(bad)
    assert not any(m in ("PATCH", "POST", "PUT") for m, *_ in double.cluster.requests[before:])
    with _api(gw, "reviewer") as reviewer:
        filed = reviewer.get("/api/v1/reviews", params={"kind": "proposal"}).json()
    texts = json.dumps(filed)
    assert "LoadBalancer" not in texts and "stringData" not in texts
    # the refused call is recorded, its Secret value is not
    recorded = _mcp_actions(gw, marker, 3)
    assert any("cannot carry a Secret" in (a.get("error") or "") for a in recorded)
    assert "s3cr3t-value" not in json.dumps(recorded)


def test_the_rest_api_takes_manifests_on_a_cluster(kmcp: tuple[Gateway, RunningDouble]) -> None:
    """POST /api/v1/proposals (and `wardgate proposals submit -s`) serve the same path."""
    gw, double = kmcp
    key = ("", "configmaps", "ops", "flags")
    manifest = CONFIGMAP.replace("{name: settings}", "{name: flags, namespace: ops}")
    with _api(gw, "dev") as dev, _api(gw, "reviewer") as reviewer:
        blocked = dev.post(
            "/api/v1/proposals",
            json={"connection": "cluster", "statements": [SERVICE], "justification": "lb"},
        )
        assert blocked.status_code == 403 and "no-public-services" in blocked.text
        filed = dev.post(
            "/api/v1/proposals",
            json={"connection": "cluster", "statements": [manifest], "justification": "flags"},
        )
        assert filed.status_code == 201, filed.text
        review = filed.json()
        assert review["status"] == "pending" and key not in double.cluster.objects
        assert reviewer.post(f"/api/v1/reviews/{review['id']}/approve", json={}).status_code == 200
        deadline = time.monotonic() + 15
        while key not in double.cluster.objects and time.monotonic() < deadline:
            time.sleep(0.2)
    assert double.cluster.objects[key]["data"] == {"mode": "green"}


def test_a_held_read_runs_once_after_approval(kmcp: tuple[Gateway, RunningDouble]) -> None:
    """query settles like kubectl's request: held (at once, pending_review), approved by
    a human, then the same call runs once."""
    gw, double = kmcp
    args = {"connection": "cluster", "resource": "configmaps", "namespace": "audit"}
    target = "/api/v1/namespaces/audit/configmaps"
    (held,) = call(gw, "agent", ("query", args))
    answer = body(held)
    assert answer["status"] == "pending_review" and "approval pending" in answer["message"]
    assert _upstream(double, "GET", target) == []
    with _api(gw, "reviewer") as reviewer:
        approved = reviewer.post(f"/api/v1/reviews/{answer['review_id']}/approve", json={})
        assert approved.status_code == 200
    ran, again = call(gw, "agent", ("query", args), ("query", args))
    assert body(ran)["status"] == 200 and body(ran)["object"]["items"] == []
    assert body(again)["status"] == "pending_review"  # the approval is used up
    assert len(_upstream(double, "GET", target)) == 1


def test_an_object_blocked_after_filing_stops_the_proposal(
    kmcp: tuple[Gateway, RunningDouble],
) -> None:
    """Approval runs the objects by the policy of that moment (the last test here: it
    reloads the gateway with one more guardrail)."""
    gw, double = kmcp
    key = ("", "configmaps", "frozen", "settings")
    manifest = CONFIGMAP.replace("{name: settings}", "{name: settings, namespace: frozen}")
    (proposed,) = call(
        gw,
        "agent",
        (
            "propose_change",
            {"connection": "cluster", "justification": "freeze", "manifests": [manifest]},
        ),
    )
    review_id = body(proposed)["review_id"]
    text = gw.config_path.read_text()
    gw.reload(
        text.replace(
            "guardrails:\n",
            "guardrails:\n  - {name: frozen, match: {namespaces: [frozen], kubernetes: [write]},"
            " verdict: block}\n",
        )
    )
    with _api(gw, "reviewer") as reviewer:
        assert reviewer.post(f"/api/v1/reviews/{review_id}/approve", json={}).status_code == 200
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            shown = reviewer.get(f"/api/v1/reviews/{review_id}").json()
            if shown["status"] in ("executed", "failed"):
                break
            time.sleep(0.2)
    assert shown["status"] == "failed", shown
    assert "now blocked by guardrail:frozen" in shown["result"]["error"]
    assert key not in double.cluster.objects
    assert not [p for p in _upstream(double, "PATCH", "/namespaces/frozen/") if "dryRun" not in p]
