"""Signing the CLI in with single sign-on: ``wardgate login --sso``.

The CLI signs in at the identity provider itself (device flow or a loopback redirect,
as a public client) and trades the ID token it got for a wardgate sign-in session,
whose secret (``wgs_...``) it then sends as its bearer. The gateway checks the ID token
like the web UI's (issuer, signature, audience: the CLI's client id, freshness) and the
human behind it like the web UI does (`wardgate.core.web_sessions.human_principal`):
agents and unlisted users are refused.

These are the only endpoints that answer with a credential: the new session's secret,
to the client that proved who it is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from wardgate.api.auth import CLI_SESSION_METHOD, Caller, caller, client_addr, services_of
from wardgate.api.schemas import _problems as problems
from wardgate.config import OidcConfig
from wardgate.core.services import Services
from wardgate.core.web_sessions import human_principal, sign_in_refusal
from wardgate.identity.oidc import MAX_TOKEN_CHARS, OidcClient, OidcError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/auth", tags=["sign-in"])

# An ID token older than this does not open a session: it was meant for signing in
# just now, not to be kept and replayed later.
EXCHANGE_MAX_AGE = 600.0
# After a refresh that brought no new ID token, the previous one (with a live access
# token for the same subject) still renews the session for this long after its issue.
RENEW_MAX_AGE = 7 * 86400.0
NOT_CONFIGURED = "single sign-on is not configured on this gateway (web.oidc)"


class OidcSignIn(BaseModel):
    """What the CLI needs to sign in at the identity provider."""

    issuer: str
    client_id: str = Field(description="The CLI's (public) client id at the provider")
    scopes: list[str]


class SessionRequest(BaseModel):
    id_token: str = Field(min_length=1, max_length=MAX_TOKEN_CHARS)
    access_token: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TOKEN_CHARS,
        description=(
            "Only after a refresh that brought no new ID token: then id_token is the "
            "previous one and this access token must open the same subject's userinfo"
        ),
    )


class SessionOut(BaseModel):
    token: str = Field(description="The session secret (wgs_...): send it as the bearer")
    session_id: str
    principal: str
    kind: Literal["user"] = "user"
    groups: list[str]
    expires_at: float


class LogoutOut(BaseModel):
    ended: str = Field(description="The id of the sign-in session that ended")


def cli_client_id(oidc: OidcConfig) -> str:
    """The client id ``wardgate login`` uses at the provider: ``web.oidc.cli_client_id``
    when the configuration has one, else the web UI's."""
    return oidc.cli_client_id or oidc.client_id


def _oidc(services: Services) -> tuple[OidcConfig, OidcClient]:
    config = services.config.web.oidc
    client = services.oidc
    if config is None or not isinstance(client, OidcClient) or services.web_sessions is None:
        raise HTTPException(404, NOT_CONFIGURED)
    return config, client


@router.get("/oidc", response_model=OidcSignIn, responses=problems(404))
async def oidc_sign_in(request: Request) -> OidcSignIn:
    config, _ = _oidc(services_of(request))
    return OidcSignIn(issuer=config.issuer, client_id=cli_client_id(config), scopes=config.scopes)


@router.post(
    "/oidc/session", response_model=SessionOut, responses=problems(400, 401, 403, 404, 422, 429)
)
async def oidc_session(request: Request, body: SessionRequest) -> SessionOut:
    services = services_of(request)
    config, client = _oidc(services)
    sessions = services.web_sessions
    assert sessions is not None
    addr = client_addr(request)
    key = f"oidc@{addr}"
    wait = await asyncio.to_thread(services.limiter.retry_after, key, addr, surface="sso")
    if wait is not None:
        raise HTTPException(
            429, f"too many failed sign-ins from this address; retry in {wait:.0f} s"
        )
    audience = cli_client_id(config)
    try:
        if body.access_token is None:
            claims = await client.verify_id_token(
                body.id_token, audience=audience, max_age=EXCHANGE_MAX_AGE
            )
        else:
            claims = await client.refreshed_claims(
                body.id_token, body.access_token, audience=audience, max_age=RENEW_MAX_AGE
            )
        identity = client.identity(claims)
    except OidcError as exc:
        await asyncio.to_thread(services.limiter.record_failure, key, addr, surface="sso")
        log.info("CLI single sign-on refused from %s: %s", addr, exc)
        raise HTTPException(401, f"single sign-on failed: {exc}") from None
    principal = human_principal(
        services.config, identity.username, identity.groups, CLI_SESSION_METHOD
    )
    if principal is None:
        await asyncio.to_thread(services.limiter.record_failure, key, addr, surface="sso")
        log.info("CLI single sign-on refused for %r from %s", identity.username[:64], addr)
        raise HTTPException(403, sign_in_refusal(services.config, identity.username))
    secret, info = await asyncio.to_thread(
        sessions.create, principal.name, identity.groups, CLI_SESSION_METHOD, addr
    )
    log.info("CLI sign-in: %s (oidc) from %s, session %s", principal.name, addr, info.id)
    return SessionOut(
        token=secret,
        session_id=info.id,
        principal=principal.name,
        groups=sorted(principal.groups),
        expires_at=info.expires_at,
    )


@router.post("/logout", response_model=LogoutOut, responses=problems(400, 401, 429))
async def logout(request: Request, who: Annotated[Caller, Depends(caller)]) -> LogoutOut:
    """End the caller's own sign-in session (a wardgate token is revoked instead)."""
    services = services_of(request)
    session_id = who.session_id
    if session_id is None or services.web_sessions is None:
        raise HTTPException(
            400,
            "this is a wardgate token, not a sign-in session: revoke it with "
            "`wardgate token revoke`",
        )
    await asyncio.to_thread(services.web_sessions.end, session_id)
    log.info("CLI sign-out: %s, session %s", who.principal.name, session_id)
    return LogoutOut(ended=session_id)
