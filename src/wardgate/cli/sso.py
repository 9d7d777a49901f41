"""``wardgate login --sso``: a human signs in at the gateway's identity provider from a
terminal, and the CLI trades the ID token for a wardgate sign-in session.

The gateway names the provider and the CLI's client id (``GET /api/v1/auth/oidc``).
The CLI is a public client (RFC 8252, no secret): it uses the device authorization
grant (RFC 8628) when the provider offers one, else the authorization code flow with
PKCE, the provider redirecting the browser to a one-shot listener on 127.0.0.1 on an
ephemeral port. The state must come back unchanged, the ID token must carry the nonce.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import os
import sys
import webbrowser
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
from pydantic import ValidationError

from wardgate.cli.client import (
    ApiRefusal,
    OidcLogin,
    Profile,
    _fail,
    anonymous,
    open_session,
)
from wardgate.config import OidcConfig
from wardgate.identity.oidc import OidcClient, OidcError
from wardgate.visible import visible

LOGIN_TIMEOUT = 300.0  # for the human to finish at the provider
CALLBACK_PATH = "/callback"
CALLBACK_READ_TIMEOUT = 10.0
MAX_CALLBACK_REQUEST = 16 * 1024

Say = Callable[[str], None]


def provider_of(url: str) -> OidcConfig | None:
    """The gateway's identity provider as the CLI's client sees it, or None when the
    gateway has no single sign-on."""
    try:
        info = anonymous(url, "GET", "auth/oidc")
    except ApiRefusal as exc:
        if exc.status == 404:
            return None
        _fail(f"the gateway could not start single sign-on: {exc}")
    try:
        return OidcConfig(issuer=info["issuer"], client_id=info["client_id"], scopes=info["scopes"])
    except (ValidationError, KeyError, TypeError):
        _fail(f"the answer from {url} about single sign-on is malformed: is that the wardgate API?")


def sign_in(url: str, provider: OidcConfig, *, browser: bool, say: Say) -> Profile:
    """Sign in at the provider, open a session at the gateway; the login to save."""
    say(f"signing in to {url} at {visible(provider.issuer)}")
    try:
        tokens, token_endpoint = asyncio.run(_at_provider(provider, browser=browser, say=say))
    except OidcError as exc:
        _fail(f"single sign-on failed: {visible(exc)}")
    session = open_session(url, {"id_token": tokens["id_token"]})
    login = OidcLogin(
        provider.issuer,
        provider.client_id,
        token_endpoint,
        refresh_token=tokens.get("refresh_token"),
        id_token=tokens["id_token"],
    )
    return Profile(url, str(session["token"]), str(session["principal"]), login)


async def _at_provider(
    provider: OidcConfig, *, browser: bool, say: Say
) -> tuple[dict[str, Any], str]:
    client = OidcClient(provider, None)
    try:
        metadata = await client.metadata()
        if "device_authorization_endpoint" in metadata:
            tokens = await _device_flow(client, browser=browser, say=say)
            await client.verify_id_token(tokens["id_token"])
        else:
            tokens, nonce = await _loopback_flow(client, browser=browser, say=say)
            await client.verify_id_token(tokens["id_token"], nonce=nonce)
        return tokens, str(metadata["token_endpoint"])
    finally:
        await client.aclose()


def _graphical() -> bool:
    # Without a display, webbrowser falls back to text browsers (lynx, w3m) that would
    # take over this terminal: the printed URL is better there.
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


async def _open(url: str, browser: bool) -> None:
    if browser and _graphical():
        # May block a moment while it starts the browser.
        await asyncio.to_thread(webbrowser.open, url)


async def _device_flow(client: OidcClient, *, browser: bool, say: Say) -> dict[str, Any]:
    device = await client.start_device()
    say(
        f"\nTo sign in, open {visible(device.verification_uri)}\n"
        f"and enter the code: {visible(device.user_code)}\n"
    )
    if device.verification_uri_complete:
        say(f"(or open {visible(device.verification_uri_complete)})\n")
        await _open(device.verification_uri_complete, browser)
    else:
        await _open(device.verification_uri, browser)
    say("waiting for the sign-in to complete...")
    return await client.poll_device(device)


async def _loopback_flow(
    client: OidcClient, *, browser: bool, say: Say
) -> tuple[dict[str, Any], str]:
    receiver = CallbackReceiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        redirect_uri = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        started = await client.start(redirect_uri)
        receiver.state = started.state
        say(f"\nOpen this URL in a browser to sign in:\n\n  {visible(started.url)}\n")
        await _open(started.url, browser)
        say("waiting for the browser to come back...")
        try:
            async with asyncio.timeout(LOGIN_TIMEOUT):
                answer = await receiver.answer
        except TimeoutError:
            raise OidcError(
                f"no answer from the browser within {LOGIN_TIMEOUT:g} s: run "
                "`wardgate login --sso` again"
            ) from None
    finally:
        server.close()
    if answer.error:
        raise OidcError(f"the identity provider said no ({answer.error})")
    tokens = await client.redeem(redirect_uri, answer.code, verifier=started.verifier)
    return tokens, started.nonce


@dataclass(frozen=True)
class CallbackAnswer:
    code: str = field(repr=False)
    error: str = ""


class CallbackReceiver:
    """The one request the provider's redirect makes to the loopback listener. Requests
    with another path or state (another tab, a stale link, a scanner) are answered
    and ignored; the first matching one ends the wait."""

    def __init__(self) -> None:
        self.state = ""
        self.answer: asyncio.Future[CallbackAnswer] = asyncio.get_running_loop().create_future()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_CALLBACK_REQUEST)
        try:
            async with asyncio.timeout(CALLBACK_READ_TIMEOUT):
                request = await _read_request(conn, reader)
                if request is None:
                    return
                status, text = self.respond(request.method, request.target)
                page = (
                    "<!doctype html><meta charset=utf-8><title>wardgate</title>"
                    f"<p>{html.escape(text)}</p>"
                ).encode()
                headers = [
                    ("content-type", "text/html; charset=utf-8"),
                    ("content-length", str(len(page))),
                    ("cache-control", "no-store"),
                    ("referrer-policy", "no-referrer"),
                    ("connection", "close"),
                ]
                events = (
                    h11.Response(status_code=status, headers=headers),
                    h11.Data(data=page),
                    h11.EndOfMessage(),
                )
                writer.write(b"".join(conn.send(e) or b"" for e in events))
                await writer.drain()
        except (h11.ProtocolError, TimeoutError, OSError):
            pass
        finally:
            writer.close()

    def respond(self, method: bytes, target: bytes) -> tuple[int, str]:
        """The status and text for one request; sets ``answer`` on the right one."""
        parts = urlsplit(target.decode("ascii", "replace"))
        if parts.path != CALLBACK_PATH:
            return 404, "Not found."
        if method != b"GET":
            return 405, "Method not allowed."
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        state, error = query.get("state", ""), query.get("error")
        # Some providers drop the state from error answers; an error only ends the wait,
        # so one without a state is taken. A code needs the state.
        stateless_error = bool(error) and "state" not in query
        ours = bool(self.state) and bool(state) and hmac.compare_digest(state, self.state)
        if not (ours or stateless_error):
            return 400, "This answer does not belong to the sign-in wardgate is waiting for."
        if self.answer.done():
            return 409, "This sign-in is already complete: you can close this tab."
        if error:
            description = query.get("error_description", "")
            reason = visible(f"{error}: {description}" if description else error)[:200]
            self.answer.set_result(CallbackAnswer("", reason))
            return 401, f"Sign-in failed ({reason}). Return to the terminal."
        code = query.get("code")
        if not code:
            return 400, "The identity provider sent no code."
        self.answer.set_result(CallbackAnswer(code))
        return 200, "Signed in to wardgate. You can close this tab and return to the terminal."


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(4096))
            continue
        if isinstance(event, h11.Request):
            return event
        return None
