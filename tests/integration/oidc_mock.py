"""A real OpenID Connect provider on loopback for tests: oidc-provider-mock 0.3.4
(authlib + Flask), run in a subprocess on 127.0.0.1.

tests/integration/conftest.py registers the ``oidc_provider`` fixture (session scope)::

    from tests.integration.oidc_mock import OidcProvider

    def test_sign_in(oidc_provider: OidcProvider) -> None:
        oidc_provider.set_user("u-1", {"preferred_username": "dev", "groups": ["eng"]})
        config = f"web: {{oidc: {{issuer: {oidc_provider.issuer}, client_id: wardgate}}}}"
        ...  # the client under test sends the browser to an authorization URL
        location = oidc_provider.authorize(authorization_url, "u-1")
        ...  # follow `location`: the redirect back to the client, code and state in it

What the provider does:

- ``issuer`` is ``http://127.0.0.1:PORT``. The mock derives the issuer from the Host
  header, so always reach it by that address (never ``localhost``).
- Any client id is accepted, with any client secret (``client_secret_basic`` or
  ``_post``) or none at all (a public client). Any redirect URI is accepted.
- Users are whatever `OidcProvider.set_user` says: their claims go into the ID token
  and userinfo (``preferred_username`` needs the ``profile`` scope; custom claims such
  as ``groups`` are always included). An unknown subject signs in with just an email.
- ID tokens are RS256 with one key, for an hour; refresh tokens are issued. A refresh
  answer carries no ID token (OpenID Connect Core 12.2 allows that).
- No device authorization grant.

Two things are added to the stock mock, so it behaves like the providers wardgate
meets: public clients (``token_endpoint_auth_method: none``) may redeem codes and
refresh tokens, and PKCE (RFC 7636) is enforced: a code requested with a
``code_challenge`` is only redeemed with the matching ``code_verifier``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

START_TIMEOUT = 30.0


@dataclass
class OidcProvider:
    """A running provider and the helpers that play its administrator and its users."""

    issuer: str
    log_path: Path
    last_subject: str | None = field(default=None, repr=False)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metadata(self) -> dict[str, Any]:
        """The discovery document."""
        response = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def set_user(self, sub: str, claims: Mapping[str, Any]) -> None:
        """Create or replace the user ``sub`` with these claims (``preferred_username``,
        ``groups``, ``email``...). Takes effect for new tokens and for userinfo."""
        response = httpx.put(f"{self.issuer}/users/{quote(sub, safe='')}", json=dict(claims))
        assert response.status_code == 204, response.text
        self.last_subject = sub

    def revoke_tokens(self, sub: str) -> None:
        """Revoke every access and refresh token of ``sub`` (a refresh then fails)."""
        response = httpx.post(f"{self.issuer}/users/{quote(sub, safe='')}/revoke-tokens")
        assert response.status_code == 204, response.text

    def authorize(self, url: str, sub: str | None = None) -> str:
        """Play the human at the provider: open the authorization ``url`` a client sent
        the browser to, sign in as ``sub`` (default: the last user set), and return
        where the provider redirects the browser (the client's redirect URI, with
        ``code`` and ``state``). Fails the test if the provider rejects the request."""
        subject = sub or self.last_subject
        assert subject, "set_user() first, or name the subject"
        return self._answer(url, {"sub": subject})

    def deny(self, url: str) -> str:
        """Decline at the provider; returns the redirect (``error=access_denied``)."""
        return self._answer(url, {"action": "deny"})

    def _answer(self, url: str, form: dict[str, str]) -> str:
        assert url.startswith(self.issuer + "/"), f"{url!r} is not at {self.issuer}"
        with httpx.Client(timeout=10, follow_redirects=False) as http:
            page = http.get(url)
            if page.status_code != 200:
                raise AssertionError(
                    f"the provider rejected the authorization request "
                    f"({page.status_code}): {page.text[:1000]}"
                )
            answer = http.post(url, data=form)
        if answer.status_code not in (302, 303) or "location" not in answer.headers:
            raise AssertionError(
                f"the provider did not redirect back ({answer.status_code}): {answer.text[:1000]}"
            )
        return answer.headers["location"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    # Imported when called: this file also runs as the provider's own script, where the
    # tests package is not importable.
    from tests.conftest import stop_process as stop

    stop(proc)


def start_provider(workdir: Path) -> tuple[OidcProvider, subprocess.Popen[bytes]]:
    """Start a provider process; the caller stops it (`stop_process`)."""
    port = _free_port()
    issuer = f"http://127.0.0.1:{port}"
    log_path = workdir / "oidc-provider.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NO_COLOR": "1"},
        )
    provider = OidcProvider(issuer, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"the OIDC provider exited ({proc.returncode}):\n{provider.log}")
        try:
            metadata = provider.metadata()
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                stop_process(proc)
                raise AssertionError(f"the OIDC provider did not start:\n{provider.log}") from None
            time.sleep(0.1)
    assert metadata["issuer"] == issuer, metadata
    return provider, proc


@pytest.fixture(scope="session")
def oidc_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    """One provider for the run; tests keep apart by using their own subjects."""
    provider, proc = start_provider(tmp_path_factory.mktemp("oidc-provider"))
    try:
        yield provider
    finally:
        stop_process(proc)


# -- the provider process -------------------------------------------------------------


def _serve(port: int) -> None:  # pragma: no cover - runs in the subprocess
    import dataclasses

    import uvicorn
    from authlib.oauth2.rfc7636 import CodeChallenge
    from oidc_provider_mock import _app, _storage

    @dataclasses.dataclass(kw_only=True, frozen=True)
    class PkceCode(_storage.AuthorizationCode):
        code_challenge: str | None = None
        code_challenge_method: str | None = None

    class CodeGrant(_app.AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

        def __init__(self, request: Any, server: Any) -> None:
            super().__init__(request, server)
            CodeChallenge(required=True)(self)

        def save_authorization_code(self, code: str, request: Any) -> None:
            super().save_authorization_code(code, request)
            saved = _app.storage.get_authorization_code(code)
            data = request.payload.data
            _app.storage.store_authorization_code(
                PkceCode(
                    **{f.name: getattr(saved, f.name) for f in dataclasses.fields(saved)},
                    code_challenge=data.get("code_challenge"),
                    code_challenge_method=data.get("code_challenge_method"),
                )
            )

    class RefreshGrant(_app.RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    # The blueprint registers the grant classes it finds in its module when the app is
    # made, and checks grants against them by isinstance.
    _app.AuthorizationCodeGrant = CodeGrant
    _app.RefreshTokenGrant = RefreshGrant
    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
    uvicorn.run(
        _app.app(),
        interface="wsgi",
        host="127.0.0.1",
        port=port,
        log_config=None,
        log_level="warning",
    )


if __name__ == "__main__":  # pragma: no cover
    _serve(int(sys.argv[1]))
