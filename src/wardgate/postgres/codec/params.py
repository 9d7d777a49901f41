"""Bound parameters as text, for the policy, the reviewer and the audit log.

Text-format values are already text. Binary values are decoded for the common types
whose OID the client declared in Parse, only when the bytes are exactly what the type's
binary form allows; anything else is shown as hex (``\\x...``, PostgreSQL's bytea
notation), so what a human reads is what the server reads. Nothing is shortened here:
approvals bind every byte (``binding_digest``); surfaces that must be short cut the text
themselves and say so.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable

BOOL = 16


def _bool(b: bytes) -> str:
    if b == b"\x01":
        return "true"
    if b == b"\x00":
        return "false"
    raise ValueError("not 0 or 1")  # PostgreSQL reads any other byte as true: show the byte


def _fixed(size: int, fmt: str, show: Callable[[object], str] = str) -> Callable[[bytes], str]:
    """A fixed-size binary number: any other length is not this type's binary form."""

    def decode(b: bytes) -> str:
        if len(b) != size:
            raise ValueError(f"{len(b)} bytes, not {size}")
        return show(struct.unpack(fmt, b)[0])

    return decode


def _uuid(b: bytes) -> str:
    if len(b) != 16:
        raise ValueError("a uuid is 16 bytes")
    return str(uuid.UUID(bytes=b))


_BINARY_DECODERS: dict[int, Callable[[bytes], str]] = {
    BOOL: _bool,
    20: _fixed(8, "!q"),
    21: _fixed(2, "!h"),
    23: _fixed(4, "!i"),
    26: _fixed(4, "!I"),
    700: _fixed(4, "!f", repr),
    701: _fixed(8, "!d", repr),
    25: lambda b: b.decode("utf-8"),
    1043: lambda b: b.decode("utf-8"),
    1042: lambda b: b.decode("utf-8"),
    19: lambda b: b.decode("utf-8"),
    2950: _uuid,
}


def describe_param(value: bytes | None, fmt: int, oid: int, encoding: str = "utf-8") -> str | None:
    """``encoding``: the session's client encoding, which text-format values are in."""
    if value is None:
        return None
    if fmt == 0:
        return value.decode(encoding, "replace")
    decoder = _BINARY_DECODERS.get(oid)
    if decoder is not None:
        try:
            return decoder(value)
        except (struct.error, ValueError):
            pass
    return "\\x" + value.hex()


def _format(formats: tuple[int, ...], i: int) -> int:
    return formats[0] if len(formats) == 1 else (formats[i] if i < len(formats) else 0)


def describe_params(
    values: tuple[bytes | None, ...],
    formats: tuple[int, ...],
    types: tuple[int, ...],
    encoding: str = "utf-8",
) -> tuple[str | None, ...]:
    """All parameters of a Bind, given the formats of the Bind and the types of the Parse."""
    if not any(formats):  # all text (the common case): each is its own decoded bytes
        return tuple(None if v is None else v.decode(encoding, "replace") for v in values)
    return tuple(
        describe_param(value, _format(formats, i), types[i] if i < len(types) else 0, encoding)
        for i, value in enumerate(values)
    )


def ambiguous_params(
    values: tuple[bytes | None, ...], formats: tuple[int, ...], types: tuple[int, ...]
) -> list[str]:
    """Parameters whose bytes a human could read differently from the server, each as
    ``$n: why``. Today: a binary bool other than 0 or 1, which PostgreSQL reads as true."""
    out = []
    for i, value in enumerate(values):
        oid = types[i] if i < len(types) else 0
        if value is not None and _format(formats, i) == 1 and oid == BOOL and len(value) == 1:
            if value not in (b"\x00", b"\x01"):
                out.append(
                    f"${i + 1} is the binary bool byte 0x{value.hex()}, which PostgreSQL reads as true"
                )
    return out


def binding_digest(
    values: tuple[bytes | None, ...], formats: tuple[int, ...], types: tuple[int, ...]
) -> str:
    """sha256 of every parameter's exact bytes with its format and declared type: what an
    approval binds besides the statement (two Binds differing anywhere never share it)."""
    parts = []
    for i, value in enumerate(values):
        oid = types[i] if i < len(types) else 0
        parts.append(f"{i}:{_format(formats, i)}:{oid}:".encode())
        parts.append(b"N" if value is None else b"V" + len(value).to_bytes(8, "big") + value)
    return hashlib.sha256(b"".join(parts)).hexdigest()
