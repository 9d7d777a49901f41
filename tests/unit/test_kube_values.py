"""ConfigMap and env values through the masking engine, in every response shape."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from wardgate.kubernetes.redact import LAST_APPLIED, RedactError, WatchRedactor, redact_body
from wardgate.kubernetes.values import masks_values, value_masker
from wardgate.policy.kubernetes import resolve

EMAIL = "jane.doe@example.com"


def _mask(text: str) -> str:
    return text.replace(EMAIL, "j****@*****.com")


def _cm() -> dict[str, Any]:
    return {
        "kind": "ConfigMap",
        "metadata": {
            "name": "c",
            "annotations": {LAST_APPLIED: json.dumps({"data": {"contact": EMAIL}})},
        },
        "data": {"contact": f"ops: {EMAIL}", "mode": "blue"},
        "binaryData": {"b": base64.b64encode(EMAIL.encode()).decode(), "raw": "/w=="},
    }


def _pod() -> dict[str, Any]:
    env = [{"name": "ADMIN", "value": EMAIL}, {"name": "REF", "valueFrom": {"x": 1}}]
    return {"kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"env": env}]}}


def _deployment() -> dict[str, Any]:
    return {"kind": "Deployment", "spec": {"template": {"spec": _pod()["spec"]}}}


def test_configmap_values_in_every_shape() -> None:
    masker = value_masker(_mask, configmaps=True)
    one = json.loads(redact_body(json.dumps(_cm()).encode(), masker))
    assert one["data"] == {"contact": "ops: j****@*****.com", "mode": "blue"}
    assert base64.b64decode(one["binaryData"]["b"]).decode() == "j****@*****.com"
    assert base64.b64decode(one["binaryData"]["raw"]) == b"wardgate:redacted"  # not text
    assert EMAIL not in one["metadata"]["annotations"][LAST_APPLIED]
    listed = redact_body(
        json.dumps({"kind": "ConfigMapList", "items": [_cm(), _cm()]}).encode(), masker
    )
    assert EMAIL.encode() not in listed
    table = {"kind": "Table", "rows": [{"cells": ["c", EMAIL, 2], "object": _cm()}]}
    shown = json.loads(redact_body(json.dumps(table).encode(), masker))
    assert shown["rows"][0]["cells"] == ["c", "j****@*****.com", 2]
    assert EMAIL not in json.dumps(shown)
    watch = WatchRedactor(1 << 20, masker)
    events = watch.feed(json.dumps({"type": "ADDED", "object": _cm()}).encode() + b"\n")
    assert EMAIL.encode() not in events and b"blue" in events
    status = {"kind": "Status", "message": "x"}
    assert json.loads(redact_body(json.dumps(status).encode(), masker)) == status
    with pytest.raises(RedactError):
        redact_body(b"not json", masker)


@pytest.mark.parametrize("obj", [_pod(), _deployment()])
def test_env_values_wherever_the_pod_spec_sits(obj: dict[str, Any]) -> None:
    out = redact_body(json.dumps(obj).encode(), value_masker(_mask, configmaps=False))
    assert EMAIL.encode() not in out and b"ADMIN" in out and b"valueFrom" in out


def test_which_requests_mask_values() -> None:
    assert masks_values(resolve("GET", "/api/v1/namespaces/a/configmaps"))
    assert masks_values(resolve("GET", "/apis/apps/v1/namespaces/a/deployments/d"))
    assert masks_values(resolve("GET", "/api/v1/namespaces/a/pods/p"))
    assert not masks_values(resolve("GET", "/api/v1/namespaces/a/pods/p/log"))
    assert not masks_values(resolve("GET", "/api/v1/namespaces/a/services"))
