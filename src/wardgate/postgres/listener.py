"""Accepting PostgreSQL clients: TLS, authentication with wardgate tokens (startup.py),
dialling upstream, then handing the session to the relay."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.exc import SQLAlchemyError

from wardgate.audit.records import AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_HINT, SessionRecord
from wardgate.policy.encodings import python_codec, reported_setting_problem
from wardgate.postgres.cancel_registry import CancelRegistry, LocalKey
from wardgate.postgres.catalog_watch import CatalogWatch
from wardgate.postgres.codec import build
from wardgate.postgres.codec import messages as m
from wardgate.postgres.codec.errors import ProtocolError
from wardgate.postgres.codec.frontend import FrontendDecoder
from wardgate.postgres.commit_barrier import CommitBarrier
from wardgate.postgres.mask_catalog import CatalogUnavailable, MaskCatalogs
from wardgate.postgres.mask_path import SessionPaths
from wardgate.postgres.relay import PgRelay
from wardgate.postgres.startup import (
    GENERIC_AUTH_FAILURE,
    PROTOCOL_3_0,
    SETTING_HINTS,
    StartupRefused,
    authenticate,
    negotiate_protocol,
    params_for_upstream,
    review_wait_of,
)
from wardgate.postgres.upstream import (
    Upstream,
    UpstreamUnavailable,
    dial_connection,
    send_cancel,
    session_names,
)
from wardgate.postgres.wire import ClientSide, ConnectionClosed
from wardgate.store.cancel import CancelTarget
from wardgate.vault.secrets import SecretError

if TYPE_CHECKING:
    from wardgate.config import Config
    from wardgate.core.services import Services
    from wardgate.identity.principals import Principal

log = logging.getLogger("wardgate.postgres")

# 57P03 cannot_connect_now: what PostgreSQL says while it cannot take sessions yet; pools
# retry it.
_UNRECORDED_SESSION = "57P03"


# How long a successful login lets the next one from the same principal and address
# dial upstream before the throttle is read (listener._startup, dial_early).
RECENT_LOGIN = 60.0


@dataclass(frozen=True)
class _Plan:
    """What the configuration says a session dials with."""

    principal: Principal
    upstream_params: dict[str, str]
    read_only: bool
    review_wait: float


def _discard(task: asyncio.Task[Upstream]) -> None:
    """Drop a dial nobody will use: close its connection, now or when it completes."""

    def close(done: asyncio.Task[Upstream]) -> None:
        if not done.cancelled() and done.exception() is None:
            done.result().side.close()

    if task.done():
        close(task)
    else:
        task.cancel()
        task.add_done_callback(close)


class PgListener:
    """Owns the PostgreSQL listening socket of one gateway process."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.server: asyncio.AbstractServer | None = None
        self.clients: set[ClientSide] = set()
        # The BackendKeyData of this process's sessions: a cancel arriving here is
        # served without the store, and stops a statement held for a review.
        self.cancel_keys = CancelRegistry(services.cancel_keys, services.tasks)
        # Why the store failed the last startup that needed it (None: it did not): one
        # log line when that changes, not a traceback per login attempt.
        self._store_failure: str | None = None
        # (principal, address) -> when it last logged in here with nothing failing since.
        self._recent: dict[tuple[str, str], float] = {}

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        limits = self.services.config.limits
        max_bytes, cap = limits.max_message_bytes, limits.startup_buffer_bytes
        self.server = await loop.create_server(
            lambda: ClientSide(self._accepted, max_bytes, cap),
            host,
            port,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        sockets: list[socket.socket] = list(getattr(self.server, "sockets", None) or [])
        return int(sockets[0].getsockname()[1])

    def _accepted(self, client: ClientSide) -> None:
        sock = client.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients.add(client)
        self.services.tasks.spawn(self._run(client), name=f"pg-startup-{id(client):x}")

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def close_idle(self) -> int:
        """Draining: end the sessions that are between transactions with nothing in
        flight; returns how many are still busy (in a transaction, running a statement,
        waiting for a review, or still starting)."""
        busy = 0
        for client in list(self.clients):
            if client.relay is not None and client.relay.idle:
                self._shut(client)
            else:
                busy += 1
        return busy

    async def close(self) -> None:
        self.stop_accepting()
        for client in list(self.clients):
            self._shut(client)
        if self.server is not None:
            await self.server.wait_closed()
        await self.cancel_keys.flush()  # the ended sessions' keys leave the store

    @staticmethod
    def _shut(client: ClientSide) -> None:
        if client.relay is not None:
            client.write(
                build.error_response(
                    "57P01",
                    "wardgate: the gateway is shutting down; reconnect to retry (a statement "
                    "waiting for review stays pending: once approved, run it again)",
                    severity="FATAL",
                )
            )
            client.relay.on_client_closed()
        client.close()

    async def _run(self, client: ClientSide) -> None:
        peer = client.transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) else "local"
        timeout = self.services.config.limits.startup_timeout
        task = asyncio.current_task()
        assert task is not None
        client.on_overflow = task.cancel
        try:
            if client.overflowed:  # all of it arrived with the first read
                raise asyncio.CancelledError
            await asyncio.wait_for(self._startup(client, addr), timeout)
        except asyncio.CancelledError:
            if not client.overflowed or client.relay is not None:
                raise  # the gateway is stopping
            task.uncancel()
            await self._overflowed(client, addr)
        except StartupRefused as exc:
            client.write(
                build.error_response(exc.sqlstate, exc.message, severity="FATAL", hint=exc.hint)
            )
            client.close()
        except ProtocolError as exc:
            client.end_with(
                build.error_response(
                    "08P01", f"wardgate: protocol violation: {exc}", severity="FATAL"
                )
            )
            # Malformed bytes before a session exists count like the flood below: a
            # failed login of the address, so junk cannot be retried at line rate.
            await self._count_against(addr)
        except TimeoutError:
            client.write(
                build.error_response(
                    "08006", "wardgate: the connection startup took too long", severity="FATAL"
                )
            )
            client.close()
        except ConnectionClosed:
            client.close()
        except SQLAlchemyError as exc:  # tokens, the login limiter, cancel keys
            from wardgate.store.db import describe_error

            reason = describe_error(exc)
            if self._store_failure is None:
                log.error("the store fails PostgreSQL logins (refusing them): %s", reason)
            self._store_failure = reason
            self.services.recorder.refused()
            client.write(
                build.error_response(
                    _UNRECORDED_SESSION,
                    AUDIT_UNAVAILABLE,
                    severity="FATAL",
                    hint=AUDIT_UNAVAILABLE_HINT,
                )
            )
            client.close()
        except Exception:
            log.exception("unexpected failure during PostgreSQL startup from %s", addr)
            client.write(
                build.error_response(
                    "XX000", "wardgate: internal error during connection startup", severity="FATAL"
                )
            )
            client.close()
        finally:
            client.on_overflow = None
            if client.relay is None:
                self.clients.discard(client)

    async def _overflowed(self, client: ClientSide, addr: str) -> None:
        """The client sent more than `limits.startup_buffer_bytes` before its session
        existed: no legitimate client does (libpq waits for ReadyForQuery), so it is a
        protocol violation, and a failed login of its address (not of the principal it
        named, which it may not own)."""
        cap = client.startup_buffer_bytes
        client.end_with(
            build.error_response(
                "08P01",
                f"wardgate: protocol violation: more than {cap} bytes sent before the session "
                "started (limits.startup_buffer_bytes); wait for ReadyForQuery before sending "
                "queries",
                severity="FATAL",
            )
        )
        client.decoder = FrontendDecoder(4)  # drop what was buffered now, not at close
        log.info("connection from %s sent more than %d bytes during startup; closed", addr, cap)
        await self._count_against(addr)

    async def _count_against(self, addr: str) -> None:
        """A failed login of ``addr`` (not of the principal the client named)."""
        try:
            await asyncio.to_thread(self.services.limiter.record_failure, None, addr)
        except Exception as exc:  # the store being down must not turn this into a traceback
            log.warning("could not count a failed login from %s: %s", addr, exc)

    async def _startup(self, client: ClientSide, addr: str) -> None:
        services = self.services
        tls = False
        while True:
            msg = await client.read()
            if isinstance(msg, m.SSLRequest) and not tls:
                if services.server_tls is None:
                    client.write(build.ssl_refuse())
                    continue
                if client.decoder.buffered:
                    raise ProtocolError("data sent after SSLRequest before the TLS handshake")
                client.write(build.ssl_accept())
                loop = asyncio.get_running_loop()
                try:
                    transport = await loop.start_tls(
                        client.transport, client, services.server_tls, server_side=True
                    )
                except OSError as exc:  # ssl.SSLError too: a reset, or no ClientHello
                    log.info("TLS handshake with %s failed: %s", addr, exc)
                    raise ConnectionClosed from None
                if transport is None:
                    raise ConnectionClosed
                client.transport = transport
                tls = True
            elif isinstance(msg, m.GSSENCRequest):
                client.write(build.ssl_refuse())
            elif isinstance(msg, m.CancelRequest):
                await self._cancel(msg)
                client.close()
                return
            elif isinstance(msg, m.StartupMessage):
                break
            else:
                raise ProtocolError(f"unexpected {type(msg).__name__} during startup")
        client.decoder.end_startup()
        config = services.config
        params = dict(msg.params)
        principal_name = params.get("user", "")
        connection_name = params.get("database") or principal_name
        if msg.protocol >> 16 != 3:
            raise StartupRefused(
                "08P01",
                f"wardgate: unsupported protocol version {msg.protocol >> 16}.{msg.protocol & 0xFFFF}",
            )
        if msg.protocol != PROTOCOL_3_0:
            # A newer 3.x minor: tell the client we speak 3.0 (NegotiateProtocolVersion).
            client.write(negotiate_protocol(params))
        if not principal_name:
            raise StartupRefused(
                "28000", "wardgate: no user name given; connect as your wardgate principal"
            )
        if services.recorder.unavailable:
            # Refused before any store work: the session could not be recorded.
            services.recorder.refused()
            raise StartupRefused(_UNRECORDED_SESSION, AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE_HINT)

        early: asyncio.Task[Upstream] | None = None
        early_plan: _Plan | None = None

        def dial_early() -> None:
            # Dial while the client proves its token (its PBKDF2 and the round trips), if
            # the claimed principal may reach the connection at all: once the throttle let
            # the login go on, or at once when this principal logged in from this address
            # a moment ago and nothing failed since (_recent). An unauthenticated client
            # can so make the gateway dial only until the throttle stops it, and at most
            # once per worker ahead of the throttle; a failed login closes the dial.
            nonlocal early, early_plan
            if early is not None:
                return
            try:
                early_plan = self._plan(config, principal_name, connection_name, params)
            except StartupRefused:
                return  # refused again, with its reason, once the client is authenticated
            early = asyncio.ensure_future(self._dial(config, connection_name, early_plan))

        dialling: asyncio.Task[Upstream] | None = None
        recent = (principal_name, addr)
        if self._recent.get(recent, 0.0) > time.monotonic() - RECENT_LOGIN:
            dial_early()
        try:
            try:
                ahead = await authenticate(services, client, principal_name, addr, tls, dial_early)
            except BaseException:  # a failure, or a client that left before its proof
                self._recent.pop(recent, None)
                raise
            if len(self._recent) >= 10_000:
                self._recent.clear()  # bounded: only a hint, losing it costs a little time
            self._recent[recent] = time.monotonic()
            # The configuration as it is now, not as the handshake began: a reload during
            # it may have removed the principal or changed its roles (attack20).
            dialled_with, config = config, services.config
            plan = self._plan(config, principal_name, connection_name, params)
            if early is not None and plan == early_plan and config is dialled_with:
                dialling, early = early, None
            else:
                dialling = asyncio.ensure_future(self._dial(config, connection_name, plan))
            upstream = await dialling
        except BaseException:
            if dialling is not None:
                _discard(dialling)
            raise
        finally:
            if early is not None:
                _discard(early)
        principal, read_only, review_wait = plan.principal, plan.read_only, plan.review_wait
        if read_only and upstream.parameters.get("default_transaction_read_only", "on") != "on":
            upstream.side.close()
            raise StartupRefused(
                "0A000",
                f'wardgate: connection "{connection_name}" did not open the read-only session '
                "this principal's role requires",
            )
        for name, value in upstream.parameters.items():
            if (problem := reported_setting_problem(name, value)) is not None:
                upstream.side.close()
                raise StartupRefused("0A000", problem, hint=SETTING_HINTS.get(name))
        codec = python_codec(upstream.parameters.get("client_encoding", "UTF8"))
        assert codec is not None  # checked just above
        client.decoder.encoding = codec
        # Judged with the target's catalogue (user casts, shadowing routines), not as the
        # worst case a catalogue not read yet is: a gateway just started looks first.
        await services.state(CatalogWatch).first_look(services, connection_name)

        session_masking = services.masking.for_session(principal, connection_name)
        if session_masking is not None and session_masking.column_rules:
            try:
                await services.state(MaskCatalogs).get(services, connection_name)
            except CatalogUnavailable as exc:  # its statements are refused until it is read
                log.warning("connection %r: masking catalog unavailable: %s", connection_name, exc)
            # Which schemas unqualified names mean, as the server says; unknown (every
            # schema's table of a name counts) when it does not answer.
            names = await session_names(upstream.side, config.limits.connect_timeout, codec)
            mask_paths = (
                SessionPaths(names[0], names[1])
                if names is not None
                else SessionPaths(unknown=True)
            )
        else:
            mask_paths = None
        session_id = "s_" + secrets.token_hex(8)
        # The client sees the backend's real pid (pg_backend_pid(), pg_stat_activity and
        # notifications match it) but never its secret: a cancel must come through here.
        gw_pid = upstream.pid
        gw_secret = secrets.token_bytes(4)
        up = config.connections[connection_name].pg
        target = CancelTarget(
            connection_name, up.host, up.port, upstream.pid, upstream.secret, up.tls
        )
        if client.closed:
            upstream.side.close()
            raise ConnectionClosed
        if self._store_failure is not None:
            log.warning("the store serves PostgreSQL logins again")
            self._store_failure = None
        services.recorder.submit(
            SessionRecord(
                id=session_id,
                protocol="postgres",
                principal=principal,
                connection=connection_name,
                client_addr=addr,
                started_at=time.time(),
                application_name=params.get("application_name", ""),
                tls=tls,
            )
        )

        local: LocalKey | None = None

        def finished() -> None:
            self.clients.discard(client)
            if local is not None:
                self.cancel_keys.remove(local)

        relay = PgRelay(
            services,
            client,
            upstream.side,
            session_id=session_id,
            principal=principal,
            connection=connection_name,
            client_addr=addr,
            on_finished=finished,
            read_only=read_only,
            review_wait=review_wait,
        )
        relay.mask_paths = mask_paths
        relay.cancel_to = (up.host, up.port, upstream.pid, upstream.secret)
        relay.backend = upstream.backend
        services.state(CommitBarrier).add(relay)
        local = self.cancel_keys.add(gw_pid, gw_secret, target, relay)
        out = [
            ahead,
            build.auth_ok(),
            *upstream.parameter_status,
            *upstream.notices,
            build.backend_key_data(gw_pid, gw_secret),
            build.ready_for_query(b"I"),
        ]
        client.write(b"".join(out))
        leftover_client = client.decoder.buffered
        client.relay = relay
        # Past this point the relay reads with its own backpressure; the startup cap's
        # pause (which can race the last step above) is no longer the one that applies.
        client.resume_reading("startup-cap")
        for extra in upstream.side.start_relay(relay):
            relay.on_upstream_data(extra.raw)
        if leftover_client:
            relay.on_client_data(b"")  # pipelined messages sent before ReadyForQuery
        if client.closed:
            relay.on_client_closed()
        if upstream.side.closed:
            relay.on_upstream_closed()
        log.info(
            "session %s: %s (%s) connected to %r from %s",
            session_id,
            principal.name,
            principal.kind.value,
            connection_name,
            addr,
        )

    def _plan(
        self, config: Config, principal_name: str, connection_name: str, params: dict[str, str]
    ) -> _Plan:
        """What a session of ``principal_name`` on ``connection_name`` dials, from the
        configuration alone; raises StartupRefused when it may not."""
        services = self.services
        principal = config.principal(principal_name)
        conn = config.connections.get(connection_name)
        if principal is None:  # token valid but principal removed from the config since
            raise StartupRefused("28000", GENERIC_AUTH_FAILURE.format(principal_name))
        if conn is None:
            raise StartupRefused(
                "3D000",
                f'wardgate: connection "{connection_name}" does not exist',
                hint="Use a connection name from the gateway configuration as the database name.",
            )
        granted = (
            services.reviews.granted(principal.name, connection_name)
            if services.reviews is not None
            else frozenset()
        )
        if conn.type != "postgres":
            raise StartupRefused(
                "3D000",
                f'wardgate: connection "{connection_name}" is an {conn.type} target, not a database',
                hint=f"Reach it with {conn.type}; use a postgres connection name as the database.",
            )
        if not any(g in conn.roles for g in principal.groups) and not granted:
            raise StartupRefused(
                "42501",
                f'wardgate: principal "{principal_name}" has no role on connection "{connection_name}"',
                hint="Ask a wardgate administrator to grant one of your groups a role on this connection.",
            )
        upstream_params = params_for_upstream(params)
        review_wait = review_wait_of(params, conn)
        # A session opened while a grant is held can write (the grant may allow it).
        read_only = not granted and services.gate.read_only_session(
            principal.groups, connection_name
        )
        if read_only:
            # Defence in depth: the server itself refuses writes in this session, so a
            # statement the classifier misjudged still cannot change anything.
            option = "-c default_transaction_read_only=on"
            upstream_params["options"] = f"{upstream_params.get('options', '')} {option}".strip()
        return _Plan(principal, upstream_params, read_only, review_wait)

    async def _dial(self, config: Config, connection_name: str, plan: _Plan) -> Upstream:
        try:
            return await dial_connection(
                config,
                self.services.vault,
                connection_name,
                plan.upstream_params,
                max_message_bytes=max(config.limits.max_message_bytes, 64 * 1024 * 1024),
            )
        except SecretError as exc:
            log.error("connection %r: %s", connection_name, exc)
            raise StartupRefused(
                "08006",
                f'wardgate: connection "{connection_name}" is unavailable: the gateway cannot read its credential',
            ) from None
        except UpstreamUnavailable as exc:
            raise StartupRefused(
                exc.sqlstate,
                f'wardgate: connection "{connection_name}" is unavailable: {exc.reason}',
            ) from None

    async def _cancel(self, msg: m.CancelRequest) -> None:
        local = self.cancel_keys.find(msg.pid, msg.secret)
        if local is not None and local.session.cancel():
            return  # it was waiting for a review: nothing runs on the server
        target = await self.cancel_keys.lookup(msg.pid, msg.secret)
        if target is None:
            return  # PostgreSQL also says nothing about an unknown key
        try:
            async with asyncio.timeout(self.services.config.limits.connect_timeout):
                await send_cancel(target.host, target.port, target.pid, target.secret)
        except (OSError, TimeoutError) as exc:
            log.warning("forwarding a cancel request to %r failed: %s", target.connection, exc)
