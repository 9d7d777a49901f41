"""The gate on Kubernetes connections, as a table: roles judge read/write/admin requests,
guardrails match kinds, resources, namespaces, verbs and body conditions (JSON, YAML,
JSON Patch), and what the gateway cannot read is never allowed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from wardgate.actions import Action, Decision
from wardgate.config import Config, load_config
from wardgate.gate import Gate
from wardgate.policy.kubernetes import classify_request, request_text

EXAMPLE = Path(__file__).parents[2] / "examples" / "kubernetes.yaml"


@pytest.fixture(scope="module")
def gate() -> Gate:
    config: Config = load_config(EXAMPLE)
    return Gate(config)


def _action(gate: Gate, who: str, text: str, body: object = None, ctype: str = "") -> Action:
    principal = gate.config.principal(who)
    assert principal is not None
    raw = body if isinstance(body, str) or body is None else json.dumps(body)
    if raw is not None and not ctype:
        ctype = "application/json"
    return Action(
        principal, "cluster", "kubernetes", "kubernetes", text,
        params=(raw,) if raw is not None else (),
        binding=hashlib.sha256(raw.encode()).hexdigest() if raw is not None else "",
        context=(("content-type", ctype),) if ctype else (),
    )  # fmt: skip


POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "image": "nginx"}]},
}
PRIV = {
    **POD,
    "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
}
DEPLOY_HOSTPATH = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "d"},
    "spec": {
        "template": {
            "spec": {"volumes": [{"name": "h", "hostPath": {"path": "/"}}], "containers": []}
        }
    },
}
LB = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "s"},
    "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]},
}
CRB = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRoleBinding",
    "metadata": {"name": "x"},
    "roleRef": {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "cluster-admin",
    },
    "subjects": [],
}

INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "w"},
    "spec": {"defaultBackend": {"service": {"name": "web", "port": {"number": 80}}}},
}
_RANGE = "nginx.ingress.kubernetes.io/whitelist-source-range"
INGRESS_LIMITED = {**INGRESS, "metadata": {"name": "w", "annotations": {_RANGE: "10.0.0.0/8"}}}
INGRESS_WORLD = {
    **INGRESS,
    "metadata": {"name": "w", "annotations": {_RANGE: "10.0.0.0/8, 0.0.0.0/0"}},
}

CASES = [
    # (who, request, body, content type, decision, rule)
    ("agent", "GET /api/v1/namespaces/default/pods", None, "", Decision.ALLOW, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods?watch=1", None, "", Decision.ALLOW, "role:k8s-agent"),
    ("agent", "GET /apis", None, "", Decision.ALLOW, "role:k8s-agent"),
    ("agent", "GET /version", None, "", Decision.ALLOW, "role:k8s-agent"),
    ("agent", "POST /api/v1/namespaces/default/pods", POD, "", Decision.REVIEW, "role:k8s-agent"),
    # exec: the command judged by the shell engine; a shell (sh, -t, attach) needs shell: allow
    ("agent", "POST /api/v1/namespaces/default/pods/p/exec?command=sh", None, "", Decision.BLOCK, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/exec?command=sh", None, "", Decision.BLOCK, "role:k8s-agent"),
    ("alice", "GET /api/v1/namespaces/default/pods/p/exec?command=sh", None, "", Decision.ALLOW, "role:k8s-sre"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/exec?command=ls&command=-la&stdout=true", None, "", Decision.ALLOW, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/exec?command=sh&command=-c&command=cat+a+%3E+b", None, "", Decision.REVIEW, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/exec?command=ls&tty=true", None, "", Decision.BLOCK, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/exec?command=ls&tty=", None, "", Decision.BLOCK, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/exec?command=ls&tty=false", None, "", Decision.ALLOW, "role:k8s-agent"),
    ("agent", "GET /api/v1/namespaces/default/pods/p/attach?stdin=true&tty=true", None, "", Decision.BLOCK, "role:k8s-agent"),
    ("alice", "GET /api/v1/namespaces/default/pods/p/attach?stdin=true&tty=true", None, "", Decision.ALLOW, "role:k8s-sre"),
    ("alice", "POST /api/v1/namespaces/default/pods/p/portforward?ports=80", None, "", Decision.BLOCK, "role:k8s-sre"),
    ("alice", "GET /api/v1/namespaces/kube-system/pods/p/exec?command=touch&command=x", None, "", Decision.BLOCK, "guardrail:kube-system-read-only"),
    ("alice", "GET /api/v1/namespaces/kube-system/pods/p/exec?command=ls", None, "", Decision.ALLOW, "role:k8s-sre"),
    ("alice", "GET /api/v1/namespaces/kube-system/pods/p/attach?tty=true", None, "", Decision.BLOCK, "guardrail:kube-system-read-only"),
    ("alice", "GET /api/v1/namespaces/default/pods/p/exec?command=ls%zz", None, "", Decision.BLOCK, "unparsed-request"),
    ("alice", "GET /api/v1/namespaces/default/pods/p/exec?stdout=true", None, "", Decision.BLOCK, "unparsed-request"),
    ("alice", "POST /api/v1/namespaces/default/pods", POD, "", Decision.ALLOW, "role:k8s-sre"),
    ("alice", "POST /api/v1/namespaces/default/pods", PRIV, "", Decision.BLOCK, "guardrail:no-privileged-pods"),
    ("alice", "POST /apis/apps/v1/namespaces/default/deployments", DEPLOY_HOSTPATH, "", Decision.BLOCK, "guardrail:no-privileged-pods"),
    ("alice", "POST /api/v1/namespaces/default/services", LB, "", Decision.BLOCK, "guardrail:no-public-services"),
    # the same Service as YAML, and a JSON Patch that turns a Service into a NodePort one
    ("alice", "POST /api/v1/namespaces/default/services", "kind: Service\nspec:\n  type: LoadBalancer\n", "application/yaml", Decision.BLOCK, "guardrail:no-public-services"),
    ("alice", "PATCH /api/v1/namespaces/default/services/s", [{"op": "replace", "path": "/spec/type", "value": "NodePort"}], "application/json-patch+json", Decision.BLOCK, "guardrail:no-public-services"),
    ("alice", "PATCH /api/v1/namespaces/default/services/s?fieldManager=kubectl", {"spec": {"type": "LoadBalancer"}}, "application/strategic-merge-patch+json", Decision.BLOCK, "guardrail:no-public-services"),
    ("alice", "POST /apis/rbac.authorization.k8s.io/v1/clusterrolebindings", CRB, "", Decision.BLOCK, "guardrail:no-cluster-admin"),
    # an Ingress opens a workload to the world unless a source range limits it
    ("alice", "POST /apis/networking.k8s.io/v1/namespaces/default/ingresses", INGRESS, "", Decision.REVIEW, "guardrail:no-public-ingress"),
    ("alice", "POST /apis/networking.k8s.io/v1/namespaces/default/ingresses", INGRESS_LIMITED, "", Decision.ALLOW, "role:k8s-sre"),
    ("alice", "POST /apis/networking.k8s.io/v1/namespaces/default/ingresses", INGRESS_WORLD, "", Decision.BLOCK, "guardrail:no-public-services"),
    ("alice", "PATCH /apis/networking.k8s.io/v1/namespaces/default/ingresses/w", [{"op": "remove", "path": "/metadata/annotations/nginx.ingress.kubernetes.io~1whitelist-source-range"}], "application/json-patch+json", Decision.REVIEW, "guardrail:no-public-ingress"),
    ("alice", "PATCH /apis/networking.k8s.io/v1/namespaces/default/ingresses/w", {"metadata": {"labels": {"a": "b"}}}, "application/merge-patch+json", Decision.ALLOW, "role:k8s-sre"),
    # read as the API server reads them (attack18b): YAML 1.1's y/N, hostPort, externalIPs
    ("alice", "POST /api/v1/namespaces/default/pods", "spec:\n  hostPID: y\n", "application/yaml", Decision.BLOCK, "guardrail:no-privileged-pods"),
    ("alice", "POST /api/v1/namespaces/default/pods", "spec:\n  hostPID: N\n", "application/yaml", Decision.ALLOW, "role:k8s-sre"),
    ("alice", "POST /api/v1/namespaces/default/pods", {"spec": {"containers": [{"ports": [{"hostPort": 80}]}]}}, "", Decision.BLOCK, "guardrail:no-privileged-pods"),
    ("alice", "POST /api/v1/namespaces/default/services", {"spec": {"externalIPs": ["203.0.113.7"]}}, "", Decision.BLOCK, "guardrail:no-public-services"),
    ("alice", "PATCH /api/v1/namespaces/default/pods/p", [{"op": "replace", "path": "", "value": {"spec": {"hostPID": True}}}], "application/json-patch+json", Decision.BLOCK, "unparsed-request"),
    ("alice", "PATCH /api/v1/namespaces/default/pods/p", [{"op": "move", "from": "/a", "path": "/b"}], "application/json-patch+json", Decision.BLOCK, "unparsed-request"),
    # the aggregator and mutating admission policies change what every request does: admin
    ("alice", "PATCH /apis/apiregistration.k8s.io/v1/apiservices/v1.apps", {"spec": {"service": {"name": "x", "namespace": "default"}}}, "application/merge-patch+json", Decision.REVIEW, "role:k8s-sre"),
    ("alice", "POST /apis/admissionregistration.k8s.io/v1beta1/mutatingadmissionpolicies", {"kind": "MutatingAdmissionPolicy"}, "", Decision.REVIEW, "role:k8s-sre"),
    ("alice", "DELETE /api/v1/namespaces/prod", None, "", Decision.BLOCK, "guardrail:namespaces-stay"),
    ("alice", "DELETE /api/v1/namespaces/kube-system/pods/coredns", None, "", Decision.BLOCK, "guardrail:kube-system-read-only"),
    ("alice", "GET /api/v1/namespaces/kube-system/pods", None, "", Decision.ALLOW, "role:k8s-sre"),
    # a collection without a namespace reaches every namespace, kube-system too
    ("alice", "DELETE /api/v1/pods", None, "", Decision.BLOCK, "guardrail:kube-system-read-only"),
    ("alice", "DELETE /apis/rbac.authorization.k8s.io/v1/clusterroles", None, "", Decision.REVIEW, "role:k8s-sre"),
    # impersonation is admin: blocked for the agent, reviewed for an SRE
    ("agent", "GET /api/v1/namespaces/default/pods\nimpersonate-user: system:admin", None, "", Decision.BLOCK, "role:k8s-agent"),
    ("alice", "GET /api/v1/namespaces/default/pods\nimpersonate-user: system:admin", None, "", Decision.REVIEW, "role:k8s-sre"),
    ("alice", "GET /api/v1/pods\nimpersonate-user: system:admin", None, "", Decision.BLOCK, "guardrail:kube-system-read-only"),  # every namespace
    # what the gateway cannot read: protobuf, duplicate keys, ambiguous paths, odd methods
    ("alice", "POST /api/v1/namespaces/default/pods", "\x6b\x38\x73\x00", "application/vnd.kubernetes.protobuf", Decision.BLOCK, "unparsed-request"),
    ("alice", "POST /api/v1/namespaces/default/pods", '{"spec": {"hostNetwork": false, "HostNetwork": true}}', "application/json", Decision.BLOCK, "unparsed-request"),
    ("alice", "POST /api/v1/namespaces/default/pods", "spec:\n  hostPID: false\n  hostPID: true\n", "application/yaml", Decision.BLOCK, "unparsed-request"),
    ("alice", "GET /api/v1/namespaces/default/secrets%2Fx", None, "", Decision.BLOCK, "unparsed-request"),
    ("alice", "OPTIONS /api/v1/namespaces/default/pods", None, "", Decision.BLOCK, "unparsed-request"),
    ("alice", "POST /healthz", None, "", Decision.BLOCK, "unparsed-request"),
]  # fmt: skip


@pytest.mark.parametrize(("who", "text", "body", "ctype", "decision", "rule"), CASES)
def test_requests(
    gate: Gate, who: str, text: str, body: object, ctype: str, decision: Decision, rule: str
) -> None:
    verdict = gate.check(_action(gate, who, text, body, ctype))
    assert (verdict.decision, verdict.rule) == (decision, rule), verdict.reason


def test_body_is_part_of_the_cache_key(gate: Gate) -> None:
    text = "POST /api/v1/namespaces/default/pods"
    assert gate.check(_action(gate, "alice", text, POD)).decision is Decision.ALLOW
    assert gate.check(_action(gate, "alice", text, PRIV)).decision is Decision.BLOCK


def test_sql_and_shell_rules_never_match_a_request_without_a_command() -> None:
    config = load_config(EXAMPLE)
    rails = [
        {"name": "sql", "match": {"sql": ["write"]}, "verdict": "block"},
        {"name": "shell", "match": {"commands": ["write"]}, "verdict": "block"},
        {"name": "deploys", "match": {"resources": ["deployments"], "verbs": ["create"]}, "verdict": "review"},
        {"name": "exec-only", "match": {"resources": ["pods/exec"]}, "verdict": "block"},
    ]  # fmt: skip
    data = config.model_dump()
    data["guardrails"] = rails
    gate = Gate(Config.model_validate(data))
    deploy = _action(
        gate, "alice", "POST /apis/apps/v1/namespaces/a/deployments", {"kind": "Deployment"}
    )
    verdict = gate.check(deploy)
    assert (verdict.decision, verdict.rule) == (Decision.REVIEW, "guardrail:deploys")
    # RBAC reading: "pods/exec" names the subresource only; "pods" does not cover it
    pods = gate.check(_action(gate, "alice", "POST /api/v1/namespaces/a/pods", POD))
    assert pods.decision is Decision.ALLOW
    ex = gate.check(_action(gate, "alice", "POST /api/v1/namespaces/a/pods/p/exec?command=ls"))
    assert (ex.decision, ex.rule) == (Decision.BLOCK, "guardrail:exec-only")


def test_shell_rules_match_the_commands_exec_runs() -> None:
    config = load_config(EXAMPLE)
    data = config.model_dump()
    data["guardrails"] = [
        {"name": "no-writes", "match": {"commands": ["write"]}, "verdict": "block"},
        {"name": "no-curl", "match": {"programs": ["curl"], "namespaces": ["prod"]}, "verdict": "block"},
        {"name": "no-etc", "match": {"paths": ["/etc/*"]}, "verdict": "block"},
    ]  # fmt: skip
    gate = Gate(Config.model_validate(data))

    def check(path: str) -> tuple[Decision, str]:
        verdict = gate.check(_action(gate, "alice", path))
        return verdict.decision, verdict.rule

    base = "GET /api/v1/namespaces/{}/pods/p/exec?"
    assert check(base.format("a") + "command=ls") == (Decision.ALLOW, "role:k8s-sre")
    # the script inside sh -c is what runs, and what is judged
    assert check(base.format("a") + "command=sh&command=-c&command=ls+%3E+out") == (
        Decision.BLOCK,
        "guardrail:no-writes",
    )
    assert check(base.format("a") + "command=tee&command=/etc/passwd")[1] in (
        "guardrail:no-writes",
        "guardrail:no-etc",
    )
    # Kubernetes and shell fields together: both must match
    assert check(base.format("prod") + "command=curl&command=x") == (
        Decision.BLOCK,
        "guardrail:no-curl",
    )
    assert check(base.format("dev") + "command=curl&command=x")[1] != "guardrail:no-curl"
    # shell fields never match a request that runs no command
    assert check("DELETE /api/v1/namespaces/a/pods/p") == (Decision.ALLOW, "role:k8s-sre")


def test_request_text_carries_impersonation_in_order() -> None:
    text = request_text(
        "get", "/api/v1/pods", "", [("Accept", "x"), ("Impersonate-User", "bob"), ("Impersonate-Extra-Scopes", "a")]
    )  # fmt: skip
    assert text == "GET /api/v1/pods\nimpersonate-user: bob\nimpersonate-extra-scopes: a"
    stmt = classify_request(text)
    assert stmt.klass == "admin" and "impersonate" in stmt.kinds


def test_statement_names_resource_namespace_verb() -> None:
    stmt = classify_request("GET /apis/apps/v1/namespaces/web/deployments/api")
    assert (stmt.klass, stmt.resources, stmt.namespaces, stmt.verbs) == (
        "read",
        ("deployments.apps",),
        ("web",),
        ("get",),
    )
    secret = classify_request("GET /api/v1/namespaces/web/secrets")
    assert "secret_read" in secret.kinds


def test_a_network_policy_rule_without_sources_is_open() -> None:
    def kinds(policy: object) -> tuple[str, ...]:
        return classify_request(
            "POST /apis/networking.k8s.io/v1/namespaces/a/networkpolicies",
            json.dumps(policy),
            "application/json",
        ).kinds

    assert "open_cidr" in kinds({"spec": {"ingress": [{}]}})
    assert "open_cidr" in kinds({"spec": {"ingress": [{"from": [], "ports": [{"port": 80}]}]}})
    assert "open_cidr" not in kinds({"spec": {"ingress": [{"from": [{"podSelector": {}}]}]}})
    assert "open_cidr" not in kinds({"spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})


def test_network_policies_open_to_the_world_are_seen() -> None:
    policy = {
        "kind": "NetworkPolicy",
        "spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]},
    }
    stmt = classify_request(
        "POST /apis/networking.k8s.io/v1/namespaces/a/networkpolicies",
        json.dumps(policy),
        "application/json",
    )
    assert "open_cidr" in stmt.kinds and stmt.resources == ("networkpolicies.networking.k8s.io",)
    narrow = json.dumps({"spec": {"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}})
    assert (
        "open_cidr"
        not in classify_request(
            "POST /apis/networking.k8s.io/v1/namespaces/a/networkpolicies",
            narrow,
            "application/json",
        ).kinds
    )


def test_port_forward_ports_are_judged_by_role_and_guardrail() -> None:
    """A role's forwarding_ports allow-lists pod ports; a guardrail's ports matches them;
    a port-forward naming no port (kubectl's handshake) is judged on its session only,
    its ports later, one by one, as the tunnel opens them (kubernetes/forward.py)."""
    data = load_config(EXAMPLE).model_dump()
    data["roles"]["k8s-sre"] |= {"forwarding": "allow", "forwarding_ports": [8080, "9000-9009"]}
    data["guardrails"] = [{"name": "no-ssh", "match": {"ports": ["22"]}, "verdict": "block"}]
    gate = Gate(Config.model_validate(data))

    def check(query: str) -> tuple[Decision, str]:
        path = "POST /api/v1/namespaces/a/pods/p/portforward" + query
        verdict = gate.check(_action(gate, "alice", path))
        return verdict.decision, verdict.rule

    assert check("") == (Decision.ALLOW, "role:k8s-sre")
    assert check("?ports=8080") == (Decision.ALLOW, "role:k8s-sre")
    assert check("?ports=9009,8080") == (Decision.ALLOW, "role:k8s-sre")
    assert check("?ports=9010") == (Decision.BLOCK, "role:k8s-sre")
    assert check("?ports=8080&ports=5432") == (Decision.BLOCK, "role:k8s-sre")
    assert check("?ports=22")[1] == "guardrail:no-ssh"
    # what the kubelet would not read as a port is not read by the gateway either
    assert check("?ports=8080x")[1] == "unparsed-request"
    assert check("?ports=0")[1] == "unparsed-request"


@pytest.mark.parametrize("bad", [0, 65536, "10-5", "x", "80-", True])
def test_port_ranges_are_checked_in_the_config(bad: object) -> None:
    data = load_config(EXAMPLE).model_dump()
    data["roles"]["k8s-sre"]["forwarding_ports"] = [bad]
    with pytest.raises(ValueError, match="not a port"):
        Config.model_validate(data)
