"""ConfigMap values and container ``env`` values through the masking engine, for a
principal whose output is masked, in every shape the API returns them: one object, a
list, a Table (its string cells and, with ``includeObject=Object``, its objects) and
watch events (kubernetes/redact.py splits those). Keys and names stay; each value is
masked as free text by the same engine as SQL rows and SSH output (``mask_text``), so
an email becomes ``j****@*****.com`` and a token is hidden, while ``mode: blue`` stays.

Also masked: ``binaryData`` values (decoded, masked, encoded again; one that is not
UTF-8 text is replaced), and the copy of the whole manifest ``kubectl apply`` keeps in
the last-applied annotation.

Pure: data in, data out (it edits the decoded payload in place and returns it).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from wardgate.kubernetes.redact import LAST_APPLIED, REDACTED_B64, RedactError, Transform
from wardgate.policy.kubernetes import RequestInfo

# Resources whose objects hold ConfigMap data or pod templates with env values.
VALUE_RESOURCES = frozenset(
    {
        ("", "configmaps"),
        ("", "pods"),
        ("", "podtemplates"),
        ("", "replicationcontrollers"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
        ("apps", "daemonsets"),
        ("apps", "replicasets"),
        ("batch", "jobs"),
        ("batch", "cronjobs"),
        # A StatefulSet's or DaemonSet's revisions hold its pod template in `data`.
        ("apps", "controllerrevisions"),
    }
)
# Subresources that answer with the whole object (a Pod's ephemeralcontainers and
# resize return the Pod, env values and all).
WHOLE_OBJECT_SUBRESOURCES = frozenset({"", "status", "ephemeralcontainers", "resize"})

MaskText = Callable[[str], str]


def masks_values(info: RequestInfo) -> bool:
    return (
        info.api_group,
        info.resource,
    ) in VALUE_RESOURCES and info.subresource in WHOLE_OBJECT_SUBRESOURCES


def value_masker(mask_text: MaskText, configmaps: bool) -> Transform:
    """The transform of a response of a value resource (``configmaps``: its objects are
    ConfigMaps, whose ``data`` is masked; every object's env values are)."""

    def mask_values(obj: dict[str, Any]) -> None:
        if configmaps:
            _mask_data(obj, mask_text)
        _mask_env(obj, mask_text)

    def mask_object(obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        mask_values(obj)
        meta = obj.get("metadata")
        notes = meta.get("annotations") if isinstance(meta, dict) else None
        if isinstance(notes, dict) and isinstance(notes.get(LAST_APPLIED), str):
            try:
                applied = json.loads(notes[LAST_APPLIED])
            except (ValueError, RecursionError):
                notes[LAST_APPLIED] = mask_text(notes[LAST_APPLIED])
            else:
                if isinstance(applied, dict):
                    mask_values(applied)
                notes[LAST_APPLIED] = json.dumps(applied, separators=(",", ":"))

    def transform(payload: Any) -> Any:
        if not isinstance(payload, dict):
            raise RedactError("a response to mask that is not a JSON object")
        kind = payload.get("kind")
        if kind == "Status":
            return payload
        if kind == "Table":
            for row in payload.get("rows") or []:
                if not isinstance(row, dict):
                    continue
                if isinstance(row.get("cells"), list):
                    row["cells"] = [mask_text(c) if isinstance(c, str) else c for c in row["cells"]]
                mask_object(row.get("object"))
            return payload
        if isinstance(payload.get("items"), list):
            for item in payload["items"]:
                mask_object(item)
            return payload
        mask_object(payload)
        return payload

    return transform


def _mask_data(obj: dict[str, Any], mask_text: MaskText) -> None:
    data = obj.get("data")
    if isinstance(data, dict):
        obj["data"] = {k: mask_text(v) if isinstance(v, str) else v for k, v in data.items()}
    binary = obj.get("binaryData")
    if isinstance(binary, dict):
        obj["binaryData"] = {k: _mask_b64(v, mask_text) for k, v in binary.items()}


def _mask_b64(value: Any, mask_text: MaskText) -> Any:
    if not isinstance(value, str):
        return value
    try:
        text = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return REDACTED_B64  # bytes the engine cannot read: not passed on
    return base64.b64encode(mask_text(text).encode()).decode()


def _mask_env(obj: dict[str, Any], mask_text: MaskText) -> None:
    """Every ``env: [{name, value}]`` list anywhere in the object (pod specs sit at
    different depths in a Pod, a Deployment, a CronJob)."""
    stack: list[Any] = [obj]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                if key == "env" and isinstance(child, list):
                    for var in child:
                        if isinstance(var, dict) and isinstance(var.get("value"), str):
                            var["value"] = mask_text(var["value"])
                else:
                    stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)
