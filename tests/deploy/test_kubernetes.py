"""deploy/kubernetes: each overlay rendered by `kubectl kustomize` and every object
validated offline against the Kubernetes schemas (kubernetes-validate, strict: unknown
fields fail), then checked for what the deployment docs promise."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.conftest import require_tool
from wardgate.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.32"
OVERLAYS = ("single", "fleet")


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    out = subprocess.run(
        [kubectl, "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_objects_are_valid_kubernetes(overlay: str) -> None:
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
    } <= kinds
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (deployment,) = by_kind(docs, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):  # a typo does fail
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pod_is_locked_down_and_probed(overlay: str) -> None:
    docs = render(overlay)
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and pod["securityContext"]["runAsUser"] == 10001
    )
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    env = {e["name"]: e for e in container["env"]}
    assert env["WARDGATE_MASTER_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "wardgate-master-key"
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert {"/etc/wardgate", "/var/lib/wardgate", "/tmp"} <= mounts.keys()
    # The drain fits in the grace period: preStop + drain_timeout + the recorder's 15 s.
    (configmap,) = by_kind(docs, "ConfigMap")
    config = parse_config(configmap["data"]["wardgate.yaml"], Path("/etc/wardgate/wardgate.yaml"))
    assert config.master_key == "env:WARDGATE_MASTER_KEY"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pre_stop + config.limits.drain_timeout + 15 <= pod["terminationGracePeriodSeconds"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    (service_account,) = by_kind(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == service_account["metadata"]["name"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    for service in by_kind(docs, "Service"):
        assert service["spec"]["selector"] == selector
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    (policy,) = by_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == selector


def test_single_is_one_pod_with_sqlite_on_a_volume() -> None:
    docs = render("single")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    (claim,) = by_kind(docs, "PersistentVolumeClaim")
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    env = {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "WARDGATE_STORE" not in env


def test_fleet_is_n_pods_on_an_external_postgresql_store() -> None:
    docs = render("fleet")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WARDGATE_STORE"]["valueFrom"]["secretKeyRef"] == {
        "name": "wardgate-store",
        "key": "url",
    }
    host_key = [
        m for m in container["volumeMounts"] if m["mountPath"].endswith("ssh_host_ed25519_key")
    ]
    assert host_key and host_key[0]["readOnly"] is True
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": 2, "selector": pdb["spec"]["selector"]}
