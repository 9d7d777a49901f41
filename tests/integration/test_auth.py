"""Who may connect: wardgate tokens over SCRAM (or cleartext inside TLS), revocation,
rate limiting, roles per connection, TLS to the gateway, and startup parameters that
would set server state the policy never sees."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PG_USER
from tests.integration.conftest import Gateway, base_config, make_gateway, require_tool
from tests.integration.pg_cluster import RawClient, make_self_signed, startup_error
from wardgate.identity.scram import ScramClient
from wardgate.identity.tokens import VERIFIER_CACHE_SECONDS
from wardgate.postgres.codec import build

GENERIC = (
    'wardgate: authentication failed for principal "{}": the token is wrong, revoked, '
    "or the principal does not exist"
)


@pytest.fixture(scope="module")
def auth_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A private gateway whose limiter tolerates this module's deliberate failures."""
    config = base_config(it_database).replace("login_failures: 5,", "login_failures: 100,")
    assert "login_failures: 100," in config
    gw = make_gateway(tmp_path_factory.mktemp("auth-gw"), config)
    gw.start()
    yield gw
    gw.stop()


def _wrong(token: str) -> str:
    return token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")


# -- tokens ---------------------------------------------------------------------------


def test_wrong_token_is_28p01_with_generic_message(auth_gw: Gateway) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(
            auth_gw.dsn("dev").replace(auth_gw.token("dev"), _wrong(auth_gw.token("dev")))
        )
    assert GENERIC.format("dev") in str(info.value)
    fields = startup_error(auth_gw.port, "dev", _wrong(auth_gw.token("dev")), "it")
    assert fields["C"] == "28P01"
    assert fields["M"] == GENERIC.format("dev")


def _scram_until_server_first(gw: Gateway, principal: str) -> str:
    """Start a SCRAM exchange and stop after the server-first-message (no failure recorded)."""
    with RawClient(gw.port) as client:
        client.send(build.startup_message({"user": principal, "database": "it"}))
        assert client.read_message().auth_code == 10
        client.send(
            build.sasl_initial_response(ScramClient.mechanism, ScramClient("x").client_first())
        )
        msg = client.read_message()
        assert msg.type == "R" and msg.auth_code == 11, msg
        return msg.body[4:].decode()


def test_unknown_principal_looks_like_a_wrong_token(auth_gw: Gateway) -> None:
    known = startup_error(auth_gw.port, "dev", "wg_not-the-token", "it")
    unknown = startup_error(auth_gw.port, "ghost", "wg_not-the-token", "it")
    assert unknown["C"] == known["C"] == "28P01"
    assert unknown["M"] == GENERIC.format("ghost")
    assert unknown["M"].replace('"ghost"', '"dev"') == known["M"]
    assert unknown.keys() == known.keys()
    # The SCRAM exchange itself gives nothing away: a salt that is stable per name and
    # the same iteration count as a real principal's.
    auth_gw.token("dev")
    dev = dict(p.split("=", 1) for p in _scram_until_server_first(auth_gw, "dev").split(",")[1:])
    ghost1 = dict(
        p.split("=", 1) for p in _scram_until_server_first(auth_gw, "ghost").split(",")[1:]
    )
    ghost2 = dict(
        p.split("=", 1) for p in _scram_until_server_first(auth_gw, "ghost").split(",")[1:]
    )
    assert ghost1["s"] == ghost2["s"]
    assert ghost1["i"] == dev["i"]
    assert len(ghost1["s"]) == len(dev["s"])


def test_revoked_token_is_refused(auth_gw: Gateway) -> None:
    out = auth_gw.cli("token", "create", "dev", "--name", "to-revoke").stdout
    token = out.strip().splitlines()[-1]
    with psycopg.connect(auth_gw.dsn("dev").replace(auth_gw.token("dev"), token)) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    listed = json.loads(auth_gw.cli("token", "list", "--principal", "dev", "--json").stdout)
    (entry,) = [t for t in listed if t["name"] == "to-revoke"]
    assert entry["active"] is True
    auth_gw.cli("token", "revoke", entry["id"])
    # Revoked by another process (the CLI): a gateway process that read the principal's
    # keys a moment ago refuses it within VERIFIER_CACHE_SECONDS, not later.
    deadline = time.monotonic() + VERIFIER_CACHE_SECONDS + 0.5
    while True:
        with RawClient(auth_gw.port) as raw:
            messages = raw.login("dev", token, "it")
        if messages and messages[-1].type == "E" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert messages[-1].type == "E", "a revoked token kept working past the cache bound"
    fields = startup_error(auth_gw.port, "dev", token, "it")
    assert fields["C"] == "28P01"
    assert fields["M"] == GENERIC.format("dev")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(auth_gw.dsn("dev").replace(auth_gw.token("dev"), token))
    # The principal's other token is untouched.
    with psycopg.connect(auth_gw.dsn("dev")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_a_token_created_after_a_login_works_at_once(auth_gw: Gateway) -> None:
    """The gateway keeps a principal's keys for a moment after a login; a token created
    meanwhile (by the CLI, another process) still logs in at once."""
    with psycopg.connect(auth_gw.dsn("dev")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    out = auth_gw.cli("token", "create", "dev", "--name", "fresh").stdout
    fresh = out.strip().splitlines()[-1]
    started = time.monotonic()
    with psycopg.connect(auth_gw.dsn("dev").replace(auth_gw.token("dev"), fresh)) as conn:
        assert conn.execute("select current_user").fetchone() is not None
    assert time.monotonic() - started < VERIFIER_CACHE_SECONDS
    listed = json.loads(auth_gw.cli("token", "list", "--principal", "dev", "--json").stdout)
    (entry,) = [t for t in listed if t["name"] == "fresh"]
    auth_gw.cli("token", "revoke", entry["id"])


def test_principal_without_role_on_connection(auth_gw: Gateway) -> None:
    with pytest.raises(
        psycopg.OperationalError, match='principal "outsider" has no role on connection "it"'
    ):
        psycopg.connect(auth_gw.dsn("outsider"))
    fields = startup_error(auth_gw.port, "outsider", auth_gw.token("outsider"), "it")
    assert fields["C"] == "42501"


def test_unknown_connection(auth_gw: Gateway) -> None:
    with pytest.raises(psycopg.OperationalError, match='connection "nowhere" does not exist'):
        psycopg.connect(auth_gw.dsn("dev", "nowhere"))
    fields = startup_error(auth_gw.port, "dev", auth_gw.token("dev"), "nowhere")
    assert fields["C"] == "3D000"
    assert "H" in fields  # tells the user what the database name means here


def _psql(gw: Gateway, principal: str, token: str) -> subprocess.CompletedProcess[str]:
    """Real psql with libpq's default sslmode=prefer: TLS first and, after an
    authentication error, the same login again in plain text."""
    env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "prefer", "PGCONNECT_TIMEOUT": "60"}
    argv = [require_tool("psql"), "-X", "-At", "-h", "127.0.0.1", "-p", str(gw.port)]
    argv += ["-U", principal, "-d", "it", "-c", "select 'in'"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def _failures(gw: Gateway) -> dict[str, int]:
    db = sqlite3.connect(gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
    try:
        return dict(db.execute("select key, count from login_failures").fetchall())
    finally:
        db.close()


def _login_from(gw: Gateway, principal: str, token: str, source: str) -> Any:
    """The last message answering a login from the loopback address ``source``."""
    client = RawClient.__new__(RawClient)
    client.received = bytearray()
    client.sock = socket.create_connection(
        ("127.0.0.1", gw.port), timeout=90, source_address=(source, 0)
    )
    with client:
        return client.login(principal, token, "it")[-1]


def _timed_login(gw: Gateway, principal: str, token: str, source: str) -> tuple[str, float]:
    t0 = time.monotonic()
    last = _login_from(gw, principal, token, source)
    return last.type if last.type != "E" else last.fields["C"], time.monotonic() - t0


def test_bad_psql_calls_do_not_lock_out_the_right_token(own_gateway: Gateway) -> None:
    """Three bad psql calls (each TLS, then plain text) once locked every principal on
    127.0.0.1 out for a minute. Now each call counts once, and the right token works."""
    gw = own_gateway
    wrong = _wrong(gw.token("dev"))
    for _ in range(3):
        bad = _psql(gw, "dev", wrong)
        assert bad.returncode != 0 and "authentication failed" in bad.stderr, bad.stderr
        assert bad.stderr.count("authentication failed") == 2  # libpq did retry in plain text
    counts = _failures(gw)
    assert counts["pa:127.0.0.1:dev"] == 3 and counts["addr:127.0.0.1"] == 3, counts
    ok = _psql(gw, "dev", gw.token("dev"))
    assert ok.returncode == 0 and ok.stdout.strip() == "in", ok.stderr
    assert _psql(gw, "reviewer", gw.token("reviewer")).stdout.strip() == "in"
    assert "pa:127.0.0.1:dev" not in _failures(gw)  # the right token cleared its count


def test_a_guesser_is_slowed_and_the_owner_is_not(own_gateway: Gateway) -> None:
    gw = own_gateway  # login_failures 5 per (principal, address); 20 per address
    token = gw.token("reviewer")
    answers = [_timed_login(gw, "reviewer", _wrong(token), "127.0.0.2") for _ in range(6)]
    assert [code for code, _ in answers] == ["28P01"] * 6
    assert all(took < 1 for _, took in answers[:4]), answers
    assert answers[4][1] >= 1 and answers[5][1] >= 2, answers  # 1 s, then 2 s
    # the approver whose name is being guessed, from their own address: at once
    code, took = _timed_login(gw, "reviewer", token, "127.0.0.1")
    assert code == "Z" and took < 1
    # even from the guesser's address, the right token logs in, and at once
    code, took = _timed_login(gw, "reviewer", token, "127.0.0.2")
    assert code == "Z" and took < 1
    with psycopg.connect(gw.dsn("reviewer")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_past_the_address_threshold_a_right_token_still_logs_in(
    own_gateway: Gateway,
) -> None:
    """Past address_failures, SCRAM logins from the address are still checked (cheap):
    the flooder's wrong tokens wait login_max_delay (tests/integration/test_attack17.py),
    a right token logs in at once. Refusing them let an agent lock out everyone on its
    address, and on loopback that is everyone (attack17)."""
    gw = own_gateway
    token = gw.token("dev")
    for i in range(20):  # a different name each time: never slowed, but counted
        assert _timed_login(gw, f"guess{i}", "x" * 40, "127.0.0.3")[0] == "28P01"
    assert _failures(gw)["addr:127.0.0.3"] == 20
    code, took = _timed_login(gw, "dev", token, "127.0.0.3")
    assert code == "Z" and took < 5
    assert _timed_login(gw, "dev", token, "127.0.0.1")[0] == "Z"  # other addresses: fine


# -- cleartext tokens only inside TLS ---------------------------------------------------


@pytest.fixture(scope="module")
def password_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = make_gateway(
        tmp_path_factory.mktemp("password-gw"), "client_auth: password\n" + base_config(it_database)
    )
    gw.start()
    yield gw
    gw.stop()


def test_cleartext_password_over_tls(password_gw: Gateway) -> None:
    gw = password_gw
    with RawClient(gw.port) as client:
        client.start_tls()
        client.send(build.startup_message({"user": "dev", "database": "it"}))
        msg = client.read_message()
        assert msg.type == "R" and msg.auth_code == 3, (
            "expected AuthenticationCleartextPassword over TLS"
        )
        client.send(build.password_message(gw.token("dev")))
        assert client.read_until("Z")[-1].type == "Z"
    with psycopg.connect(gw.dsn("dev", sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
    with RawClient(gw.port) as client:
        client.start_tls()
        messages = client.login("dev", _wrong(gw.token("dev")), "it")
        assert messages[-1].type == "E" and messages[-1].fields["C"] == "28P01"


def test_cleartext_falls_back_to_scram_without_tls(password_gw: Gateway) -> None:
    gw = password_gw
    with RawClient(gw.port) as client:
        client.send(build.startup_message({"user": "dev", "database": "it"}))
        msg = client.read_message()
        assert msg.type == "R" and msg.auth_code == 10, (
            "a token must never be asked for in cleartext without TLS"
        )
    with psycopg.connect(gw.dsn("dev", sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


# -- TLS to the gateway -----------------------------------------------------------------


def _gateway_cert(gw: Gateway) -> Path:
    cert = gw.workdir / ".wardgate" / "tls" / "server.crt"
    assert cert.exists(), f"no generated certificate at {cert}"
    return cert


def test_tls_require(auth_gw: Gateway) -> None:
    with psycopg.connect(auth_gw.dsn("dev", sslmode="require")) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_tls_verify_full_with_generated_cert(auth_gw: Gateway, host: str) -> None:
    dsn = auth_gw.dsn("dev", sslmode="verify-full", sslrootcert=str(_gateway_cert(auth_gw)))
    with psycopg.connect(dsn, host=host) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)


def test_tls_verify_full_with_wrong_root_fails(auth_gw: Gateway, tmp_path: Path) -> None:
    other, _ = make_self_signed(tmp_path, "someone else")
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(auth_gw.dsn("dev", sslmode="verify-full", sslrootcert=str(other)))


def test_tls_handshake_offers_modern_protocol(auth_gw: Gateway) -> None:
    with RawClient(auth_gw.port) as client:
        client.start_tls()
        assert isinstance(client.sock, ssl.SSLSocket)
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")


# -- startup parameters -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"options": "-c role=postgres"}, "startup option 'role' is not allowed"),
        (
            {"options": "-c default_transaction_read_only=off"},
            "startup option 'default_transaction_read_only' is not allowed",
        ),
        (
            {"options": "--session-authorization=postgres"},
            "startup option 'session_authorization' is not allowed",
        ),
        (
            {"options": "-c search_path=public -c role=postgres"},
            "startup option 'role' is not allowed",
        ),
        ({"replication": "true"}, "replication connections are not supported"),
        ({"replication": "database"}, "replication connections are not supported"),
    ],
)
def test_policy_bypassing_startup_parameters_are_refused(
    auth_gw: Gateway, params: dict[str, str], expected: str
) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(make_conninfo(auth_gw.dsn("dev"), **params))
    assert expected in str(info.value)
    fields = startup_error(auth_gw.port, "dev", auth_gw.token("dev"), "it", **params)
    assert fields["C"] == "42501"
    assert expected in fields["M"]


@pytest.mark.parametrize(
    "name", ["role", "session_authorization", "default_transaction_read_only", "is_superuser"]
)
def test_raw_startup_parameters_are_refused(auth_gw: Gateway, name: str) -> None:
    """Parameters libpq would never send, but a hand-made client can."""
    fields = startup_error(auth_gw.port, "dev", auth_gw.token("dev"), "it", **{name: "postgres"})
    assert fields["C"] == "42501"
    assert f"startup parameter {name!r} is not allowed" in fields["M"]


def test_allowed_startup_options(auth_gw: Gateway) -> None:
    with psycopg.connect(
        auth_gw.dsn("dev"), options="-c search_path=public -c statement_timeout=5s"
    ) as conn:
        assert conn.execute("show search_path").fetchone() == ("public",)
        assert conn.execute("show statement_timeout").fetchone() == ("5s",)
        assert conn.execute("select current_user").fetchone() == (PG_USER,)
