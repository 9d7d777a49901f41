"""Who is calling the API: a wardgate token presented as ``Authorization: Bearer``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastapi import HTTPException, Request

from wardgate.identity.principals import Principal
from wardgate.proxy.services import TooManyFailures

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
    addr = request.client.host if request.client else "?"
    try:
        checked = await services.check_bearer(token.strip(), addr, "api")
    except TooManyFailures as exc:
        raise HTTPException(
            429, f"too many failed authentications from this address; retry in {exc.wait:.0f} s"
        ) from None
    if checked is None:
        raise HTTPException(401, "the token is wrong, revoked, or its principal no longer exists")
    info, principal = checked
    return Caller(principal, info.id)
