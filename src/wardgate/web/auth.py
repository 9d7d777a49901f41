"""Signing humans in to the web UI: local passwords and OIDC, sessions and CSRF.

Only humans sign in here. Agents have no password (``wardgate user add`` refuses them)
and an OIDC identity that names an agent principal is refused; bearer tokens are not
accepted on /ui at all, so an agent's token opens the API, MCP and protocol ports only.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
import weakref
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import RedirectResponse, Response

from wardgate.api.auth import Caller, services_of
from wardgate.config import Config
from wardgate.core.services import Services
from wardgate.core.web_sessions import (
    WebSessionInfo,
    WebSessions,
    human_principal,
    sign_in_refusal,
)
from wardgate.identity.principals import Principal
from wardgate.web.render import render

log = logging.getLogger(__name__)

router = APIRouter(prefix="/ui", include_in_schema=False)

LOGIN_CSRF_COOKIE = "wardgate_login"
# Set at a successful password sign-in: this browser signed in as this user before. Its
# sign-ins count failures on a counter of their own (see ``login_password``), so other
# people's failures from the same address cannot lock it out.
KNOWN_BROWSER_COOKIE = "wardgate_known"
KNOWN_BROWSER_DAYS = 30
OIDC_COOKIE = "wardgate_oidc"
OIDC_PENDING_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The human behind a request to /ui."""

    caller: Caller  # token_id is "web:<session id>"
    session: WebSessionInfo

    @property
    def principal(self) -> Principal:
        return self.caller.principal

    @property
    def csrf(self) -> str:
        return self.session.csrf


class LoginRequired(Exception):
    """No live session: pages redirect to the sign-in page, scripts get 401."""


def _web_sessions(services: Services) -> WebSessions:
    if services.web_sessions is None or not services.config.web.enabled:
        raise HTTPException(404, "the web UI is not enabled on this gateway (web.enabled)")
    return services.web_sessions


def _loopback(host: str | None) -> bool:
    if host in ("localhost", None):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def cookie_secure(request: Request, config: Config) -> bool:
    setting = config.web.cookie_secure
    if setting != "auto":
        return bool(setting)
    return request.url.scheme == "https" or not _loopback(request.url.hostname)


def session_cookie_name(secure: bool) -> str:
    # __Host-: the browser only accepts it Secure, for path / and without Domain.
    return "__Host-wardgate" if secure else "wardgate_session"


def _addr(request: Request) -> str:
    return request.client.host if request.client else "?"


async def signed_in(request: Request) -> SignedIn:
    services = services_of(request)
    sessions = _web_sessions(services)
    secret = request.cookies.get(session_cookie_name(cookie_secure(request, services.config)))
    if not secret:
        raise LoginRequired
    # The live regions' polling (X-Requested-With: fetch) is not the human's activity.
    polling = request.headers.get("x-requested-with") == "fetch"
    info = await asyncio.to_thread(sessions.lookup, secret, activity=not polling)
    if info is None or info.method == "oidc-cli":
        raise LoginRequired
    principal = human_principal(services.config, info.principal, info.groups, info.method)
    if principal is None:
        # Removed from the configuration, or turned into an agent, since signing in.
        await asyncio.to_thread(sessions.end, info.id, "no longer a human principal here")
        raise LoginRequired
    return SignedIn(Caller(principal, f"web:{info.id}"), info)


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        # Browsers send Origin on every cross-site POST; without one the CSRF token decides.
        return origin is None
    base = str(request.base_url).rstrip("/")
    return origin.rstrip("/") == base


async def csrf_checked(request: Request) -> SignedIn:
    """A signed-in human's state-changing request: the session's CSRF token must come
    back (form field ``csrf`` or header ``X-CSRF-Token``) and the origin must be ours."""
    me = await signed_in(request)
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        form = await request.form()
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if not _same_origin(request) or not sent or not hmac.compare_digest(sent, me.csrf):
        raise HTTPException(
            403, "this form is stale or came from another site (CSRF check failed); reload the page"
        )
    return me


UiUser = Annotated[SignedIn, Depends(signed_in)]
UiPost = Annotated[SignedIn, Depends(csrf_checked)]


def _safe_next(value: str | None) -> str:
    # Only our own pages: never an absolute or scheme-relative URL (open redirect).
    if (
        value
        and value.startswith("/ui")
        and "\\" not in value
        and value.isprintable()  # no CR/LF (header splitting), NUL or other controls
    ):
        return value
    return "/ui/reviews"


def _login_page(
    request: Request, *, next_url: str, error: str | None = None, status: int = 200
) -> Response:
    services = services_of(request)
    config = services.config
    token = secrets.token_urlsafe(24)
    warning = None
    if config.web.cookie_secure == "auto" and cookie_secure(request, config):
        if request.url.scheme != "https":
            warning = (
                "This page is served over plain HTTP on a non-loopback address: the browser "
                "will refuse the Secure sign-in cookie. Serve the UI over HTTPS (a TLS proxy, "
                "with reviews.url set), or set web.cookie_secure: false on a trusted network."
            )
    response = render(
        request,
        "login.html",
        {
            "local_users": config.web.local_users,
            "oidc_label": config.web.oidc.label if config.web.oidc is not None else None,
            "error": error,
            "warning": warning,
            "login_csrf": token,
            "next": next_url,
        },
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, config),
        path="/ui",
    )
    return response


def _start_session(request: Request, secret: str, next_url: str) -> Response:
    config = services_of(request).config
    secure = cookie_secure(request, config)
    response = RedirectResponse(next_url, status_code=303)
    response.set_cookie(
        session_cookie_name(secure),
        secret,
        max_age=int(config.web.session_max),
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui")
    response.delete_cookie(OIDC_COOKIE, path="/ui")
    return response


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    _web_sessions(services_of(request))
    return _login_page(request, next_url=_safe_next(next))


@router.post("/login")
async def login_password(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/ui/reviews",
) -> Response:
    services = services_of(request)
    sessions = _web_sessions(services)
    next_url = _safe_next(next)
    config = services.config
    if not config.web.local_users or services.passwords is None:
        return _login_page(
            request, next_url=next_url, error="Password sign-in is off here.", status=403
        )
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not csrf or not hmac.compare_digest(cookie, csrf):
        return _login_page(
            request,
            next_url=next_url,
            error="The sign-in form expired or came from another site. Try again.",
            status=403,
        )
    username = username.strip()
    if "\x00" in username or "\x00" in password:
        # No name or password holds NUL; a PostgreSQL store could not even look it up.
        return _login_page(
            request, next_url=next_url, error="Wrong user name or password.", status=401
        )
    addr = _addr(request)
    limiter_key = f"web:{username}"
    # Web sign-ins count their own failures per address (not psql's or the API's); a
    # browser this user signed in from before counts on a counter of its own, so a
    # flood of wrong passwords from the same address (any name, the user's included)
    # does not refuse it; without the key no one else can present that counter.
    known = _unsign(services.web_key, request.cookies.get(KNOWN_BROWSER_COOKIE, ""))
    surface = "web"
    if (
        known is not None
        and known.get("k") == "known-browser"
        and known.get("u") == username
        and isinstance(known.get("d"), str)
    ):
        surface = f"web-known:{known['d']}"
    # One check at a time per (address, counter): the threshold is read before the
    # password is checked and the failure counted after it, so concurrent guesses would
    # all pass the read (a burst of 60 got 60 checks past a threshold of 20: attack17b).
    # Past the threshold each waiting request is refused at once, so the queue is short.
    async with _sign_in_lock(addr, surface):
        wait = await asyncio.to_thread(
            services.limiter.retry_after, limiter_key, addr, surface=surface
        )
        if wait is not None:
            return _login_page(
                request,
                next_url=next_url,
                error=f"Too many failed sign-ins from this address. Wait {wait:.0f} seconds and try again.",
                status=429,
            )
        principal = config.principal(username) if username else None
        if principal is not None and principal.is_agent:
            await asyncio.to_thread(
                services.limiter.record_failure, limiter_key, addr, surface=surface
            )
            error = sign_in_refusal(config, username)
            return _login_page(request, next_url=next_url, error=error, status=403)
        ok = await asyncio.to_thread(services.passwords.verify, username, password)
        delay = 0.0
        if not ok or principal is None:
            delay = await asyncio.to_thread(
                services.limiter.record_failure, limiter_key, addr, surface=surface
            )
    if not ok or principal is None:
        log.info("web sign-in failed for %r from %s", username[:64], addr)
        await asyncio.sleep(delay)  # throttled: slow the guesser; a right password is not
        return _login_page(
            request,
            next_url=next_url,
            error="Wrong user name or password. (A user gets a password with `wardgate user add`.)",
            status=401,
        )
    await asyncio.to_thread(services.limiter.record_success, limiter_key, addr)
    secret, info = await asyncio.to_thread(sessions.create, username, frozenset(), "password", addr)
    log.info("web sign-in: %s (password) from %s, session %s", username, addr, info.id)
    response = _start_session(request, secret, next_url)
    device = known["d"] if surface != "web" and known is not None else secrets.token_hex(8)
    days = KNOWN_BROWSER_DAYS * 86400
    response.set_cookie(
        KNOWN_BROWSER_COOKIE,
        _sign(
            services.web_key,
            {"k": "known-browser", "u": username, "d": device, "exp": time.time() + days},
        ),
        max_age=days,
        httponly=True,
        samesite="strict",
        secure=cookie_secure(request, config),
        path="/ui/login",
    )
    return response


_SIGN_IN_LOCKS: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
    weakref.WeakValueDictionary()
)


def _sign_in_lock(addr: str, surface: str) -> asyncio.Lock:
    """The lock web password sign-ins from ``addr`` on this counter take (one process;
    gone when no request holds it)."""
    lock = _SIGN_IN_LOCKS.get((addr, surface))
    if lock is None:
        lock = _SIGN_IN_LOCKS[(addr, surface)] = asyncio.Lock()
    return lock


def _sign(key: bytes, data: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()
    mac = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _unsign(key: bytes, value: str) -> dict[str, Any] | None:
    body, _, mac = value.rpartition(".")
    good = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    if not body or not hmac.compare_digest(mac, good):
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(body.encode()))
    except ValueError:
        return None
    if not isinstance(data, dict) or float(data.get("exp", 0)) < time.time():
        return None
    return data


def oidc_redirect_uri(request: Request, config: Config) -> str:
    base = config.reviews.url.rstrip("/") if config.reviews.url else str(request.base_url)
    return base.rstrip("/") + "/ui/oidc/callback"


@router.get("/login/oidc")
async def login_oidc(request: Request, next: str | None = None) -> Response:
    services = services_of(request)
    _web_sessions(services)
    if services.oidc is None:
        raise HTTPException(404, "single sign-on is not configured here (web.oidc)")
    try:
        started = await services.oidc.start(oidc_redirect_uri(request, services.config))
    except Exception as exc:  # the provider is down or answers nonsense
        log.warning("OIDC sign-in could not start: %s", exc)
        return _login_page(
            request,
            next_url=_safe_next(next),
            error=f"The identity provider could not be reached ({exc}). Try again later.",
            status=502,
        )
    pending = {
        "state": started.state,
        "nonce": started.nonce,
        "verifier": started.verifier,
        "next": _safe_next(next),
        "exp": time.time() + OIDC_PENDING_SECONDS,
    }
    response = RedirectResponse(started.url, status_code=303)
    response.set_cookie(
        OIDC_COOKIE,
        _sign(services.web_key, pending),
        max_age=int(OIDC_PENDING_SECONDS),
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request, services.config),
        path="/ui",
    )
    return response


@router.get("/oidc/callback", name="oidc_callback")
async def oidc_callback(
    request: Request,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
) -> Response:
    services = services_of(request)
    sessions = _web_sessions(services)
    if services.oidc is None:
        raise HTTPException(404, "single sign-on is not configured here (web.oidc)")
    pending = _unsign(services.web_key, request.cookies.get(OIDC_COOKIE, ""))
    next_url = _safe_next(pending.get("next") if pending else None)
    if error:
        detail = f"{error}: {error_description}" if error_description else error
        return _login_page(
            request,
            next_url=next_url,
            error=f"The identity provider said no ({detail}).",
            status=401,
        )
    if pending is None or not state or not hmac.compare_digest(state, str(pending["state"])):
        return _login_page(
            request,
            next_url=next_url,
            error="The sign-in took too long or did not start here. Try again.",
            status=400,
        )
    if not code:
        return _login_page(request, next_url=next_url, error="No code came back.", status=400)
    addr = _addr(request)
    try:
        identity = await services.oidc.finish(
            oidc_redirect_uri(request, services.config),
            code,
            verifier=str(pending["verifier"]),
            nonce=str(pending["nonce"]),
        )
    except Exception as exc:
        log.warning("OIDC sign-in failed from %s: %s", addr, exc)
        return _login_page(
            request, next_url=next_url, error=f"Single sign-on failed: {exc}", status=401
        )
    principal = human_principal(services.config, identity.username, identity.groups, "oidc")
    if principal is None:
        error = sign_in_refusal(services.config, identity.username)
        return _login_page(request, next_url=next_url, error=error, status=403)
    secret, info = await asyncio.to_thread(
        sessions.create, principal.name, identity.groups, "oidc", addr
    )
    log.info("web sign-in: %s (oidc) from %s, session %s", principal.name, addr, info.id)
    return _start_session(request, secret, next_url)


@router.post("/logout")
async def logout(request: Request, me: UiPost) -> Response:
    services = services_of(request)
    await asyncio.to_thread(_web_sessions(services).end, me.session.id)
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(session_cookie_name(cookie_secure(request, services.config)), path="/")
    return response
