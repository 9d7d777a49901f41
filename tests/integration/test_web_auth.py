"""Signing humans in to the web UI with local passwords: cookies, CSRF, timeouts,
rate limiting, and agents kept out. (OIDC sign-in: test_oidc.py and test_web_e2e.py.)"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import Gateway, base_config, make_gateway

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery"
CSRF = re.compile(r'name="csrf"\s+value="([^"]+)"')


def started(tmp: Path, config: str) -> Gateway:
    gw = make_gateway(tmp, config)
    gw.cli("user", "add", "reviewer", "--password-stdin", input=PASSWORD + "\n")
    gw.start()
    return gw


@pytest.fixture(scope="module")
def web_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Shared by the tests that neither fail sign-ins on purpose nor wait out a timeout."""
    gw = started(tmp_path_factory.mktemp("web"), base_config(it_database))
    yield gw
    gw.stop()


@pytest.fixture
def own_web_gw(it_database: str, tmp_path: Path) -> Iterator[Gateway]:
    gw = started(tmp_path, base_config(it_database) + "web: {session_idle: 3s}\n")
    yield gw
    gw.stop()


def ui(gw: Gateway) -> httpx.Client:
    return httpx.Client(base_url=f"http://127.0.0.1:{gw.api_port}", timeout=15)


def form_token(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text
    return found.group(1)


def sign_in(client: httpx.Client, user: str, password: str, **extra: str) -> httpx.Response:
    page = client.get("/ui/login")
    assert page.status_code == 200
    data = {"username": user, "password": password, "csrf": form_token(page), **extra}
    return client.post("/ui/login", data=data)


def test_user_add_is_for_humans_only(web_gw: Gateway) -> None:
    agent = web_gw.cli("user", "add", "agent", "--password-stdin", input=PASSWORD, check=False)
    assert agent.returncode != 0 and "agents never sign in" in agent.stderr
    ghost = web_gw.cli("user", "add", "ghost", "--password-stdin", input=PASSWORD, check=False)
    assert ghost.returncode != 0 and "unknown principal 'ghost'" in ghost.stderr
    short = web_gw.cli("user", "add", "dev", "--password-stdin", input="short\n", check=False)
    assert short.returncode != 0 and "at least 12" in short.stderr
    assert "reviewer" in web_gw.cli("user", "list").stdout


def test_password_sign_in_sets_a_safe_cookie_and_signs_out(web_gw: Gateway) -> None:
    with ui(web_gw) as client:
        first = client.get("/ui/reviews")
        assert first.status_code == 303
        assert first.headers["location"] == "/ui/login?next=%2Fui%2Freviews"

        done = sign_in(client, "reviewer", PASSWORD, next="/ui/sessions")
        assert done.status_code == 303 and done.headers["location"] == "/ui/sessions"
        cookie = done.headers["set-cookie"]
        assert "wardgate_session=wgs_" in cookie
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie

        page = client.get("/ui/reviews")
        assert page.status_code == 200 and "reviewer" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["x-content-type-options"] == "nosniff"

        # Errors on pages are pages; the API keeps problem details.
        missing = client.get("/ui/no-such-page")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(
            "text/html"
        )
        api_missing = client.get("/api/v1/no-such-thing")
        assert api_missing.headers["content-type"] == "application/problem+json"

        # Signing out needs the session's CSRF token, then the cookie opens nothing.
        forged = client.post("/ui/logout")
        assert forged.status_code == 403 and "CSRF check failed" in forged.text
        assert forged.headers["content-type"].startswith("text/html")
        out = client.post("/ui/logout", data={"csrf": form_token(page)})
        assert out.status_code == 303
        client.cookies.clear()
        client.cookies.set("wardgate_session", cookie.split(";")[0].split("=", 1)[1])
        assert client.get("/ui/reviews").status_code == 303


def test_open_redirects_are_refused(web_gw: Gateway) -> None:
    with ui(web_gw) as client:
        done = sign_in(client, "reviewer", PASSWORD, next="https://evil.example/")
        assert done.headers["location"] == "/ui/reviews"


def test_login_form_needs_its_csrf_cookie(web_gw: Gateway) -> None:
    with ui(web_gw) as client:
        page = client.get("/ui/login")
        token = form_token(page)
        client.cookies.clear()  # a cross-site form post carries no SameSite=Strict cookie
        forged = client.post(
            "/ui/login", data={"username": "reviewer", "password": PASSWORD, "csrf": token}
        )
        assert forged.status_code == 403 and "another site" in forged.text
        assert "set-cookie" not in forged.headers or "wgs_" not in forged.headers["set-cookie"]


def test_agents_cannot_sign_in_and_bearer_tokens_do_not_open_the_ui(web_gw: Gateway) -> None:
    with ui(web_gw) as client:
        refused = sign_in(client, "agent", PASSWORD)
        assert refused.status_code == 403
        assert "agents cannot sign in to the web UI" in refused.text
        bearer = {"Authorization": f"Bearer {web_gw.token('agent')}"}
        assert client.get("/ui/reviews", headers=bearer).status_code == 303
        assert client.get("/api/v1/whoami", headers=bearer).status_code == 200


def test_wrong_passwords_are_slowed_and_the_right_one_still_signs_in(
    own_web_gw: Gateway,
) -> None:
    with ui(own_web_gw) as client:
        took = []
        for _ in range(6):
            t0 = time.monotonic()
            assert sign_in(client, "reviewer", "wrong password!").status_code == 401
            took.append(time.monotonic() - t0)
        assert took[4] >= 1 and took[5] >= 2, took  # login_failures 5: then 1 s, 2 s
        t0 = time.monotonic()
        signed = sign_in(client, "reviewer", PASSWORD)  # not locked out, not slowed
        assert signed.status_code == 303 and "wgs_" in signed.headers.get("set-cookie", "")
        assert time.monotonic() - t0 < 1
    with ui(own_web_gw) as client:  # the address threshold (20) refuses everyone
        for i in range(14):
            assert sign_in(client, f"guess{i}", "wrong password!").status_code == 401
        limited = sign_in(client, "dev", PASSWORD)
        assert limited.status_code == 429 and "Too many failed sign-ins" in limited.text
        assert "wgs_" not in limited.headers.get("set-cookie", "")


def test_idle_sessions_end_and_a_new_password_signs_out(own_web_gw: Gateway) -> None:
    web_gw = own_web_gw
    with ui(web_gw) as client:
        assert sign_in(client, "reviewer", PASSWORD).status_code == 303
        assert client.get("/ui/reviews").status_code == 200
        time.sleep(3.2)  # web.session_idle is 3 s
        assert client.get("/ui/reviews").status_code == 303

        assert sign_in(client, "reviewer", PASSWORD).status_code == 303
        assert client.get("/ui/reviews").status_code == 200
        out = web_gw.cli("user", "add", "reviewer", "--password-stdin", input=PASSWORD + "!\n")
        assert "1 open web session(s) signed out" in out.stdout
        assert client.get("/ui/reviews").status_code == 303


def test_secure_cookie_when_configured(it_database: str, tmp_path: Path) -> None:
    gw = started(tmp_path, base_config(it_database) + "web: {cookie_secure: true}\n")
    try:
        with ui(gw) as client:
            page = client.get("/ui/login")
            assert "Secure" in page.headers["set-cookie"]
            done = client.post(
                "/ui/login",
                data={"username": "reviewer", "password": PASSWORD, "csrf": form_token(page)},
                headers={"Cookie": page.headers["set-cookie"].split(";")[0]},
            )
            assert done.status_code == 303
            cookie = done.headers["set-cookie"]
            assert cookie.startswith("__Host-wardgate=wgs_") and "Secure" in cookie
    finally:
        gw.stop()
