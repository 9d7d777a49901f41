"""Secret values hidden from principals whose output is masked, in every shape the API
returns a Secret: one object, a list (whose items carry no kind), a Table (``kubectl
get`` asks for one; its rows hold the object or its metadata) and watch events, one JSON
object per line. Keys stay visible (a reviewer or agent can see what a Secret holds);
values do not, nor the copy ``kubectl apply`` keeps in an annotation.

Pure: bytes or data in, data out.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

REDACTED = "wardgate:redacted"
REDACTED_B64 = base64.b64encode(REDACTED.encode()).decode()
# kubectl apply keeps the whole manifest (Secret data included) in this annotation.
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


class RedactError(ValueError):
    """A response the gateway must redact but cannot read: never passed on."""


def redact_secret(obj: dict[str, Any]) -> None:
    """One Secret's values hidden, in place (its keys stay)."""
    data = obj.get("data")
    if isinstance(data, dict):
        obj["data"] = {k: REDACTED_B64 for k in data}
    elif data is not None:
        obj["data"] = {}
    string_data = obj.get("stringData")
    if isinstance(string_data, dict):
        obj["stringData"] = {k: REDACTED for k in string_data}
    elif string_data is not None:
        obj["stringData"] = {}
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        notes = meta.get("annotations")
        if isinstance(notes, dict) and LAST_APPLIED in notes:
            notes[LAST_APPLIED] = REDACTED


def redact_payload(payload: Any) -> Any:
    """``payload`` (a decoded response of a secrets request) with every value hidden.
    Shapes it does not know are refused rather than passed on."""
    if not isinstance(payload, dict):
        raise RedactError("a secrets response that is not a JSON object")
    kind = payload.get("kind")
    if kind == "Status":
        return payload
    if kind == "Table":
        for row in payload.get("rows") or []:
            if isinstance(row, dict) and isinstance(row.get("object"), dict):
                redact_secret(row["object"])
        return payload
    if isinstance(payload.get("items"), list):
        for item in payload["items"]:
            if isinstance(item, dict):
                redact_secret(item)
        return payload
    if kind in ("Secret", None) or "data" in payload or "stringData" in payload:
        redact_secret(payload)
        return payload
    if kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
        redact_secret(payload)
        return payload
    raise RedactError(f"a secrets response of kind {kind!r}")


# A decoded response in, the response to send out (Secrets: redact_payload; ConfigMap
# and env values: kubernetes/values.py). Raises RedactError for what it cannot read.
Transform = Callable[[Any], Any]


def redact_body(body: bytes, transform: Transform = redact_payload) -> bytes:
    try:
        payload = json.loads(body)
    except ValueError:
        raise RedactError("a response to mask that is not JSON") from None
    return json.dumps(transform(payload), separators=(",", ":")).encode()


def redact_watch_line(line: bytes, transform: Transform = redact_payload) -> bytes:
    """One watch event (``{"type": ..., "object": ...}``), its object redacted."""
    if not line.strip():
        return line
    try:
        event = json.loads(line)
    except ValueError:
        raise RedactError("a watch event that is not JSON") from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        raise RedactError("a watch event without an object")
    event["object"] = transform(event["object"])
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


class WatchRedactor:
    """Splits a watch stream into lines (bounded) and redacts each event."""

    def __init__(self, max_line: int, transform: Transform = redact_payload) -> None:
        self._buffer = b""
        self._max_line = max_line
        self._transform = transform

    def feed(self, chunk: bytes) -> bytes:
        self._buffer += chunk
        out: list[bytes] = []
        while (nl := self._buffer.find(b"\n")) >= 0:
            line, self._buffer = self._buffer[: nl + 1], self._buffer[nl + 1 :]
            out.append(redact_watch_line(line, self._transform))
        if len(self._buffer) > self._max_line:
            raise RedactError("a watch event larger than the gateway's limit")
        return b"".join(out)

    def end(self) -> bytes:
        rest, self._buffer = self._buffer, b""
        return redact_watch_line(rest, self._transform) if rest.strip() else b""
