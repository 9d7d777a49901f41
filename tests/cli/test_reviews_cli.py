"""The approver's CLI (`login`, `reviews`, `grants`, `proposals`) against a real HTTP
server on 127.0.0.1 that answers the API contract with canned JSON and records every
request. The real API is tested end to end elsewhere.
"""

from __future__ import annotations

import json
import re
import socket
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from typer.testing import CliRunner, Result

from wardgate.cli.main import app

TOKEN = "wg_s3cret-token-for-tests-0123456789"
OTHER_TOKEN = "wg_another-token-9876543210"
ESC = "\x1b"


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class FakeApi:
    """Canned answers by (method, path under /api/v1), and the requests received."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any, str]] = {}
        self.seen: list[Seen] = []
        self.token = TOKEN
        self.url = ""

    def on(self, method: str, path: str, answer: Any, status: int = 200, ctype: str = "") -> None:
        self.routes[(method, "/api/v1" + path)] = (status, answer, ctype)

    @property
    def last(self) -> Seen:
        assert self.seen, "the API received no request"
        return self.seen[-1]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self, method: str) -> None:
        api = self.server.api
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = json.loads(raw) if raw else None
        api.seen.append(Seen(method, parts.path, parse_qs(parts.query), headers, body))
        if headers.get("authorization") != f"Bearer {api.token}":
            status, answer, ctype = 401, _problem(401, "Unauthorized", "invalid token"), ""
        else:
            missing = (404, _problem(404, "Not Found", f"nothing at {parts.path}"), "")
            status, answer, ctype = api.routes.get((method, parts.path), missing)
        data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
        if not ctype:
            ctype = "application/problem+json" if status >= 400 else "application/json"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    api: FakeApi
    daemon_threads = True


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.api = fake
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="fake-wardgate-api", daemon=True
    )
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def clean_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real login, token, URL or proxy leaks in; the saved login lives in tmp_path."""
    for var in ("WARDGATE_TOKEN", "WARDGATE_URL", "WARDGATE_PROFILE", "WARDGATE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")  # rich tables: no wrapping in assertions
    profile = tmp_path / "cfg" / "wardgate" / "profile.json"
    monkeypatch.setenv("WARDGATE_PROFILE", str(profile))
    return profile


def run(*args: str, input: str | None = None, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(app, list(args), input=input, env=env)
    assert TOKEN not in result.output and OTHER_TOKEN not in result.output
    assert "Traceback" not in result.output
    return result


def with_token(api: FakeApi, *args: str, token: str = TOKEN) -> Result:
    return run(*args, "--url", api.url, env={"WARDGATE_TOKEN": token})


def review(**changes: Any) -> dict[str, Any]:
    now = time.time()
    base: dict[str, Any] = {
        "id": "r_abcdefgh",
        "kind": "action",
        "status": "pending",
        "connection": "orders",
        "principal": "bot",
        "principal_kind": "agent",
        "sponsor": "alice",
        "protocol": "postgres",
        "session_id": "s_1",
        "client_addr": "127.0.0.1:50000",
        "text": "DELETE FROM orders WHERE created_at < $1",
        "detail": {"params": ["2024-01-01"]},
        "rule": "role:writer",
        "rules": ["role:writer"],
        "reason": "deletes need a DBA",
        "justification": None,
        "requirements": [{"groups": ["dba"], "quorum": 1}],
        "sponsor_may_approve": False,
        "created_at": now - 120,
        "expires_at": now + 780,
        "decided_at": None,
        "approved_until": None,
        "executed_at": None,
        "preview": {
            "kind": "explain",
            "estimated_rows": 42,
            "plan": "Delete on orders\n  ->  Seq Scan on orders",
        },
        "result": None,
        "votes": [],
        "url": "http://127.0.0.1:8080/reviews/r_abcdefgh",
        "can_vote": True,
        "still_needed": ["1 more from dba"],
    }
    return {**base, **changes}


def grant(**changes: Any) -> dict[str, Any]:
    return review(
        **{
            "id": "r_grant001",
            "kind": "grant",
            "principal": "dev",
            "principal_kind": "user",
            "sponsor": None,
            "protocol": "api",
            "session_id": "",
            "client_addr": "",
            "text": "grant role engineer on orders for 30m",
            "detail": {"role": "engineer", "duration": 1800.0},
            "rule": "grant-request",
            "rules": ["grant-request"],
            "justification": "fix the stuck invoices",
            "preview": None,
            **changes,
        }
    )


def vote(voter: str, decision: str, reason: str = "") -> dict[str, Any]:
    return {"voter": voter, "decision": decision, "reason": reason, "at": time.time()}


# -- reviews ------------------------------------------------------------------------


def test_list_prints_a_table_of_pending_reviews(api: FakeApi) -> None:
    api.on("GET", "/reviews", {"reviews": [review(), grant()]})
    result = with_token(api, "reviews", "list")
    assert result.exit_code == 0, result.output
    header, *rows = (re.split(r"\s{2,}", line.strip()) for line in result.stdout.splitlines())
    assert header == [
        "id",
        "kind",
        "status",
        "requester",
        "connection",
        "rule",
        "age",
        "expires",
        "statement",
    ]
    assert rows == [
        [
            "r_abcdefgh",
            "action",
            "pending",
            "bot (agent of alice)",
            "orders",
            "role:writer",
            "2m",
            "12m",
            "DELETE FROM orders WHERE created_at < $1",
        ],
        [
            "r_grant001",
            "grant",
            "pending",
            "dev",
            "orders",
            "grant-request",
            "2m",
            "12m",
            "grant role engineer on orders for 30m",
        ],
    ]
    seen = api.last
    assert (seen.method, seen.path) == ("GET", "/api/v1/reviews")
    assert seen.query == {"status": ["pending"]}
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"


def test_list_filters_and_json(api: FakeApi) -> None:
    listed = [grant(status="approved", approved_until=time.time() + 600)]
    api.on("GET", "/reviews", {"reviews": listed})
    result = with_token(
        api,
        "reviews",
        "list",
        "--status",
        "all",
        "--kind",
        "grant",
        "--principal",
        "dev",
        "--connection",
        "orders",
        "--limit",
        "5",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == listed
    assert api.last.query == {
        "kind": ["grant"],
        "principal": ["dev"],
        "connection": ["orders"],
        "limit": ["5"],
    }


def test_list_with_nothing_pending(api: FakeApi) -> None:
    api.on("GET", "/reviews", {"reviews": []})
    result = with_token(api, "reviews", "list")
    assert result.exit_code == 0 and result.stdout.strip() == "no pending reviews"


def test_list_refuses_an_unknown_status_before_asking(api: FakeApi) -> None:
    result = with_token(api, "reviews", "list", "--status", "maybe")
    assert result.exit_code == 2 and api.seen == []


def test_show_gives_a_reviewer_everything(api: FakeApi) -> None:
    api.on(
        "GET",
        "/reviews/r_abcdefgh",
        review(votes=[vote("carol", "approve", "ok by me")], justification="cleanup ticket 7"),
    )
    result = with_token(api, "reviews", "show", "r_abcdefgh")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for expected in (
        "r_abcdefgh  action, pending",
        "bot (agent of alice) [agent]",
        "orders via postgres, session s_1, from 127.0.0.1:50000",
        "role:writer",
        "deletes need a DBA",
        "cleanup ticket 7",
        "still needed: 1 more from dba; the sponsor alice may not approve",
        "carol approved",
        "ok by me",
        "DELETE FROM orders WHERE created_at < $1",
        '$1 = "2024-01-01"',
        "planner estimate: 42 rows",
        "Seq Scan on orders",
        "http://127.0.0.1:8080/reviews/r_abcdefgh",
        "can vote: wardgate reviews approve|deny r_abcdefgh",
    ):
        assert expected in out, expected
    assert api.last.path == "/api/v1/reviews/r_abcdefgh"


def test_show_json_is_the_raw_review(api: FakeApi) -> None:
    api.on("GET", "/reviews/r_abcdefgh", review())
    result = with_token(api, "reviews", "show", "r_abcdefgh", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["id"] == "r_abcdefgh"


def test_show_never_sends_terminal_controls_from_the_requester(api: FakeApi) -> None:
    # An agent must not be able to hide part of its statement from the approver.
    sneaky = "SELECT 1;\x1b[2K\rDROP TABLE orders; -- \u202eevil"
    api.on("GET", "/reviews/r_abcdefgh", review(text=sneaky, reason="\x1b]0;title\x07"))
    result = with_token(api, "reviews", "show", "r_abcdefgh")
    assert result.exit_code == 0, result.output
    assert ESC not in result.output and "\u202e" not in result.output
    assert "\\x1b[2K\\rDROP TABLE orders" in result.stdout and "\\u202eevil" in result.stdout
    listed = with_token(api, "reviews", "list")
    assert ESC not in listed.output


def test_show_quotes_the_id_into_one_path_segment(api: FakeApi) -> None:
    result = with_token(api, "reviews", "show", "../grants")
    assert result.exit_code == 2
    assert api.last.path == "/api/v1/reviews/..%2Fgrants"


def test_approve_sends_the_vote_and_says_what_happens_next(api: FakeApi) -> None:
    approved = review(
        status="approved",
        votes=[vote("carol", "approve", "looks fine")],
        approved_until=time.time() + 300,
        can_vote=False,
        still_needed=[],
    )
    api.on("POST", "/reviews/r_abcdefgh/approve", approved)
    result = with_token(api, "reviews", "approve", "r_abcdefgh", "--reason", "looks fine")
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith(
        "r_abcdefgh approved: approved by carol; bot's statement can now run once (until "
    )
    seen = api.last
    assert (seen.method, seen.path) == ("POST", "/api/v1/reviews/r_abcdefgh/approve")
    assert seen.body == {"reason": "looks fine"}
    assert seen.headers["authorization"] == f"Bearer {TOKEN}"
    assert seen.headers["content-type"] == "application/json"


def test_approve_with_quorum_left(api: FakeApi) -> None:
    partial = review(votes=[vote("carol", "approve")], can_vote=False)
    api.on("POST", "/reviews/r_abcdefgh/approve", partial)
    result = with_token(api, "reviews", "approve", "r_abcdefgh")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "r_abcdefgh: approval recorded, still needed: 1 more from dba"
    assert api.last.body == {"reason": ""}


def test_deny_and_cancel(api: FakeApi) -> None:
    denied = review(status="denied", votes=[vote("carol", "deny", "too broad")])
    api.on("POST", "/reviews/r_abcdefgh/deny", denied)
    result = with_token(api, "reviews", "deny", "r_abcdefgh", "--reason", "too broad")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "r_abcdefgh denied by carol: too broad"
    assert (api.last.path, api.last.body) == (
        "/api/v1/reviews/r_abcdefgh/deny",
        {"reason": "too broad"},
    )

    api.on("POST", "/reviews/r_abcdefgh/cancel", review(status="cancelled"))
    result = with_token(api, "reviews", "cancel", "r_abcdefgh")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "r_abcdefgh cancelled"
    assert (api.last.method, api.last.path) == ("POST", "/api/v1/reviews/r_abcdefgh/cancel")


# -- failures -----------------------------------------------------------------------


def test_problem_details_are_printed_with_exit_2(api: FakeApi) -> None:
    detail = (
        "you requested this review; segregation of duties means a different human "
        "must approve or deny it"
    )
    api.on("POST", "/reviews/r_abcdefgh/approve", _problem(409, "Conflict", detail), 409)
    result = with_token(api, "reviews", "approve", "r_abcdefgh")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {detail}"
    assert result.stdout == ""


def test_an_error_that_is_not_a_problem(api: FakeApi) -> None:
    api.on("GET", "/reviews", "<html>upstream broke</html>", 502, "text/html")
    result = with_token(api, "reviews", "list")
    assert result.exit_code == 2
    assert f"the API at {api.url} answered 502 Bad Gateway: <html>upstream" in result.stderr


def test_a_refused_token(api: FakeApi) -> None:
    result = with_token(api, "reviews", "list", token=OTHER_TOKEN)
    assert result.exit_code == 2
    assert "the API refused the token in WARDGATE_TOKEN (wrong, revoked" in result.stderr
    assert api.last.headers["authorization"] == f"Bearer {OTHER_TOKEN}"


def test_an_unreachable_api() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    result = run("reviews", "list", "--url", url, env={"WARDGATE_TOKEN": TOKEN})
    assert result.exit_code == 2
    assert f"cannot reach the wardgate API at {url}: " in result.stderr
    assert "is `wardgate serve` running?" in result.stderr


def test_without_a_token() -> None:
    result = run("reviews", "list")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: not logged in: set WARDGATE_TOKEN or run `wardgate login`"
    )


def test_a_bad_url() -> None:
    result = run("reviews", "list", "--url", "127.0.0.1:8080", env={"WARDGATE_TOKEN": TOKEN})
    assert result.exit_code == 2 and "must look like http://HOST:PORT" in result.stderr


# -- login --------------------------------------------------------------------------


def _login(api: FakeApi, *extra: str) -> Result:
    api.on(
        "GET",
        "/whoami",
        {
            "principal": "carol",
            "kind": "user",
            "groups": ["dba"],
            "sponsor": None,
            "token_id": "tok_1",
        },
    )
    return run("login", *extra, input=TOKEN + "\n")


def test_login_saves_a_private_profile_that_later_commands_use(
    api: FakeApi, clean_env: Path
) -> None:
    result = _login(api, "--url", api.url + "/")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"logged in to {api.url} as carol (user)"
    assert api.last.path == "/api/v1/whoami"
    assert api.last.headers["authorization"] == f"Bearer {TOKEN}"
    assert stat.S_IMODE(clean_env.stat().st_mode) == 0o600
    assert stat.S_IMODE(clean_env.parent.stat().st_mode) == 0o700
    assert json.loads(clean_env.read_text()) == {
        "url": api.url,
        "token": TOKEN,
        "principal": "carol",
    }

    api.on("GET", "/reviews", {"reviews": [review()]})
    listed = run("reviews", "list")  # no --url, no WARDGATE_TOKEN
    assert listed.exit_code == 0, listed.output
    assert "r_abcdefgh" in listed.stdout
    assert api.last.headers["authorization"] == f"Bearer {TOKEN}"

    me = run("whoami")
    assert me.exit_code == 0, me.output
    assert me.stdout.strip() == f"carol (user) at {api.url}, in dba, token tok_1"

    out = run("logout")
    assert out.exit_code == 0 and "logged out" in out.stdout
    assert not clean_env.exists()
    again = run("reviews", "list")
    assert again.exit_code == 2 and "not logged in" in again.stderr


def test_login_defaults_to_the_xdg_config_dir(
    api: FakeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WARDGATE_PROFILE")
    result = _login(api, "--url", api.url)
    assert result.exit_code == 0, result.output
    saved = tmp_path / "xdg" / "wardgate" / "profile.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert stat.S_IMODE(saved.parent.stat().st_mode) == 0o700


def test_login_with_a_refused_token_saves_nothing(api: FakeApi, clean_env: Path) -> None:
    api.token = OTHER_TOKEN
    result = _login(api, "--url", api.url)
    assert result.exit_code == 2
    assert "the API refused the token" in result.stderr
    assert not clean_env.exists()


def test_login_without_a_token(api: FakeApi) -> None:
    result = run("login", "--url", api.url, input="")
    assert result.exit_code == 2 and "no token given" in result.stderr
    assert api.seen == []


def test_the_environment_token_overrides_the_saved_one(api: FakeApi) -> None:
    assert _login(api, "--url", api.url).exit_code == 0
    api.token = OTHER_TOKEN
    api.on("GET", "/reviews", {"reviews": []})
    result = run("reviews", "list", env={"WARDGATE_TOKEN": OTHER_TOKEN})
    assert result.exit_code == 0, result.output
    assert api.last.headers["authorization"] == f"Bearer {OTHER_TOKEN}"


def test_the_saved_token_goes_only_to_its_own_url(api: FakeApi) -> None:
    assert _login(api, "--url", api.url).exit_code == 0
    before = len(api.seen)
    result = run("reviews", "list", "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert f"not logged in to http://127.0.0.1:9 (the saved login is for {api.url})" in (
        result.stderr
    )
    assert len(api.seen) == before


def test_a_damaged_profile(clean_env: Path) -> None:
    clean_env.parent.mkdir(parents=True)
    clean_env.write_text("{not json")
    clean_env.chmod(0o600)
    result = run("reviews", "list")
    assert result.exit_code == 2 and "is damaged: run `wardgate login` again" in result.stderr


# -- grants -------------------------------------------------------------------------


def test_grants_request(api: FakeApi) -> None:
    api.on("POST", "/grants", grant(), 201)
    result = with_token(
        api,
        "grants",
        "request",
        "--connection",
        "orders",
        "--role",
        "engineer",
        "--for",
        "30m",
        "--reason",
        "fix the stuck invoices",
    )
    assert result.exit_code == 0, result.output
    assert api.last.body == {
        "connection": "orders",
        "role": "engineer",
        "duration": "30m",
        "reason": "fix the stuck invoices",
    }
    assert result.stdout.splitlines()[0] == (
        "requested role engineer on orders for 30m: r_grant001 pending, "
        "still needed: 1 more from dba"
    )


def test_grants_request_checks_the_duration_first(api: FakeApi) -> None:
    result = with_token(
        api,
        "grants",
        "request",
        "--connection",
        "orders",
        "--role",
        "engineer",
        "--for",
        "soon",
        "--reason",
        "x",
    )
    assert result.exit_code == 2
    assert "--for takes a duration such as 30m" in result.stderr
    assert api.seen == []


def test_grants_list_and_revoke(api: FakeApi) -> None:
    active = grant(status="approved", approved_until=time.time() + 900)
    api.on("GET", "/grants", {"grants": [active]})
    result = with_token(api, "grants", "list")
    assert result.exit_code == 0, result.output
    assert "r_grant001" in result.stdout and "engineer" in result.stdout
    assert "30m" in result.stdout and "fix the stuck invoices" in result.stdout
    assert api.last.query == {"active": ["true"]}

    everything = with_token(api, "grants", "list", "--all", "--json")
    assert everything.exit_code == 0 and json.loads(everything.stdout) == [active]
    assert api.last.query == {"active": ["false"]}

    api.on("POST", "/grants/r_grant001/revoke", grant(status="revoked"))
    revoked = with_token(api, "grants", "revoke", "r_grant001", "--reason", "done")
    assert revoked.exit_code == 0, revoked.output
    assert revoked.stdout.strip() == (
        "r_grant001 revoked: dev no longer has role engineer on orders"
    )
    assert (api.last.path, api.last.body) == (
        "/api/v1/grants/r_grant001/revoke",
        {"reason": "done"},
    )


# -- proposals ----------------------------------------------------------------------


def _proposal(statements: list[str]) -> dict[str, Any]:
    return review(
        id="r_prop0001",
        kind="proposal",
        principal="dev",
        principal_kind="user",
        sponsor=None,
        protocol="api",
        text=";\n".join(statements),
        detail={"statements": statements},
        rule="proposal",
        rules=["proposal"],
        justification="add the index",
        preview=None,
    )


def test_proposals_submit_splits_a_file(api: FakeApi, tmp_path: Path) -> None:
    sql = tmp_path / "change.sql"
    sql.write_text(
        "CREATE INDEX orders_created ON orders (created_at);\n"
        "-- then backfill\n"
        "UPDATE orders SET status = 'late' WHERE id = 7;\n"
        "DELETE FROM carts WHERE id = 3\n"
    )
    api.on("POST", "/proposals", _proposal(["x"]), 201)
    result = with_token(
        api,
        "proposals",
        "submit",
        "--connection",
        "orders",
        "--file",
        str(sql),
        "--justification",
        "add the index",
    )
    assert result.exit_code == 0, result.output
    body = api.last.body
    assert body["connection"] == "orders" and body["justification"] == "add the index"
    statements = body["statements"]
    assert len(statements) == 3
    assert statements[0].startswith("CREATE INDEX orders_created")
    assert "UPDATE orders SET status = 'late' WHERE id = 7" in statements[1]
    assert statements[2] == "DELETE FROM carts WHERE id = 3"
    assert result.stdout.splitlines()[0].startswith("proposed 3 statements on orders: r_prop0001")


def test_proposals_submit_a_single_statement_twice(api: FakeApi, tmp_path: Path) -> None:
    # The classifier caches a lone statement's shape without its text; the file's
    # text is what must be sent, the first time and the next.
    sql = tmp_path / "one.sql"
    sql.write_text("UPDATE orders SET status = 'late' WHERE id = 8;\n")
    api.on("POST", "/proposals", _proposal(["x"]), 201)
    for _ in range(2):
        result = with_token(
            api,
            "proposals",
            "submit",
            "--connection",
            "orders",
            "-f",
            str(sql),
            "--justification",
            "j",
        )
        assert result.exit_code == 0, result.output
        assert api.last.body["statements"] == ["UPDATE orders SET status = 'late' WHERE id = 8"]


def test_proposals_submit_statements_and_refusals(api: FakeApi, tmp_path: Path) -> None:
    api.on("POST", "/proposals", _proposal(["x"]), 201)
    result = with_token(
        api,
        "proposals",
        "submit",
        "--connection",
        "orders",
        "--statement",
        "SELECT 1",
        "-s",
        "SELECT 2",
        "--justification",
        "j",
        "--json",
    )
    assert result.exit_code == 0, result.output
    assert api.last.body["statements"] == ["SELECT 1", "SELECT 2"]
    assert json.loads(result.stdout)["id"] == "r_prop0001"

    sent = len(api.seen)
    neither = with_token(api, "proposals", "submit", "--connection", "o", "--justification", "j")
    assert neither.exit_code == 2 and "--statement" in neither.stderr
    bad = tmp_path / "bad.sql"
    bad.write_text("SELEC nonsense;")
    unparsable = with_token(
        api, "proposals", "submit", "--connection", "o", "-f", str(bad), "--justification", "j"
    )
    assert unparsable.exit_code == 2 and "does not parse as SQL" in unparsable.stderr
    missing = with_token(
        api,
        "proposals",
        "submit",
        "--connection",
        "o",
        "-f",
        str(tmp_path / "nope.sql"),
        "--justification",
        "j",
    )
    assert missing.exit_code == 2 and "nope.sql" in missing.stderr
    assert len(api.seen) == sent


def test_proposals_show(api: FakeApi) -> None:
    statements = ["CREATE INDEX i ON orders (created_at)", "UPDATE orders SET x = 1"]
    api.on(
        "GET",
        "/proposals/r_prop0001",
        _proposal(statements)
        | {"status": "executed", "result": {"ok": True, "rows": [0, 12]}, "can_vote": False},
    )
    result = with_token(api, "proposals", "show", "r_prop0001")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "statement 1 of 2:" in out and "statement 2 of 2:" in out
    assert "CREATE INDEX i ON orders (created_at)" in out and "UPDATE orders SET x = 1" in out
    assert "add the index" in out and '"rows": [' in out
    assert api.last.path == "/api/v1/proposals/r_prop0001"


LONG_STATEMENT = (
    "UPDATE stock SET qty = qty - 1 WHERE sku IN ("
    + ", ".join(f"'SKU-{i:05d}'" for i in range(14))
    + ") AND warehouse_identifier_with_a_very_long_name_indeed = 'north-east-7' AND qty <> 77777"
)
LONG_PARAMS = ["x" * 150 + "-end-of-param-1", 12345678901234567890, {"note": "y" * 90 + "!"}]


def _squeezed(text: str) -> str:
    return "".join(text.split())


@pytest.mark.parametrize("columns", ["40", "120", "200"])
def test_show_never_cuts_what_is_approved(
    api: FakeApi, monkeypatch: pytest.MonkeyPatch, columns: str
) -> None:
    """At any width the statement, every parameter, what it runs as and the ids are
    there in full, wrapped (today's bug: `qty <> 77777` shown as `qty <> 77`)."""
    monkeypatch.setenv("COLUMNS", columns)
    long_id = "r_" + "a" * 46
    session = "s_" + "0123456789abcdef" * 3
    api.on(
        "GET",
        f"/reviews/{long_id}",
        review(
            id=long_id,
            session_id=session,
            text=LONG_STATEMENT,
            detail={"params": LONG_PARAMS, "resolved": LONG_STATEMENT.replace("- 1", "- 2")},
        ),
    )
    result = with_token(api, "reviews", "show", long_id)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert max(len(line.rstrip()) for line in out.splitlines()) <= int(columns)
    squeezed = _squeezed(out)
    for whole in (
        LONG_STATEMENT,
        LONG_STATEMENT.replace("- 1", "- 2"),
        *(json.dumps(p) for p in LONG_PARAMS),
        long_id,
        session,
    ):
        assert _squeezed(whole) in squeezed, whole
    assert "…" not in out and "..." not in out
    assert "qty <> 77777" in out.replace("\n    ", " ")  # the end is on screen, not cut

    statements = [LONG_STATEMENT, "DELETE FROM t WHERE id = " + "9" * 80]
    api.on(
        "GET",
        "/reviews/r_prop",
        review(id="r_prop", kind="proposal", detail={"statements": statements}),
    )
    proposal = with_token(api, "reviews", "show", "r_prop")
    assert all(_squeezed(s) in _squeezed(proposal.stdout) for s in statements)
    # The list keeps every id whole, piped or not, at any width.
    api.on("GET", "/reviews", {"reviews": [review(id=long_id, text=LONG_STATEMENT)]})
    listed = with_token(api, "reviews", "list")
    assert long_id in listed.stdout, listed.stdout


def test_the_url_comes_from_the_configs_listen_api(api: FakeApi, tmp_path: Path) -> None:
    """README: `wardgate reviews list -c CONFIG` talks to the gateway that config serves
    when --url and WARDGATE_URL are not set; WARDGATE_URL still wins."""
    port = api.url.rsplit(":", 1)[1]
    config = tmp_path / "gw.yaml"
    config.write_text(f"listen: {{api: '0.0.0.0:{port}'}}\n")
    api.on("GET", "/reviews", {"reviews": [review(id="r_fromconfig")]})
    listed = run("reviews", "list", "-c", str(config), env={"WARDGATE_TOKEN": TOKEN})
    assert listed.exit_code == 0, listed.output
    assert "r_fromconfig" in listed.stdout
    elsewhere = run(
        "reviews",
        "list",
        "-c",
        str(config),
        env={"WARDGATE_TOKEN": TOKEN, "WARDGATE_URL": "http://127.0.0.1:9"},
    )
    assert elsewhere.exit_code == 2 and "127.0.0.1:9" in elsewhere.output
