"""Single sign-on end to end: a real gateway, the real `wardgate` CLI and a real OpenID
Connect provider (oidc-provider-mock, see oidc_mock.py) on loopback.

`wardgate login --sso` takes the loopback redirect path here (the mock has no device
flow; that one is tested in tests/unit/test_oidc.py against a MockTransport).
"""

from __future__ import annotations

import json
import queue
import stat
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.integration.conftest import WARDGATE, Gateway, base_config, make_gateway
from tests.integration.oidc_mock import OidcProvider
from wardgate.config import OidcConfig
from wardgate.identity.oidc import OidcClient

pytestmark = pytest.mark.integration

GROUPS = "{idp-approvers: [approvers], idp-eng: [engineers]}"


def sso_config(database: str, issuer: str, *, unlisted: bool = False, failures: int = 100) -> str:
    text = base_config(database).replace(
        "login_failures: 5,", f"login_failures: {failures}, address_failures: {failures},"
    )
    assert f"address_failures: {failures}," in text
    return text + textwrap.dedent(
        f"""\
        web:
          oidc:
            issuer: {issuer}
            client_id: wardgate
            groups_claim: groups
            groups: {GROUPS}
            allow_unlisted_users: {str(unlisted).lower()}
        """
    )


def api(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.api_port}"


@pytest.fixture(scope="module")
def sso_gateway(
    it_database: str,
    oidc_provider: OidcProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    gw = make_gateway(
        tmp_path_factory.mktemp("sso-gateway"), sso_config(it_database, oidc_provider.issuer)
    )
    gw.start()
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def open_gateway(
    it_database: str,
    oidc_provider: OidcProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    """Signs in humans the configuration does not list (allow_unlisted_users)."""
    gw = make_gateway(
        tmp_path_factory.mktemp("sso-open-gateway"),
        sso_config(it_database, oidc_provider.issuer, unlisted=True),
    )
    gw.start()
    yield gw
    gw.stop()


@dataclass
class Cli:
    gw: Gateway
    profile: Path

    @property
    def env(self) -> dict[str, str]:
        env = {**self.gw.env, "WARDGATE_PROFILE": str(self.profile)}
        for name in ("WARDGATE_TOKEN", "WARDGATE_URL"):
            env.pop(name, None)
        return env

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [WARDGATE, *args], env=self.env, capture_output=True, text=True, timeout=60
        )

    def saved(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.profile.read_text())
        return data


@dataclass
class LoginResult:
    returncode: int
    stdout: str
    stderr: str
    callback: httpx.Response | None
    location: str


def sso_login(cli: Cli, provider: OidcProvider, sub: str) -> LoginResult:
    """Run `wardgate login --sso --no-browser`, play the human at the provider with the
    URL it prints, and let the browser's redirect reach the CLI's loopback listener."""
    with subprocess.Popen(
        [WARDGATE, "login", "--url", api(cli.gw), "--sso", "--no-browser"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        return _drive(proc, provider, sub)


def _drive(proc: subprocess.Popen[str], provider: OidcProvider, sub: str) -> LoginResult:
    lines: queue.Queue[str | None] = queue.Queue()
    err: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    callback, location = None, ""
    try:
        deadline = time.monotonic() + 30
        url = None
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.strip().startswith(provider.issuer + "/oauth2/authorize?"):
                url = line.strip()
        if url is not None:
            location = provider.authorize(url, sub)
            assert location.startswith("http://127.0.0.1:"), location
            callback = httpx.get(location, timeout=10)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    reader.join(10)
    assert proc.stdout is not None
    return LoginResult(proc.returncode, proc.stdout.read(), "".join(err), callback, location)


def no_secrets_in(result: LoginResult, cli: Cli) -> None:
    output = result.stdout + result.stderr
    code = parse_qs(urlsplit(result.location).query).get("code", [""])[0]
    assert code and code not in output
    if cli.profile.exists():
        saved = cli.saved()
        for secret in (saved["token"], saved["oidc"]["refresh_token"], saved["oidc"]["id_token"]):
            assert secret and secret not in output


def whoami(cli: Cli) -> dict[str, Any]:
    result = cli.run("whoami", "--json")
    assert result.returncode == 0, result.stderr
    me: dict[str, Any] = json.loads(result.stdout)
    return me


# -- the sign-in endpoints -----------------------------------------------------------


def test_the_gateway_tells_the_cli_where_to_sign_in(
    sso_gateway: Gateway,
    gateway: Gateway,
    oidc_provider: OidcProvider,
) -> None:
    info = httpx.get(api(sso_gateway) + "/api/v1/auth/oidc", timeout=10)
    assert info.status_code == 200
    assert info.json() == {
        "issuer": oidc_provider.issuer,
        "client_id": "wardgate",
        "scopes": ["openid", "profile", "email"],
    }
    none = httpx.get(api(gateway) + "/api/v1/auth/oidc", timeout=10)
    assert none.status_code == 404
    assert none.headers["content-type"] == "application/problem+json"
    assert "not configured" in none.json()["detail"]


# -- wardgate login --sso ------------------------------------------------------------


def test_cli_login_by_loopback_redirect(
    sso_gateway: Gateway,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    oidc_provider.set_user(
        "it-dev", {"preferred_username": "dev", "groups": ["idp-approvers", "idp-unknown"]}
    )
    cli = Cli(sso_gateway, tmp_path / "cfg" / "profile.json")
    result = sso_login(cli, oidc_provider, "it-dev")
    assert result.returncode == 0, result.stderr
    assert result.callback is not None and result.callback.status_code == 200
    assert "Signed in to wardgate" in result.callback.text
    assert result.stdout.strip() == (
        f"logged in to {api(sso_gateway)} as dev (user, single sign-on at {oidc_provider.issuer})"
    )
    no_secrets_in(result, cli)

    assert stat.S_IMODE(cli.profile.stat().st_mode) == 0o600
    saved = cli.saved()
    assert saved["url"] == api(sso_gateway) and saved["principal"] == "dev"
    assert saved["token"].startswith("wgs_")
    assert saved["oidc"]["issuer"] == oidc_provider.issuer
    assert saved["oidc"]["client_id"] == "wardgate"
    assert saved["oidc"]["token_endpoint"] == oidc_provider.issuer + "/oauth2/token"
    assert saved["oidc"]["refresh_token"]

    me = whoami(cli)
    assert me["principal"] == "dev" and me["kind"] == "user"
    # dev is in engineers by configuration, in approvers by the provider's group.
    assert me["groups"] == ["approvers", "engineers"]
    assert me["token_id"].startswith("web:ws_")
    text = cli.run("whoami")
    assert "in approvers, engineers" in text.stdout

    listed = cli.run("reviews", "list")
    assert listed.returncode == 0, listed.stderr

    out = cli.run("logout")
    assert out.returncode == 0 and "ended the sign-in session" in out.stdout
    assert not cli.profile.exists()
    gone = httpx.get(
        api(sso_gateway) + "/api/v1/whoami",
        headers={"Authorization": f"Bearer {saved['token']}"},
        timeout=10,
    )
    assert gone.status_code == 401
    assert "wardgate login --sso" in gone.json()["detail"]
    log = sso_gateway.log
    assert saved["token"] not in log and saved["oidc"]["refresh_token"] not in log
    assert saved["oidc"]["id_token"] not in log


def _end_session(gw: Gateway, token: str) -> None:
    ended = httpx.post(
        api(gw) + "/api/v1/auth/logout", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert ended.status_code == 200, ended.text
    assert ended.json()["ended"].startswith("ws_")
    again = httpx.get(
        api(gw) + "/api/v1/whoami", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert again.status_code == 401


def test_an_ended_session_is_renewed_transparently(
    sso_gateway: Gateway,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    oidc_provider.set_user("it-outsider", {"preferred_username": "outsider", "groups": []})
    cli = Cli(sso_gateway, tmp_path / "profile.json")
    result = sso_login(cli, oidc_provider, "it-outsider")
    assert result.returncode == 0, result.stderr
    first = cli.saved()
    before = whoami(cli)
    assert before["groups"] == []

    # The session ends (as after web.session_idle); meanwhile the provider puts the
    # human in a group.
    _end_session(sso_gateway, first["token"])
    oidc_provider.set_user(
        "it-outsider", {"preferred_username": "outsider", "groups": ["idp-approvers"]}
    )
    me = cli.run("whoami", "--json")
    assert me.returncode == 0, me.stderr
    assert me.stderr == ""
    renewed = json.loads(me.stdout)
    assert renewed["principal"] == "outsider" and renewed["groups"] == ["approvers"]
    second = cli.saved()
    assert second["token"].startswith("wgs_") and second["token"] != first["token"]
    assert renewed["token_id"].startswith("web:ws_") and renewed["token_id"] != before["token_id"]
    assert stat.S_IMODE(cli.profile.stat().st_mode) == 0o600
    for secret in (first["token"], second["token"], second["oidc"]["refresh_token"]):
        assert secret not in me.stdout + me.stderr

    # The provider revokes the refresh token: renewing fails, and says what to do.
    oidc_provider.revoke_tokens("it-outsider")
    _end_session(sso_gateway, second["token"])
    failed = cli.run("reviews", "list")
    assert failed.returncode == 2
    assert "your sign-in expired: run `wardgate login --sso`" in failed.stderr
    assert second["oidc"]["refresh_token"] not in failed.stderr


def test_an_agent_cannot_sign_in(
    sso_gateway: Gateway,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    oidc_provider.set_user("it-agent", {"preferred_username": "agent", "groups": []})
    cli = Cli(sso_gateway, tmp_path / "profile.json")
    result = sso_login(cli, oidc_provider, "it-agent")
    assert result.returncode == 2
    assert "'agent' is an agent, and agents cannot sign in" in result.stderr
    assert not cli.profile.exists()
    no_secrets_in(result, cli)


def test_an_unlisted_human_is_refused(
    sso_gateway: Gateway,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    oidc_provider.set_user("it-stranger", {"preferred_username": "stranger", "groups": []})
    cli = Cli(sso_gateway, tmp_path / "profile.json")
    result = sso_login(cli, oidc_provider, "it-stranger")
    assert result.returncode == 2
    assert "'stranger' is not a wardgate user here" in result.stderr
    assert "allow_unlisted_users" in result.stderr
    assert not cli.profile.exists()


def test_an_unlisted_human_signs_in_where_allowed(
    open_gateway: Gateway,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    oidc_provider.set_user(
        "it-stranger-2",
        {"preferred_username": "stranger", "groups": "idp-approvers idp-unknown"},
    )
    cli = Cli(open_gateway, tmp_path / "profile.json")
    result = sso_login(cli, oidc_provider, "it-stranger-2")
    assert result.returncode == 0, result.stderr
    me = whoami(cli)
    assert me["principal"] == "stranger" and me["kind"] == "user"
    assert me["groups"] == ["approvers"]  # mapped groups only

    # Still no agent: the configuration lists it as one.
    oidc_provider.set_user("it-agent-2", {"preferred_username": "agent"})
    agent = sso_login(Cli(open_gateway, tmp_path / "agent.json"), oidc_provider, "it-agent-2")
    assert agent.returncode == 2 and "agents cannot sign in" in agent.stderr


def test_the_provider_saying_no(
    sso_gateway: Gateway,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    cli = Cli(sso_gateway, tmp_path / "profile.json")
    with subprocess.Popen(
        [WARDGATE, "login", "--url", api(sso_gateway), "--sso", "--no-browser"],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            assert proc.stderr is not None
            url = ""
            for line in proc.stderr:
                if line.strip().startswith(oidc_provider.issuer):
                    url = line.strip()
                    break
            location = oidc_provider.deny(url)
            assert httpx.get(location, timeout=10).status_code == 401
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert proc.returncode == 2
    assert "the identity provider said no (access_denied" in err
    assert not cli.profile.exists()


# -- the session endpoint itself -----------------------------------------------------


def _id_token_for(provider: OidcProvider, client_id: str, sub: str) -> str:
    """A real ID token from the provider for ``client_id`` (a code flow run here)."""
    import asyncio

    async def go() -> str:
        client = OidcClient(OidcConfig(issuer=provider.issuer, client_id=client_id), None)
        try:
            started = await client.start("http://127.0.0.1:9/cb")
            query = parse_qs(urlsplit(provider.authorize(started.url, sub)).query)
            tokens = await client.redeem(
                "http://127.0.0.1:9/cb", query["code"][0], verifier=started.verifier
            )
            return str(tokens["id_token"])
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_the_session_exchange_refuses_and_throttles(
    it_database: str,
    oidc_provider: OidcProvider,
    tmp_path: Path,
) -> None:
    gw = make_gateway(tmp_path / "gw", sso_config(it_database, oidc_provider.issuer, failures=5))
    gw.start()
    try:
        oidc_provider.set_user("it-dev-2", {"preferred_username": "dev"})
        url = api(gw) + "/api/v1/auth/oidc/session"
        good = _id_token_for(oidc_provider, "wardgate", "it-dev-2")
        opened = httpx.post(url, json={"id_token": good}, timeout=10)
        assert opened.status_code == 200, opened.text
        body = opened.json()
        assert body["token"].startswith("wgs_") and body["principal"] == "dev"
        assert set(body) == {"token", "session_id", "principal", "kind", "groups", "expires_at"}

        other = _id_token_for(oidc_provider, "someone-else", "it-dev-2")
        refused = httpx.post(url, json={"id_token": other}, timeout=10)
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert "issued for another client" in refused.json()["detail"]
        assert other not in refused.text

        # A tampered session secret opens nothing.
        forged = httpx.get(
            api(gw) + "/api/v1/whoami",
            headers={"Authorization": f"Bearer {body['token']}x"},
            timeout=10,
        )
        assert forged.status_code == 401

        statuses = [
            httpx.post(url, json={"id_token": "not.a.token"}, timeout=10).status_code
            for _ in range(5)
        ]
        # SSO sign-ins count on an address counter of their own (the forged bearer
        # above does not count towards it): the 6th SSO failure here is refused.
        assert statuses[:4] == [401] * 4 and statuses[-1] == 429, statuses
        assert "too many failed" in httpx.post(url, json={"id_token": good}, timeout=10).text
    finally:
        gw.stop()
    assert body["token"] not in gw.log and good not in gw.log


def test_a_browser_session_is_not_a_bearer(
    sso_gateway: Gateway,
    oidc_provider: OidcProvider,
) -> None:
    oidc_provider.set_user("it-reviewer", {"preferred_username": "reviewer"})
    with httpx.Client(base_url=api(sso_gateway), timeout=10) as browser:
        start = browser.get("/ui/login/oidc")
        assert start.status_code == 303, start.text
        callback = oidc_provider.authorize(start.headers["location"], "it-reviewer")
        done = browser.get(callback)
        assert done.status_code == 303, done.text
        secret = browser.cookies.get("wardgate_session")
        assert secret and secret.startswith("wgs_")
        page = browser.get("/ui/reviews")
        assert page.status_code == 200
    refused = httpx.get(
        api(sso_gateway) + "/api/v1/whoami",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert refused.status_code == 401
