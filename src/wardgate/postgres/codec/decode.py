"""Small decoders for message bodies: a bounds-checked reader plus the
backend messages the gateway has to understand when it talks to PostgreSQL.

A body is the bytes after the type byte and the length word. Every function
raises `ProtocolError`, and nothing else, for a malformed body.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wardgate.postgres.codec.errors import ProtocolError

_INT16 = struct.Struct("!h")
_UINT16 = struct.Struct("!H")
_INT32 = struct.Struct("!i")
_UINT32 = struct.Struct("!I")

# The frontend decoder's direct parsers fail in these same words (see frontend.py).
SHORT_BODY = "message body is shorter than its fields"
UNTERMINATED = "string is not NUL-terminated"
TRAILING_BYTES = "trailing bytes after the last field"


def invalid_text(encoding: str) -> ProtocolError:
    return ProtocolError(f"string is not valid {encoding}")


class BodyReader:
    """Cursor over `data[start:end]` that refuses to read past the end.

    PostgreSQL rejects a message whose declared fields do not use up the body
    exactly (``pq_getmsgend``); `finish` is that check.
    """

    __slots__ = ("_data", "_pos", "_end", "_encoding", "_errors")

    def __init__(
        self,
        data: bytes,
        start: int = 0,
        end: int | None = None,
        encoding: str = "utf-8",
        errors: str = "strict",
    ) -> None:
        self._data = data
        self._pos = start
        self._end = len(data) if end is None else end
        self._encoding = encoding
        self._errors = errors

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    def _need(self, n: int) -> int:
        pos = self._pos
        if n < 0 or pos + n > self._end:
            raise ProtocolError(SHORT_BODY)
        self._pos = pos + n
        return pos

    def cstr(self) -> str:
        data, pos = self._data, self._pos
        nul = data.find(b"\0", pos, self._end)
        if nul < 0:
            raise ProtocolError(UNTERMINATED)
        self._pos = nul + 1
        try:
            return data[pos:nul].decode(self._encoding, self._errors)
        except UnicodeDecodeError:
            raise invalid_text(self._encoding) from None

    def byte(self) -> int:
        return self._data[self._need(1)]

    def int16(self) -> int:
        return int(_INT16.unpack_from(self._data, self._need(2))[0])

    def uint16(self) -> int:
        return int(_UINT16.unpack_from(self._data, self._need(2))[0])

    def int32(self) -> int:
        return int(_INT32.unpack_from(self._data, self._need(4))[0])

    def uint32(self) -> int:
        return int(_UINT32.unpack_from(self._data, self._need(4))[0])

    def take(self, n: int) -> bytes:
        pos = self._need(n)
        return self._data[pos : pos + n]

    def rest(self) -> bytes:
        return self.take(self._end - self._pos)

    def finish(self) -> None:
        if self._pos != self._end:
            raise ProtocolError(TRAILING_BYTES)


def _reader(body: bytes | memoryview) -> BodyReader:
    # What the server says is only shown and recorded: a character that does not
    # decode (the session's client_encoding is not UTF-8) must not end the session.
    return BodyReader(bytes(body), errors="replace")


@dataclass(frozen=True, slots=True)
class ErrorFields:
    severity: str
    sqlstate: str
    message: str
    detail: str | None
    hint: str | None
    fields: dict[str, str]  # every field by its one-letter code, including the above


def parse_error_fields(body: bytes | memoryview) -> ErrorFields:
    """Decode an ErrorResponse ('E') or NoticeResponse ('N') body."""
    r = _reader(body)
    fields: dict[str, str] = {}
    while True:
        code = r.byte()
        if code == 0:
            break
        fields[chr(code)] = r.cstr()
    r.finish()
    # 'V' is the untranslated severity (9.6+); 'S' may be localized.
    severity = fields.get("V") or fields.get("S")
    sqlstate = fields.get("C")
    message = fields.get("M")
    if severity is None or sqlstate is None or message is None:
        raise ProtocolError("error response lacks severity, code or message")
    return ErrorFields(severity, sqlstate, message, fields.get("D"), fields.get("H"), fields)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    # 0 ok, 3 cleartext, 5 md5 (data = 4-byte salt), 10 SASL (data = mechanism
    # list), 11 SASL continue, 12 SASL final; other codes carry their raw data.
    code: int
    data: bytes


AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12


def parse_auth_request(body: bytes | memoryview) -> AuthRequest:
    r = _reader(body)
    code = r.int32()
    data = r.rest()
    if code in (AUTH_OK, AUTH_CLEARTEXT) and data:
        raise ProtocolError(f"authentication request {code} carries unexpected data")
    if code == AUTH_MD5 and len(data) != 4:
        raise ProtocolError("md5 authentication request needs a 4-byte salt")
    return AuthRequest(code, data)


def parse_sasl_mechanisms(data: bytes) -> list[str]:
    """Decode the AuthenticationSASL mechanism list: names, each NUL-terminated, then a NUL."""
    r = BodyReader(bytes(data))
    mechanisms: list[str] = []
    while True:
        name = r.cstr()
        if not name:
            break
        mechanisms.append(name)
    r.finish()
    return mechanisms


def parse_backend_key_data(body: bytes | memoryview) -> tuple[int, bytes]:
    r = _reader(body)
    pid = r.int32()
    secret = r.rest()
    # 4 bytes up to protocol 3.0; protocol 3.2 allows up to 256.
    if not 4 <= len(secret) <= 256:
        raise ProtocolError("cancel key has an invalid length")
    return pid, secret


def parse_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    r = _reader(body)
    name = r.cstr()
    value = r.cstr()
    r.finish()
    return name, value


def parse_command_tag(body: bytes | memoryview) -> tuple[str, int | None]:
    """Split a CommandComplete tag into its command and row count.

    ``INSERT oid rows`` carries a legacy OID before the count; the last number
    is always the row count. Tags without a trailing number yield ``None``.
    """
    key = bytes(body)
    known = _TAGS.get(key)
    if known is not None:
        return known
    r = BodyReader(key, errors="replace")
    tag = r.cstr()
    r.finish()
    parts = tag.split(" ")
    if len(parts) < 2 or not _is_number(parts[-1]):
        result: tuple[str, int | None] = (tag, None)
    elif parts[0] == "INSERT" and len(parts) == 3 and _is_number(parts[1]):
        result = ("INSERT", int(parts[-1]))
    else:
        result = (" ".join(parts[:-1]), int(parts[-1]))
    if len(_TAGS) < _TAGS_KEPT:
        _TAGS[key] = result
    return result


# Every statement's answer ends in a tag, and most are the same few (``SELECT 1``,
# ``INSERT 0 1``, ``BEGIN``): the first ones seen are kept, read once.
_TAGS: dict[bytes, tuple[str, int | None]] = {}
_TAGS_KEPT = 1024


def _is_number(text: str) -> bool:
    # str.isdigit alone accepts non-ASCII digits that int() may reject.
    return text.isascii() and text.isdigit()


def parse_data_row(body: bytes | memoryview) -> tuple[bytes | None, ...]:
    """Split a DataRow ('D') body into its values, None for NULL (length -1).

    Values stay bytes: only the caller knows each column's format and the session's
    encoding.
    """
    r = BodyReader(bytes(body))
    count = r.int16()
    if count < 0:
        raise ProtocolError(f"invalid column count {count}")
    # Every value has at least its length word: a large count on a short body fails
    # here instead of after a long loop.
    if r.remaining < 4 * count:
        raise ProtocolError(f"data row is shorter than its {count} values")
    values: list[bytes | None] = []
    for _ in range(count):
        size = r.int32()
        if size == -1:
            values.append(None)
        elif size < 0:
            raise ProtocolError(f"invalid value length {size}")
        else:
            values.append(r.take(size))
    r.finish()
    return tuple(values)


def parse_ready_for_query(body: bytes | memoryview) -> bytes:
    status = bytes(body)
    if status not in (b"I", b"T", b"E"):
        raise ProtocolError("invalid transaction status in ReadyForQuery")
    return status


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a RowDescription."""

    name: str
    table_oid: int
    attnum: int
    type_oid: int
    format: int


_RD_COLUMN = struct.Struct("!IhIhih")  # table oid, attnum, type oid, size, modifier, format


def parse_row_description(body: bytes) -> list[Column]:
    """The columns of a RowDescription (T) body."""
    try:
        (count,) = struct.unpack_from("!h", body, 0)
        pos = 2
        columns = []
        for _ in range(count):
            nul = body.index(b"\0", pos)
            name = body[pos:nul].decode("utf-8", "replace")
            table, attnum, type_oid, _len, _mod, fmt = _RD_COLUMN.unpack_from(body, nul + 1)
            pos = nul + 1 + _RD_COLUMN.size
            columns.append(Column(name, table, attnum, type_oid, fmt))
        return columns
    except (struct.error, ValueError):
        raise ProtocolError("server sent a malformed RowDescription") from None
