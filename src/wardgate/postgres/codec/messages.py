"""Messages a PostgreSQL client (frontend) sends, as decoded by `FrontendDecoder`.

Only the fields the gateway needs are kept; the proxy forwards the original
wire bytes, so nothing here has to re-encode losslessly.
"""

from __future__ import annotations

from dataclasses import dataclass

from wardgate.pickling import quick_init

# Codes that share the untyped startup-packet framing with StartupMessage.
PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_3_2 = 196610  # (3 << 16) | 2, PostgreSQL 18
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104


@dataclass(frozen=True, slots=True)
class StartupMessage:
    # The version is passed through; whether to accept 3.2 is the caller's call.
    protocol: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    pid: int
    # 4 bytes up to protocol 3.0; protocol 3.2 allows up to 256.
    secret: bytes


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Query:
    sql: str


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_types: tuple[int, ...]


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]  # None is SQL NULL (length -1 on the wire)
    result_formats: tuple[int, ...]


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Describe:
    target: str  # "S" (statement) or "P" (portal)
    name: str


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Close:
    target: str  # "S" or "P"
    name: str


@quick_init  # built for every client message
@dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class Terminate:
    pass


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    pass


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str


@dataclass(frozen=True, slots=True)
class FunctionCall:
    # Legacy fastpath call; the gateway refuses it, so only the target is kept.
    oid: int


@dataclass(frozen=True, slots=True)
class PasswordData:
    # 'p' is PasswordMessage, SASLInitialResponse or SASLResponse depending on
    # the auth state, which only the auth code knows, so the body stays raw.
    payload: bytes


FrontendMessage = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | CopyData
    | CopyDone
    | CopyFail
    | FunctionCall
    | PasswordData
)
