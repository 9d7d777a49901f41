"""A kubeconfig that points kubectl (and client-go tools, the official Python client)
at the gateway: the server is ``<gateway>/k8s/<connection>`` and the user's only
credential is their wardgate token. Nothing of the cluster's own credential or CA."""

from __future__ import annotations

import base64
from typing import Any

import yaml


def kubeconfig(
    server: str, connection: str, principal: str, token: str, ca_pem: bytes | None = None
) -> str:
    """``ca_pem``: the certificate clients pin for the gateway (its self-signed one)."""
    name = f"wardgate-{connection}"
    user = f"{principal}@wardgate"
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": user, "namespace": "default"}}
        ],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)
