"""Bound parameters as text, for the audit log and the policy.

Text-format values are already text. Binary values are decoded for the common
types whose OID the client declared in Parse; anything else is shown as hex
(``\\x...``, PostgreSQL's bytea notation), so the record stays faithful.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

MAX_PARAM_CHARS = 1024

_BINARY_DECODERS: dict[int, Callable[[bytes], str]] = {
    16: lambda b: "true" if b == b"\x01" else "false",
    20: lambda b: str(struct.unpack("!q", b)[0]),
    21: lambda b: str(struct.unpack("!h", b)[0]),
    23: lambda b: str(struct.unpack("!i", b)[0]),
    26: lambda b: str(struct.unpack("!I", b)[0]),
    700: lambda b: repr(struct.unpack("!f", b)[0]),
    701: lambda b: repr(struct.unpack("!d", b)[0]),
    25: lambda b: b.decode("utf-8"),
    1043: lambda b: b.decode("utf-8"),
    1042: lambda b: b.decode("utf-8"),
    19: lambda b: b.decode("utf-8"),
    2950: lambda b: str(uuid.UUID(bytes=b)),
}


def _clip(text: str) -> str:
    return text if len(text) <= MAX_PARAM_CHARS else text[:MAX_PARAM_CHARS] + "…"


def describe_param(value: bytes | None, fmt: int, oid: int) -> str | None:
    if value is None:
        return None
    if fmt == 0:
        return _clip(value.decode("utf-8", "replace"))
    decoder = _BINARY_DECODERS.get(oid)
    if decoder is not None:
        try:
            return _clip(decoder(value))
        except (struct.error, ValueError):
            pass
    return _clip("\\x" + value[: MAX_PARAM_CHARS // 2].hex())


def describe_params(
    values: tuple[bytes | None, ...], formats: tuple[int, ...], types: tuple[int, ...]
) -> tuple[str | None, ...]:
    """All parameters of a Bind, given the formats of the Bind and the types of the Parse."""
    out = []
    for i, value in enumerate(values):
        fmt = formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)
        oid = types[i] if i < len(types) else 0
        out.append(describe_param(value, fmt, oid))
    return tuple(out)
