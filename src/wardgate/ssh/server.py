"""The SSH gateway: clients run ``ssh -p 12222 <connection>@gateway [command]``.

Built on asyncssh, server side and client side. A client authenticates as a principal
with a registered public key (``wardgate principal add-key``) or a wardgate token as
the password; the SSH user name is the connection. The callbacks here stay short and
hand over to ``session.py`` (exec and shell) and ``sftp.py`` (file transfer); the
target is dialled with the gateway's credential by ``upstream.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import SQLAlchemyError

from wardgate.audit.records import (
    AUDIT_UNAVAILABLE,
    AUDIT_UNAVAILABLE_HINT,
    SessionEnd,
    SessionRecord,
    action_record,
)
from wardgate.audit.responses import SessionResults, session_budget
from wardgate.core.services import TooManyFailures
from wardgate.identity.principals import Principal
from wardgate.identity.ssh_keys import SshKeys
from wardgate.ssh.upstream import TargetUnavailable, dial_target, gateway_host_key
from wardgate.sshlib import SIGNATURE_ALGS, asyncssh

if TYPE_CHECKING:
    from wardgate.actions import Verdict
    from wardgate.core.services import Services

log = logging.getLogger("wardgate.ssh")


class SshListener:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.keys = SshKeys(services.store)
        self._server: asyncssh.SSHAcceptor | None = None
        self.connections: set[GatewayConnection] = set()
        # Why the store failed the last login that needed it (None: it did not): one log
        # line when that changes, not one per login attempt (as PgListener does).
        self.store_failure: str | None = None

    def store_refusal(self, exc: SQLAlchemyError | None = None) -> asyncssh.DisconnectError:
        """The disconnect that refuses a login the store cannot serve (``exc``: the
        store's error; None: the recorder is refusing records). The client sees the same
        message as a PostgreSQL login gets with 57P03, and nothing was run."""
        if exc is not None:
            from wardgate.store.db import describe_error

            reason = describe_error(exc)
            if self.store_failure is None:
                log.error("the store fails SSH logins (refusing them): %s", reason)
            self.store_failure = reason
        self.services.recorder.refused()
        return asyncssh.ServiceNotAvailable(f"{AUDIT_UNAVAILABLE}. {AUDIT_UNAVAILABLE_HINT}")

    def store_served(self) -> None:
        if self.store_failure is not None:
            log.warning("the store serves SSH logins again")
            self.store_failure = None

    async def start(self, host: str, port: int, reuse_port: bool = False) -> None:
        from wardgate.ssh.session import handle_process
        from wardgate.ssh.sftp import sftp_factory

        config = self.services.config
        self._server = await asyncssh.create_server(
            lambda: GatewayConnection(self),
            host,
            port,
            server_host_keys=[gateway_host_key(config)],
            # Client keys are verified only with these (no ssh-dss, no SHA-1 RSA).
            signature_algs=list(SIGNATURE_ALGS),
            process_factory=handle_process,
            sftp_factory=sftp_factory,
            allow_scp=False,  # scp runs over SFTP (OpenSSH 9+), or as a judged command
            encoding=None,
            agent_forwarding=False,  # never: it would hand the target the client's keys
            x11_forwarding=False,
            allow_pty=True,
            login_timeout=config.limits.startup_timeout,
            reuse_port=reuse_port,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        sockets = self._server.sockets
        return int(sockets[0].getsockname()[1])

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    def close_idle(self) -> int:
        """Draining: SSH connections end with their command, or when the client leaves;
        returns how many are still open."""
        return len(self.connections)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for conn in list(self.connections):
            conn.close()


class GatewayConnection(asyncssh.SSHServer):
    """One client's SSH connection: who it is, which connection it wants, its upstream."""

    def __init__(self, listener: SshListener) -> None:
        self.listener = listener
        self.services = listener.services
        self.conn: asyncssh.SSHServerConnection | None = None
        self.connection_name = ""
        self.principal: Principal | None = None
        self.client_addr = ""
        self.session_id = "h_" + secrets.token_hex(8)
        self.seq = 0
        self._upstream: asyncio.Task[asyncssh.SSHClientConnection] | None = None
        self._recorded = False
        self._responses: SessionResults | None | bool = False  # False: not made yet

    def response_budget(self) -> SessionResults | None:
        """What is left of this connection's budget for recording exec output."""
        if self._responses is False:
            self._responses = session_budget(self.services.config, self.connection_name)
        assert not isinstance(self._responses, bool)
        return self._responses

    # -- asyncssh callbacks -------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        peer = conn.get_extra_info("peername")
        self.client_addr = str(peer[0]) if peer else ""
        self.listener.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self._upstream is not None:
            if self._upstream.done() and not self._upstream.cancelled():
                if self._upstream.exception() is None:
                    self._upstream.result().close()
            else:
                self._upstream.cancel()
        if self._recorded:
            status = "closed" if exc is None else "error"
            error = None if exc is None else str(exc)[:200]
            self.services.recorder.submit(SessionEnd(self.session_id, time.time(), status, error))

    def begin_auth(self, username: str) -> bool:
        self.connection_name = username
        self._refuse_unrecorded()
        return True  # always authenticate

    def _refuse_unrecorded(self) -> None:
        """No login while the session could not be recorded (the recorder refuses records:
        the store is unwritable or unreachable and the backlog is full), as PostgreSQL
        logins are refused with 57P03: a disconnect whose reason OpenSSH prints."""
        if self.services.recorder.unavailable:
            raise self.listener.store_refusal()

    def password_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        self._refuse_unrecorded()
        try:
            checked = await self.services.check_bearer(password, self.client_addr, "ssh")
        except TooManyFailures:
            return False  # SSH has no way to say "wait"; the client sees a failure
        except SQLAlchemyError as exc:  # the token lookup or the failure count
            raise self.listener.store_refusal(exc) from None
        if checked is None:
            return False
        self.listener.store_served()
        self.principal = checked[1]
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._refuse_unrecorded()
        fingerprint = key.get_fingerprint("sha256")
        try:
            name = await asyncio.to_thread(self.listener.keys.principal_for, fingerprint)
        except SQLAlchemyError as exc:
            raise self.listener.store_refusal(exc) from None
        self.listener.store_served()
        principal = self.services.config.principal(name) if name else None
        if principal is None:
            return False
        self.principal = principal
        return True

    def auth_completed(self) -> None:
        assert self.principal is not None and self.conn is not None
        self._recorded = True
        version = self.conn.get_extra_info("client_version") or ""
        self.services.recorder.submit(
            SessionRecord(
                id=self.session_id,
                protocol="ssh",
                principal=self.principal,
                connection=self.connection_name,
                client_addr=self.client_addr,
                started_at=time.time(),
                application_name=str(version)[:200],
                tls=True,  # SSH transport encryption
            )
        )
        log.info(
            "session %s: %s (%s) connected to %r from %s",
            self.session_id,
            self.principal.name,
            self.principal.kind.value,
            self.connection_name,
            self.client_addr,
        )
        if self.refusal() is None and self.feature("forwarding").allowed:
            self._upstream = asyncio.ensure_future(self._dial())  # for forwarded ports

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """Port forwarding (ssh -L): tunnelled through the target, never opened by the
        gateway itself, and only for a role with ``forwarding: allow``."""
        verdict = self.feature("forwarding") if self.refusal() is None else None
        text = f"forward to {dest_host}:{dest_port}"
        if verdict is None or not verdict.lets_through:
            self.record_feature(text, verdict, "blocked")
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "wardgate: port forwarding is not allowed for you on this connection",
            )
        upstream = self._upstream
        if upstream is None or not upstream.done() or upstream.exception() is not None:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_CONNECT_FAILED, "wardgate: the target is not connected yet; retry"
            )
        self.record_feature(text, verdict, "ok")
        return upstream.result()

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        return False  # remote forwarding (ssh -R) would expose the client through the target

    # -- for sessions -------------------------------------------------------------------

    def refusal(self) -> str | None:
        """Why this principal cannot use this connection at all, or None."""
        if self.services.recorder.unavailable:
            # Nothing runs that cannot be recorded: every channel gets this, as a
            # PostgreSQL session gets 57P03.
            return f"{AUDIT_UNAVAILABLE}\n{AUDIT_UNAVAILABLE_HINT}"
        config = self.services.config
        conn = config.connections.get(self.connection_name)
        assert self.principal is not None
        if conn is None:
            return (
                f"wardgate: connection {self.connection_name!r} does not exist; log in as "
                "<connection>@gateway with the name of an ssh connection"
            )
        if conn.type != "ssh":
            return f"wardgate: connection {self.connection_name!r} is a {conn.type} target, not an SSH host"
        if not any(g in conn.roles for g in self.principal.groups) and not self.granted():
            return (
                f"wardgate: principal {self.principal.name!r} has no role on connection "
                f"{self.connection_name!r}; ask a wardgate administrator"
            )
        return None

    def granted(self) -> frozenset[str]:
        reviews = self.services.reviews
        if reviews is None or self.principal is None:
            return frozenset()
        if self.principal.name not in self.services.config.principals:
            return frozenset()  # removed by a reload: its grants end with it
        return reviews.granted(self.principal.name, self.connection_name)

    def current_principal(self) -> Principal:
        """The principal as the configuration says now (a reload may change groups; a
        principal removed since has none, so nothing is allowed: attack20)."""
        assert self.principal is not None
        now = self.services.config.principal(self.principal.name)
        return now or dataclasses.replace(self.principal, groups=frozenset())

    def feature(self, feature: str) -> Verdict:
        """``shell``, ``sftp`` or ``forwarding``: what the principal's roles say."""
        return self.services.gate.feature(
            self.current_principal(), self.connection_name, feature, self.granted()
        )

    async def upstream(self) -> asyncssh.SSHClientConnection:
        """The target connection of this client connection, dialled once."""
        if self._upstream is None or (
            self._upstream.done()
            and (self._upstream.cancelled() or self._upstream.exception() is not None)
        ):
            self._upstream = asyncio.ensure_future(self._dial())
        return await asyncio.shield(self._upstream)

    async def _dial(self) -> asyncssh.SSHClientConnection:
        return await dial_target(self.services.config, self.services.vault, self.connection_name)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def record_feature(
        self,
        text: str,
        verdict: Verdict | None,
        status: str,
        *,
        kind: str = "ssh",
        started: float | None = None,
        t0: float | None = None,
    ) -> None:
        """Record what this connection did that is not a judged command: a shell, a
        forwarding attempt, an SFTP operation (``kind`` "sftp")."""
        from wardgate.actions import Action, Decision
        from wardgate.actions import Verdict as V

        verdict = verdict or V(Decision.BLOCK, "no-access", "no access to this connection")
        self.services.recorder.submit(
            action_record(
                self.session_id,
                self.next_seq(),
                Action(
                    self.current_principal(),
                    self.connection_name,
                    "ssh",
                    kind,
                    text,
                    session_id=self.session_id,
                    client_addr=self.client_addr,
                ),  # fmt: skip
                verdict,
                status,
                started=started if started is not None else time.time(),
                t0=t0 if t0 is not None else time.perf_counter(),
            )
        )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


__all__ = ["GatewayConnection", "SshListener", "TargetUnavailable"]
