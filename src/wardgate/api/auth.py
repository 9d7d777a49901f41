"""Who is calling the API: a wardgate token presented as ``Authorization: Bearer``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from wardgate.identity.principals import Principal

if TYPE_CHECKING:
    from wardgate.proxy.services import Services


@dataclass(frozen=True, slots=True)
class Caller:
    principal: Principal
    token_id: str


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def caller(request: Request) -> Caller:
    """The authenticated principal; 401 for a missing, wrong or revoked token, or one
    whose principal is no longer in the configuration."""
    services = services_of(request)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(401, "authentication required: send Authorization: Bearer <token>")
    # The bearer token names no principal: failures count per client address only.
    addr = request.client.host if request.client else "?"
    wait = await asyncio.to_thread(services.limiter.retry_after, f"api@{addr}", addr)
    if wait is not None:
        raise HTTPException(
            429, f"too many failed authentications from this address; retry in {wait:.0f} s"
        )
    info = await asyncio.to_thread(services.tokens.check_bearer, token.strip())
    principal = services.config.principal(info.principal) if info is not None else None
    if info is None or principal is None:
        await asyncio.to_thread(services.limiter.record_failure, f"api@{addr}", addr)
        raise HTTPException(401, "the token is wrong, revoked, or its principal no longer exists")
    return Caller(principal, info.id)
