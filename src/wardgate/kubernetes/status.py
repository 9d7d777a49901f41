"""Refusals said the way the API server says them: a ``Status`` object (kubectl prints
``Error from server (Forbidden): <message>``), with the deciding rule and, for a held
request, the review id and where to approve it."""

from __future__ import annotations

import json
from typing import Any

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    429: "TooManyRequests",
    501: "NotImplemented",
    502: "InternalError",
    503: "ServiceUnavailable",
}


def status_body(
    code: int,
    message: str,
    *,
    causes: list[dict[str, str]] | None = None,
    retry_after: int | None = None,
) -> bytes:
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(code, "InternalError"),
        "code": code,
    }
    details: dict[str, Any] = {}
    if causes:
        details["causes"] = causes
    if retry_after is not None:
        details["retryAfterSeconds"] = retry_after
    if details:
        status["details"] = details
    return json.dumps(status, separators=(",", ":")).encode()
