"""Dialling the real PostgreSQL server with the credential the gateway holds.

The credential is resolved here, used for the handshake, and dropped. Nothing
the upstream says about authentication is passed on to the client.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path

from wardgate.config import Config, ConnectionConfig
from wardgate.identity.scram import ScramAuthError, ScramClient
from wardgate.metrics import timed_dial
from wardgate.postgres import backends
from wardgate.postgres.codec import build
from wardgate.postgres.codec.decode import (
    parse_auth_request,
    parse_backend_key_data,
    parse_data_row,
    parse_error_fields,
    parse_parameter_status,
    parse_sasl_mechanisms,
)
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.versions import unsupported_version
from wardgate.postgres.wire import ConnectionClosed, UpstreamSide
from wardgate.vault.secrets import Vault, resolve_secret

log = logging.getLogger("wardgate.upstream")


class UpstreamUnavailable(Exception):
    """The upstream could not be reached or refused us. `reason` is safe to show a client."""

    def __init__(self, reason: str, sqlstate: str = "08006") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sqlstate = sqlstate


@dataclass
class Upstream:
    side: UpstreamSide
    pid: int
    secret: bytes
    tls: bool
    parameter_status: list[bytes] = field(default_factory=list)  # raw ParameterStatus messages
    parameters: dict[str, str] = field(default_factory=dict)  # as reported by the server
    notices: list[bytes] = field(default_factory=list)
    backend: backends.Backend | None = None  # as the ledger knows it (dial_connection)


@timed_dial("postgres")
async def dial_connection(
    config: Config, vault: Vault, name: str, params: dict[str, str], *, max_message_bytes: int
) -> Upstream:
    """Resolve connection ``name``'s credential (in a thread: it may read the store) and
    dial it. Raises SecretError (the credential cannot be read) or UpstreamUnavailable."""
    conn = config.connections[name]
    up = conn.pg
    password = (
        await asyncio.to_thread(resolve_secret, up.password, vault, base_dir=Path(config.base_dir))
        if up.password
        else None
    )
    try:
        upstream = await dial(
            conn,
            password,
            params,
            connect_timeout=config.limits.connect_timeout,
            max_message_bytes=max_message_bytes,
            ca_path=str(config.path(up.ca)) if up.ca else None,
        )
    finally:
        del password
    sockname = upstream.side.transport.get_extra_info("sockname")
    port = sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else -1
    upstream.backend = backends.Backend(
        name, upstream.pid, port, upstream.secret, up.host, up.port, time.time()
    )
    if backends.ledger is not None:
        # Noted before anything is sent to it: should this worker die, the others end
        # it before they trust their catalogue again (backends.py).
        upstream.side.on_lost = backends.ledger.opened(upstream.backend)
    return upstream


async def dial(
    conn: ConnectionConfig,
    password: str | None,
    params: dict[str, str],
    *,
    connect_timeout: float,
    max_message_bytes: int,
    ca_path: str | None,
) -> Upstream:
    """Connect, negotiate TLS and authenticate; return once the server is ready for queries."""
    up = conn.pg
    loop = asyncio.get_running_loop()
    where = f"{up.host}:{up.port}"
    try:
        _, side = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamSide(max_message_bytes), up.host, up.port),
            connect_timeout,
        )
    except (OSError, TimeoutError) as exc:
        log.warning("cannot reach upstream %s: %s", where, exc)
        raise UpstreamUnavailable("its database server is not reachable") from None
    try:
        return await asyncio.wait_for(
            _handshake(side, conn, password, params, ca_path), connect_timeout
        )
    except (UpstreamUnavailable, asyncio.CancelledError):
        side.close()  # cancelled too: the client's startup timeout ran out mid-handshake
        raise
    except (TimeoutError, ConnectionClosed, ProtocolError, OSError) as exc:
        side.close()
        log.warning("upstream %s handshake failed: %s", where, exc)
        raise UpstreamUnavailable("its database server did not complete the connection") from None


def upstream_context(mode: str, ca: Path | None) -> ssl.SSLContext:
    """libpq's sslmode semantics: prefer/require encrypt only; verify-* check the server."""
    if mode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        ctx.check_hostname = mode == "verify-full"
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _handshake(
    side: UpstreamSide,
    conn: ConnectionConfig,
    password: str | None,
    params: dict[str, str],
    ca_path: str | None,
) -> Upstream:
    up = conn.pg
    tls = False
    if up.tls != "disable":
        side.write(build.ssl_request())
        answer = await side.read_raw_byte()
        if answer == ord("S"):
            from pathlib import Path

            ctx = upstream_context(up.tls, Path(ca_path) if ca_path else None)
            loop = asyncio.get_running_loop()
            try:
                new_transport = await loop.start_tls(
                    side.transport,
                    side,
                    ctx,
                    server_hostname=up.host if up.tls == "verify-full" else None,
                )
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                log.warning("TLS to upstream %s:%s failed: %s", up.host, up.port, exc)
                raise UpstreamUnavailable("TLS to its database server failed") from None
            assert new_transport is not None
            side.transport = new_transport
            tls = True
        elif up.tls != "prefer":
            raise UpstreamUnavailable(
                "its database server does not offer TLS, which the connection requires"
            )
    startup = {**params, "user": up.user, "database": up.database}
    side.write(build.startup_message(startup))
    scram: ScramClient | None = None
    scram_verified = False
    result = Upstream(side, 0, b"", tls)
    while True:
        msg = await side.read()
        t = chr(msg.type)
        if t == "R":
            auth = parse_auth_request(msg.body)
            if auth.code == 0:
                if scram is not None and not scram_verified:
                    # SCRAM begun but AuthenticationOk without SASLFinal: the server never
                    # proved it knows the password. PostgreSQL never does this; an impostor does.
                    log.warning("upstream %s:%s skipped the SCRAM server proof", up.host, up.port)
                    raise UpstreamUnavailable("its database server failed to prove its identity")
                continue
            if password is None:
                log.warning(
                    "upstream %s:%s asks for a password and none is configured", up.host, up.port
                )
                raise UpstreamUnavailable("the gateway holds no valid credential for it")
            if auth.code == 3:
                side.write(build.password_message(password))
            elif auth.code == 5:
                side.write(build.password_message(build.md5_password(up.user, password, auth.data)))
            elif auth.code == 10:
                if "SCRAM-SHA-256" not in parse_sasl_mechanisms(auth.data):
                    raise UpstreamUnavailable(
                        "its database server offers no supported authentication"
                    )
                scram = ScramClient(password)
                side.write(build.sasl_initial_response(ScramClient.mechanism, scram.client_first()))
            elif auth.code == 11 and scram is not None:
                try:
                    reply = await asyncio.to_thread(scram.handle_server_first, auth.data)
                    side.write(build.sasl_response(reply))
                except ScramAuthError:
                    raise UpstreamUnavailable(
                        "authentication to its database server failed"
                    ) from None
            elif auth.code == 12 and scram is not None:
                try:
                    scram.verify_server_final(auth.data)
                except ScramAuthError:
                    raise UpstreamUnavailable(
                        "its database server failed to prove its identity"
                    ) from None
                scram_verified = True
            else:
                raise UpstreamUnavailable(
                    "its database server asks for an unsupported authentication method"
                )
        elif t == "E":
            fields = parse_error_fields(msg.body)
            log.warning(
                "upstream %s:%s refused the connection: %s %s",
                up.host,
                up.port,
                fields.sqlstate,
                fields.message,
            )
            if fields.sqlstate in ("28P01", "28000"):
                raise UpstreamUnavailable(
                    "its database server rejected the gateway's stored credential"
                )
            if fields.sqlstate in ("53300", "57P03"):
                raise UpstreamUnavailable(
                    f"its database server is busy or starting ({fields.message})", fields.sqlstate
                )
            raise UpstreamUnavailable(f"its database server refused the session: {fields.message}")
        elif t == "S":
            result.parameter_status.append(msg.raw)
            name, value = parse_parameter_status(msg.body)
            result.parameters[name] = value
        elif t == "K":
            result.pid, result.secret = parse_backend_key_data(msg.body)
        elif t == "N":
            result.notices.append(msg.raw)
        elif t == "Z":
            problem = unsupported_version(result.parameters.get("server_version", "?"))
            if problem is not None and not up.allow_unsupported_version:
                log.warning("upstream %s:%d refused: %s", up.host, up.port, problem)
                raise UpstreamUnavailable(problem)
            return result
        elif t == "v":
            continue  # NegotiateProtocolVersion: we asked for 3.0, nothing to adjust
        else:
            raise ProtocolError(f"unexpected message {t!r} during upstream startup")


# What an unqualified name means in the session (column masking, mask_path.py).
NAMES_SQL = "SELECT pg_catalog.current_setting('search_path'), CURRENT_USER::pg_catalog.text"


async def session_names(
    side: UpstreamSide,
    timeout: float,  # noqa: ASYNC109 - one exchange's bound, like internal sessions'
    encoding: str,
) -> tuple[str, str] | None:
    """The search_path and user a new session starts with, as its server says, asked in
    the session itself before the client's first message (startup options, role and
    database defaults all applied); None when it did not answer so in ``timeout``."""
    side.write(build.query(NAMES_SQL))
    row: tuple[bytes | None, ...] | None = None
    failed = False
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await side.read()
                t = chr(msg.type)
                if t == "D":
                    row = parse_data_row(msg.body)
                elif t == "E":
                    failed = True
                elif t == "Z":
                    break
                elif t not in "TCNS":
                    raise ProtocolError(f"unexpected message {t!r} answering the gateway")
    except TimeoutError:
        return None
    if failed or row is None or len(row) != 2 or row[0] is None or row[1] is None:
        return None
    try:
        return row[0].decode(encoding), row[1].decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


async def send_cancel(host: str, port: int, pid: int, secret: bytes) -> None:
    """Forward a cancel request; PostgreSQL answers by closing the socket.
    The caller bounds it with asyncio.timeout."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(build.cancel_request(pid, secret))
        await writer.drain()
        await reader.read(1)
    finally:
        writer.close()
