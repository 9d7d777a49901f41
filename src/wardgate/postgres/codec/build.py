"""Encoders: typed values in, wire bytes out, for both directions.

Backend messages are what the gateway says to its clients (as if it were the
server); frontend messages are what it says to the upstream PostgreSQL server
(as if it were a client).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from wardgate.postgres.codec import messages as m

_INT16 = struct.Struct("!h")
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_STARTUP_CODE = struct.Struct("!ii")


def _typed(kind: bytes, body: bytes = b"") -> bytes:
    # The length word counts itself but not the type byte.
    return kind + _INT32.pack(len(body) + 4) + body


def _cstr(text: str | bytes) -> bytes:
    # bytes go as they are: a client may speak any client_encoding (tests send SJIS).
    data = text.encode("utf-8") if isinstance(text, str) else text
    if b"\0" in data:
        # A NUL would end the string early and shift every later field.
        raise ValueError("PostgreSQL strings cannot contain NUL")
    return data + b"\0"


def _auth(code: int, data: bytes = b"") -> bytes:
    return _typed(b"R", _INT32.pack(code) + data)


# --- backend messages (gateway -> client) ---------------------------------


def auth_ok() -> bytes:
    return _auth(0)


def auth_cleartext_password() -> bytes:
    return _auth(3)


def auth_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("md5 salt must be 4 bytes")
    return _auth(5, salt)


def auth_sasl(mechanisms: list[str]) -> bytes:
    return _auth(10, b"".join(_cstr(name) for name in mechanisms) + b"\0")


def auth_sasl_continue(data: bytes) -> bytes:
    return _auth(11, data)


def auth_sasl_final(data: bytes) -> bytes:
    return _auth(12, data)


def parameter_status(name: str, value: str) -> bytes:
    return _typed(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, secret: bytes) -> bytes:
    return _typed(b"K", _INT32.pack(pid) + secret)


def ready_for_query(status: bytes) -> bytes:
    if status not in (b"I", b"T", b"E"):
        raise ValueError("transaction status must be b'I', b'T' or b'E'")
    return _typed(b"Z", status)


def _fields(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> bytes:
    if len(sqlstate) != 5:
        raise ValueError("SQLSTATE must be 5 characters")
    # S is the possibly-localized severity, V the fixed one libpq prefers.
    parts = [b"S" + _cstr(severity), b"V" + _cstr(severity), b"C" + _cstr(sqlstate)]
    parts.append(b"M" + _cstr(message))
    if detail is not None:
        parts.append(b"D" + _cstr(detail))
    if hint is not None:
        parts.append(b"H" + _cstr(hint))
    return b"".join(parts) + b"\0"


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
    position: int | None = None,
) -> bytes:
    fields = _fields(severity, sqlstate, message, detail, hint)
    if position is not None:  # P: 1-based character index into the query string
        fields = fields[:-1] + b"P" + _cstr(str(position)) + b"\0"
    return _typed(b"E", fields)


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    return _typed(b"N", _fields(severity, sqlstate, message, detail, hint))


def ssl_accept() -> bytes:
    return b"S"


def ssl_refuse() -> bytes:
    return b"N"


# --- frontend messages (gateway -> upstream server) -----------------------


def startup_message(params: dict[str, str], protocol: int = m.PROTOCOL_3_0) -> bytes:
    body = b"".join(_cstr(k) + _cstr(v) for k, v in params.items()) + b"\0"
    return _STARTUP_CODE.pack(len(body) + 8, protocol) + body


def ssl_request() -> bytes:
    return _STARTUP_CODE.pack(8, m.SSL_REQUEST_CODE)


def cancel_request(pid: int, secret: bytes) -> bytes:
    return _STARTUP_CODE.pack(12 + len(secret), m.CANCEL_REQUEST_CODE) + _INT32.pack(pid) + secret


def password_message(password: str | bytes) -> bytes:
    data = password.encode("utf-8") if isinstance(password, str) else password
    if b"\0" in data:
        raise ValueError("password cannot contain NUL")
    return _typed(b"p", data + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return _typed(b"p", _cstr(mechanism) + _INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    return _typed(b"p", data)


def query(sql: str | bytes) -> bytes:
    return _typed(b"Q", _cstr(sql))


def parse(name: str, sql: str | bytes, param_types: tuple[int, ...] = ()) -> bytes:
    types = struct.pack(f"!H{len(param_types)}I", len(param_types), *param_types)
    return _typed(b"P", _cstr(name) + _cstr(sql) + types)


def _format_codes(codes: Sequence[int]) -> bytes:
    if len(codes) > 0xFFFF:
        raise ValueError("PostgreSQL takes at most 65535 format codes")
    if any(code not in (0, 1) for code in codes):
        raise ValueError("format codes are 0 (text) or 1 (binary)")
    return _UINT16.pack(len(codes)) + b"".join(_INT16.pack(code) for code in codes)


def bind(
    portal: str,
    statement: str,
    params: Sequence[str | bytes | None] = (),
    param_formats: Sequence[int] = (),
    result_formats: Sequence[int] = (),
) -> bytes:
    """Bind ``params`` (str as UTF-8, bytes as they are, None as NULL) to ``statement``.

    Format codes follow PostgreSQL's rule: none (all text), one for all, or one each.
    """
    if len(params) > 0xFFFF:
        raise ValueError("PostgreSQL takes at most 65535 parameters")
    if len(param_formats) > 1 and len(param_formats) != len(params):
        raise ValueError("give no parameter format, one for all, or one per parameter")
    parts = [_cstr(portal), _cstr(statement), _format_codes(param_formats)]
    parts.append(_UINT16.pack(len(params)))
    for value in params:
        if value is None:
            parts.append(_INT32.pack(-1))
        else:
            data = value.encode("utf-8") if isinstance(value, str) else value
            parts.append(_INT32.pack(len(data)) + data)
    parts.append(_format_codes(result_formats))
    return _typed(b"B", b"".join(parts))


def describe(target: str, name: str) -> bytes:
    """Describe a prepared statement (target "S") or a portal ("P")."""
    if target not in ("S", "P"):
        raise ValueError("describe target must be 'S' or 'P'")
    return _typed(b"D", target.encode("ascii") + _cstr(name))


def execute(portal: str, max_rows: int = 0) -> bytes:
    """Run ``portal``; ``max_rows`` 0 returns every row."""
    if not 0 <= max_rows <= 0x7FFFFFFF:
        raise ValueError("max_rows must be between 0 (no limit) and 2147483647")
    return _typed(b"E", _cstr(portal) + _INT32.pack(max_rows))


def close(target: str, name: str) -> bytes:
    """Close a prepared statement (target "S") or a portal ("P")."""
    if target not in ("S", "P"):
        raise ValueError("close target must be 'S' or 'P'")
    return _typed(b"C", target.encode("ascii") + _cstr(name))


def flush() -> bytes:
    return b"H\x00\x00\x00\x04"


def copy_fail(reason: str) -> bytes:
    return _typed(b"f", _cstr(reason))


def sync() -> bytes:
    return b"S\x00\x00\x00\x04"


def terminate() -> bytes:
    return b"X\x00\x00\x00\x04"


def md5_password(user: str, password: str, salt: bytes) -> str:
    """PostgreSQL's md5 response: "md5" + md5(md5(password + user) + salt), hex."""
    inner = hashlib.md5((password + user).encode("utf-8"), usedforsecurity=False).hexdigest()
    digest = hashlib.md5(inner.encode("ascii") + salt, usedforsecurity=False).hexdigest()
    return "md5" + digest
