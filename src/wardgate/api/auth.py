"""Who is calling the API: ``Authorization: Bearer`` with a wardgate token (``wg_``),
or with the session secret ``wardgate login --sso`` got for a human (``wgs_``).

Browser sessions are not bearers: their secret lives in an HttpOnly cookie, and only
sessions the CLI opened (method ``oidc-cli``) are accepted here.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from wardgate.core.services import TooManyFailures
from wardgate.core.web_sessions import human_principal
from wardgate.identity.principals import Principal

if TYPE_CHECKING:
    from wardgate.core.services import Services

SESSION_PREFIX = "wgs_"
CLI_SESSION_METHOD = "oidc-cli"


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    token_id: str  # a token's id, or "web:<session id>" for a signed-in human

    @property
    def session_id(self) -> str | None:
        """The sign-in session behind this caller, if it is one."""
        return self.token_id[4:] if self.token_id.startswith("web:") else None


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def client_addr(request: Request) -> str:
    return request.client.host if request.client else "?"


async def caller(request: Request) -> Caller:
    """The authenticated principal; 401 for a missing, wrong or revoked token, an ended
    session, or one whose principal is no longer in the configuration."""
    services = services_of(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise HTTPException(401, "authentication required: send Authorization: Bearer <token>")
    addr = client_addr(request)
    try:
        if token.startswith(SESSION_PREFIX):
            signed_in = await session_bearer(services, token, addr, "api")
            if signed_in is None:
                raise HTTPException(
                    401, "the sign-in session has ended or expired: run `wardgate login --sso`"
                )
            return signed_in
        checked = await services.check_bearer(token, addr, "api")
    except TooManyFailures as exc:
        raise HTTPException(
            429, f"too many failed authentications from this address; retry in {exc.wait:.0f} s"
        ) from None
    if checked is None:
        raise HTTPException(401, "the token is wrong, revoked, or its principal no longer exists")
    info, principal = checked
    return Caller(principal, info.id)


async def session_bearer(services: Services, secret: str, addr: str, realm: str) -> Caller | None:
    """A CLI sign-in session presented as a bearer, or None. Failures count per client
    address and ``realm`` like tokens (`Services.check_bearer`): never refused, since
    a session is found by its hash, cheaply."""
    key = f"{realm}@{addr}"
    sessions = services.web_sessions
    info = await asyncio.to_thread(sessions.lookup, secret) if sessions is not None else None
    principal = None
    if info is not None and info.method == CLI_SESSION_METHOD:
        principal = human_principal(services.config, info.principal, info.groups, info.method)
        if principal is None and sessions is not None:
            # Removed from the configuration, or made an agent, since signing in.
            await asyncio.to_thread(sessions.end, info.id)
    if info is None or principal is None:
        delay = await asyncio.to_thread(services.limiter.record_failure, key, addr)
        await asyncio.sleep(delay)
        return None
    return Caller(principal, f"web:{info.id}")
