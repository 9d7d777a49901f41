"""Who may connect: wardgate tokens over SCRAM (or cleartext inside TLS), revocation,
rate limiting, roles per connection, TLS to the gateway, and startup parameters that
would set server state the policy never sees."""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from tests.conftest import PG_USER
from tests.integration.conftest import Gateway, base_config, make_gateway
from tests.integration.pg_cluster import RawClient, make_self_signed, startup_error
from wardgate.identity.scram import ScramClient
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
    fields = startup_error(auth_gw.port, "dev", token, "it")
    assert fields["C"] == "28P01"
    assert fields["M"] == GENERIC.format("dev")
    with pytest.raises(psycopg.OperationalError, match="authentication failed"):
        psycopg.connect(auth_gw.dsn("dev").replace(auth_gw.token("dev"), token))
    # The principal's other token is untouched.
    with psycopg.connect(auth_gw.dsn("dev")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


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


def test_rate_limit_refuses_even_the_right_token(own_gateway: Gateway) -> None:
    gw = own_gateway
    token = gw.token("dev")
    for _ in range(5):
        assert startup_error(gw.port, "dev", _wrong(token), "it")["C"] == "28P01"
    with pytest.raises(psycopg.OperationalError, match="too many failed logins"):
        psycopg.connect(gw.dsn("dev"))
    fields = startup_error(gw.port, "dev", token, "it")
    assert fields["C"] == "28P01"
    assert "too many failed logins" in fields["M"]
    # The client address is throttled too: guessing another principal does not help.
    fields = startup_error(gw.port, "agent", gw.token("agent"), "it")
    assert "too many failed logins" in fields["M"]


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
