"""Signed-in humans: who may sign in (human_principal, for the web UI and the CLI), and
server-side sessions with idle and absolute limits.

The secret goes to the browser as a cookie (or to the CLI after ``wardgate login`` by
OIDC, as a bearer); the store keeps only its SHA-256, so a copy of the store signs
nobody in. Every gateway process sharing the store sees the same sessions, and signing
out ends a session everywhere at once. Signing in and out are events in the audit
chain (``web.signin``, ``web.signout`` with the reason), written in the same transaction.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from wardgate.audit.chain import NewEvent, append_events
from wardgate.config import Config
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.store.db import Store
from wardgate.store.models import WebSession

SECRET_PREFIX = "wgs_"
# last_seen_at is written at most this often, not on every request.
TOUCH_EVERY = 30.0


def human_principal(
    config: Config, name: str, idp_groups: frozenset[str], method: str
) -> Principal | None:
    """The principal a signed-in human acts as, or None when they may not sign in.

    A listed principal must be a user; its groups are its configured ones plus those
    the provider asserted (already mapped). Unlisted humans need OIDC and
    ``web.oidc.allow_unlisted_users``.
    """
    listed = config.principal(name)
    if listed is not None:
        if listed.is_agent:
            return None
        return Principal(name, PrincipalKind.USER, listed.groups | idp_groups)
    oidc = config.web.oidc
    if method.startswith("oidc") and oidc is not None and oidc.allow_unlisted_users:
        return Principal(name, PrincipalKind.USER, idp_groups & frozenset(config.groups))
    return None


def sign_in_refusal(config: Config, name: str) -> str:
    """Why ``name`` may not sign in (to the web UI or the CLI), in words for them."""
    listed = config.principal(name)
    if listed is not None and listed.is_agent:
        return (
            f"{name!r} is an agent, and agents cannot sign in to the web UI or the CLI: "
            "their tokens (`wardgate token create`) work on the API, MCP and protocol "
            "ports only. Sign in as a human user."
        )
    return (
        f"{name!r} is not a wardgate user here: ask an administrator to add a principal "
        "of that name (or to set web.oidc.allow_unlisted_users)."
    )


@dataclass(frozen=True, slots=True)
class WebSessionInfo:
    id: str
    principal: str
    groups: frozenset[str]
    method: str
    csrf: str
    created_at: float
    last_seen_at: float
    expires_at: float


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _info(row: WebSession) -> WebSessionInfo:
    return WebSessionInfo(
        row.id,
        row.principal,
        frozenset(json.loads(row.groups)),
        row.method,
        row.csrf,
        row.created_at,
        row.last_seen_at,
        row.expires_at,
    )


class WebSessions:
    def __init__(self, store: Store, idle: float, absolute: float) -> None:
        self._store = store
        self.idle = idle
        self.absolute = absolute

    def create(
        self, principal: str, groups: frozenset[str], method: str, addr: str
    ) -> tuple[str, WebSessionInfo]:
        """A new session; returns its secret (shown once) and what is stored."""
        now = time.time()
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        row = WebSession(
            id="ws_" + base64.b32encode(secrets.token_bytes(10)).decode().lower(),
            secret_hash=_hash(secret),
            principal=principal,
            groups=json.dumps(sorted(groups)),
            method=method,
            csrf=secrets.token_urlsafe(32),
            addr=addr[:64],
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.absolute,
        )
        info = _info(row)
        with self._store.session() as session:
            session.add(row)
            _audit(
                session,
                "web.signin",
                info.id,
                principal,
                now,
                {"method": method, "addr": row.addr, "groups": sorted(groups)},
            )
        return secret, info

    def lookup(self, secret: str, *, activity: bool = True) -> WebSessionInfo | None:
        """The live session this secret opens, or None (unknown, signed out, idle too
        long, or past its absolute limit). An ``activity`` restarts the idle time; a
        page polling for updates is not one, so an inbox left open still times out."""
        if not secret.startswith(SECRET_PREFIX) or len(secret) > 100:
            return None
        now = time.time()
        with self._store.session(write=False) as session:
            row = session.scalars(
                select(WebSession).where(
                    WebSession.secret_hash == _hash(secret), WebSession.ended_at.is_(None)
                )
            ).one_or_none()
            if row is None:
                return None
            info = _info(row)
        if now >= info.expires_at:
            self.end(info.id, "session_max reached")
            return None
        if now - info.last_seen_at >= self.idle:
            self.end(info.id, "idle")
            return None
        if activity and now - info.last_seen_at >= TOUCH_EVERY:
            with self._store.session() as session:
                session.execute(
                    update(WebSession).where(WebSession.id == info.id).values(last_seen_at=now)
                )
        return info

    def end(self, session_id: str, reason: str = "signed out") -> None:
        self._end(WebSession.id == session_id, reason)

    def end_all(self, principal: str, reason: str = "signed out everywhere") -> int:
        return self._end(WebSession.principal == principal, reason)

    def _end(self, which: Any, reason: str) -> int:
        now = time.time()
        with self._store.session() as session:
            ended = session.execute(
                update(WebSession)
                .where(which, WebSession.ended_at.is_(None))
                .values(ended_at=now)
                .returning(WebSession.id, WebSession.principal)
            ).all()
            for row in ended:
                _audit(session, "web.signout", row.id, row.principal, now, {"reason": reason})
        return len(ended)


def _audit(
    session: Session,
    kind: str,
    session_id: str,
    principal: str,
    now: float,
    payload: dict[str, Any],
) -> None:
    append_events(session, [NewEvent(now, kind, session_id, principal, "", payload)])
