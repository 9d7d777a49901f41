"""Hostile and broken clients on raw sockets: each gets a PostgreSQL-style FATAL error
(08P01 for protocol violations) and a closed connection, slow or silent clients are
dropped, and none of it disturbs the gateway or its other clients."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from tests.integration.pg_cluster import RawClient
from wardgate.identity.scram import ScramClient
from wardgate.postgres.codec import build

MAX_MESSAGE = 4 * 1024 * 1024  # base_config's limits.max_message_bytes


@pytest.fixture(scope="module")
def proto_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # Some cases below are failed logins: keep the limiter out of the way.
    config = base_config(it_database).replace("login_failures: 5,", "login_failures: 1000,")
    gw = make_gateway(tmp_path_factory.mktemp("proto-gw"), config)
    gw.start()
    yield gw
    alive = gw.proc is not None and gw.proc.poll() is None
    gw.stop()
    assert alive, f"the gateway died during the hostile-input tests:\n{gw.log}"


def _fatal(client: RawClient, code: str = "08P01") -> dict[str, str]:
    """The next message is a FATAL ErrorResponse with `code`, then the gateway closes."""
    msg = client.read_message()
    assert msg.type == "E", f"expected an ErrorResponse, got {msg}"
    fields = msg.fields
    assert fields["C"] == code, fields
    assert fields["V"] == "FATAL", fields
    assert client.is_closed(), "the gateway kept the connection open"
    return fields


def _logged_in(gw: Gateway, app: str) -> RawClient:
    client = RawClient(gw.port)
    messages = client.login("dev", gw.token("dev"), "it", application_name=app)
    assert messages[-1].type == "Z", messages
    return client


def _assert_upstream_released(app: str, timeout: float = 5.0) -> None:
    """The upstream backend of a killed session goes away too (no leaked server sessions)."""
    deadline = time.monotonic() + timeout
    with admin_conn() as admin:
        while admin.execute(
            "select 1 from pg_stat_activity where application_name = %s", (app,)
        ).fetchone():
            assert time.monotonic() < deadline, f"upstream session {app} outlived its client"
            time.sleep(0.05)


# -- the startup packet -------------------------------------------------------------------


def _packet(code: int, body: bytes) -> bytes:
    return struct.pack("!ii", 8 + len(body), code) + body


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n", id="http"),
        pytest.param(bytes.fromhex("160301020001"), id="tls-client-hello-without-sslrequest"),
        pytest.param(struct.pack("!ii", 8, 1234), id="unknown-request-code"),
        pytest.param(struct.pack("!ii", 4, 196608), id="length-below-minimum"),
        pytest.param(struct.pack("!ii", -1, 196608), id="negative-length"),
        pytest.param(_packet(0x00020000, b"user\x00x\x00\x00"), id="protocol-2"),
        pytest.param(build.startup_message({"user": "dev"})[:-1] + b"x", id="no-terminator"),
        pytest.param(_packet(196608, b"user\x00a\x00user\x00b\x00\x00"), id="duplicate-parameter"),
        pytest.param(_packet(196608, b"user\x00a\x00database"), id="truncated-parameters"),
        pytest.param(_packet(80877102, b"\x00\x00\x00\x01\x00\x00"), id="short-cancel-key"),
        pytest.param(_packet(80877103, b"\x00\x00"), id="sslrequest-with-body"),
        pytest.param(build.ssl_request()[:4] + b"\xff\xff\xff\xff", id="garbage-code"),
    ],
)
def test_garbage_startup_packet(proto_gw: Gateway, data: bytes) -> None:
    with RawClient(proto_gw.port) as client:
        client.send(data)
        fields = _fatal(client)
        assert fields["M"].startswith("wardgate: protocol violation"), fields


def test_newer_protocol_minor_is_negotiated_down(proto_gw: Gateway) -> None:
    """A 3.2 client (libpq 18 with max_protocol_version=3.2) is told "3.0", as PostgreSQL
    15 tells it, and the session goes on in 3.0."""
    with psycopg.connect(proto_gw.dsn("dev", max_protocol_version="3.2")) as conn:
        assert conn.info.pgconn.protocol_version == 3
        assert conn.execute("select 1").fetchone() == (1,)
    with RawClient(proto_gw.port) as client:
        client.send(
            build.startup_message(
                {"user": "dev", "database": "it", "_pq_.future": "on"}, protocol=(3 << 16) | 2
            )
        )
        msg = client.read_message()
        assert msg.type == "v", msg
        version, count = struct.unpack("!ii", msg.body[:8])
        assert (version >> 16, version & 0xFFFF) == (3, 0)
        assert count == 1 and msg.body[8:] == b"_pq_.future\x00"
        assert client.read_message().auth_code == 10  # authentication goes on


def test_unsupported_protocol_major_version(proto_gw: Gateway) -> None:
    with RawClient(proto_gw.port) as client:
        client.send(build.startup_message({"user": "dev", "database": "it"}, protocol=4 << 16))
        _fatal(client)


def test_oversized_startup_packet_header_alone(proto_gw: Gateway) -> None:
    """Refused on the length word, before the gateway buffers any of the body."""
    with RawClient(proto_gw.port) as client:
        client.send(struct.pack("!ii", 1_000_000, 196608))
        assert "invalid startup packet length" in _fatal(client)["M"]


def test_oversized_startup_packet_with_body(proto_gw: Gateway) -> None:
    with RawClient(proto_gw.port) as client:
        packet = build.startup_message(
            {"user": "dev", "database": "it", "application_name": "x" * 20_000}
        )
        try:
            client.send(packet)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while we were still sending: also fine, if the error came first
        _fatal(client)


def test_data_after_sslrequest_before_handshake_is_refused(proto_gw: Gateway) -> None:
    """CVE-2021-23214: plaintext queued behind an SSLRequest must not be trusted as if it
    came through TLS."""
    with RawClient(proto_gw.port) as client:
        client.send(build.ssl_request() + build.startup_message({"user": "dev", "database": "it"}))
        first = client.recv_exact(1)
        assert first != b"S", "the gateway started TLS with plaintext queued behind the SSLRequest"
        assert first == b"E"
        rest = client.recv_exact(4)
        (length,) = struct.unpack("!i", rest)
        body = client.recv_exact(length - 4)
        assert b"C08P01\x00" in body
        assert client.is_closed()


def test_second_sslrequest_inside_tls(proto_gw: Gateway) -> None:
    with RawClient(proto_gw.port) as client:
        client.start_tls()
        client.send(build.ssl_request())
        _fatal(client)


def test_broken_tls_handshakes_are_closed_quietly(proto_gw: Gateway) -> None:
    """Plaintext instead of a ClientHello, and a reset mid-handshake."""
    with RawClient(proto_gw.port) as client:
        client.send(build.ssl_request())
        assert client.recv_exact(1) == b"S"
        client.send(build.startup_message({"user": "dev", "database": "it"}))
        assert client.is_closed()
    with RawClient(proto_gw.port) as client:
        client.send(build.ssl_request())
        assert client.recv_exact(1) == b"S"
        client.send(b"\x16\x03\x01\x00\x05hello")  # a TLS record header, then nonsense
        assert client.is_closed()
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", proto_gw.port), timeout=5)
        sock.sendall(build.ssl_request())
        # Close with the 'S' unread and SO_LINGER 0: the gateway sees a reset.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    time.sleep(0.3)
    log = proto_gw.log
    assert "Traceback" not in log, log
    assert "TLS handshake with 127.0.0.1 failed" in log
    with psycopg.connect(proto_gw.dsn("dev", sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_gssencrequest_is_declined_and_startup_continues(proto_gw: Gateway) -> None:
    with RawClient(proto_gw.port) as client:
        client.send(struct.pack("!ii", 8, 80877104))
        assert client.recv_exact(1) == b"N"
        assert client.login("dev", proto_gw.token("dev"), "it")[-1].type == "Z"


# -- during authentication ------------------------------------------------------------------


def _after_startup(gw: Gateway) -> RawClient:
    client = RawClient(gw.port)
    client.send(build.startup_message({"user": "dev", "database": "it"}))
    msg = client.read_message()
    assert msg.type == "R" and msg.auth_code == 10
    return client


def test_query_instead_of_sasl_response(proto_gw: Gateway) -> None:
    with _after_startup(proto_gw) as client:
        client.send(build.query("select 1"))
        _fatal(client)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"SCRAM-SHA-256", id="no-nul"),
        pytest.param(b"SCRAM-SHA-256\x00\x00\x00\x00\x99n,,n=,r=abc", id="wrong-length"),
        pytest.param(
            b"SCRAM-SHA-256\x00" + struct.pack("!i", 5) + b"\xff\xfe\xfd\xfc\xfb", id="not-utf8"
        ),
        pytest.param(
            b"SCRAM-SHA-256-PLUS\x00" + struct.pack("!i", 9) + b"p=x,,n=,r", id="channel-binding"
        ),
        pytest.param(b"MD5\x00" + struct.pack("!i", 3) + b"abc", id="other-mechanism"),
        pytest.param(b"SCRAM-SHA-256\x00" + struct.pack("!i", 100_000) + b"n" * 100_000, id="huge"),
    ],
)
def test_malformed_sasl_is_a_failed_login(proto_gw: Gateway, payload: bytes) -> None:
    with _after_startup(proto_gw) as client:
        client.send(b"p" + struct.pack("!i", len(payload) + 4) + payload)
        _fatal(client, "28P01")


def test_garbage_client_final(proto_gw: Gateway) -> None:
    with _after_startup(proto_gw) as client:
        client.send(
            build.sasl_initial_response(ScramClient.mechanism, ScramClient("x").client_first())
        )
        assert client.read_message().auth_code == 11
        client.send(build.sasl_response(b"c=biws,r=not-the-nonce,p=AAAA"))
        _fatal(client, "28P01")


# -- after login ------------------------------------------------------------------------------


def test_message_over_max_message_bytes(proto_gw: Gateway) -> None:
    app = f"wg-proto-big-{uuid.uuid4().hex[:8]}"
    with _logged_in(proto_gw, app) as client:
        # Only the header: the limit is enforced before the body is read or buffered.
        client.send(b"Q" + struct.pack("!i", MAX_MESSAGE + 1))
        fields = _fatal(client)
        assert "exceeds limit" in fields["M"], fields
    _assert_upstream_released(app)


def test_oversized_message_sent_whole_still_gets_its_error(proto_gw: Gateway) -> None:
    """The client keeps sending the body after the gateway refused the header: the error
    must still reach it (closing on unread data would reset the connection first)."""
    app = f"wg-proto-bigbody-{uuid.uuid4().hex[:8]}"
    with _logged_in(proto_gw, app) as client:
        client.sock.settimeout(10)
        client.send(b"Q" + struct.pack("!i", MAX_MESSAGE + 1) + b"x" * (MAX_MESSAGE + 1))
        fields = _fatal(client)
        assert "exceeds limit" in fields["M"], fields
    _assert_upstream_released(app)


def test_message_just_under_the_limit_is_fine(proto_gw: Gateway) -> None:
    with _logged_in(proto_gw, "wg-proto-under") as client:
        sql = "select length('" + "x" * (1024 * 1024) + "')"
        replies = client.query(sql)
        assert [m.type for m in replies] == ["T", "D", "C", "Z"], replies
        assert replies[1].body.endswith(b"1048576")


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"@\x00\x00\x00\x04", id="unknown-type"),
        pytest.param(b"\x00\x00\x00\x00\x08\x00\x00\x00\x00", id="nul-type"),
        pytest.param(b"Q\x00\x00\x00\x02", id="length-below-4"),
        pytest.param(b"Q\x00\x00\x00\x08abcd", id="query-without-terminator"),
        pytest.param(build.password_message("again"), id="password-after-login"),
        pytest.param(build.startup_message({"user": "dev"}), id="startup-after-login"),
        pytest.param(b"B\x00\x00\x00\x0a\x00\x00\x00\x05\x00\x00", id="truncated-bind"),
    ],
)
def test_protocol_violation_after_login(proto_gw: Gateway, data: bytes) -> None:
    app = f"wg-proto-bad-{uuid.uuid4().hex[:8]}"
    with _logged_in(proto_gw, app) as client:
        client.send(data)
        _fatal(client)
    _assert_upstream_released(app)


def test_violation_mid_pipeline_after_valid_queries(proto_gw: Gateway) -> None:
    with _logged_in(proto_gw, "wg-proto-pipe") as client:
        client.send(build.query("select 1") + b"@\x00\x00\x00\x04")
        # The valid query may or may not be answered before the violation ends the session.
        while (msg := client.read_message()).type != "E":
            assert msg.type in "TDCZ", msg
        assert msg.fields["C"] == "08P01", msg.fields
        assert client.is_closed()


# -- slow, silent and half-open clients ---------------------------------------------------------


@pytest.fixture(scope="module")
def impatient_gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = base_config(it_database).replace(
        "max_message_bytes: 4194304}", "max_message_bytes: 4194304, startup_timeout: 1s}"
    )
    assert "startup_timeout: 1s" in config
    gw = make_gateway(tmp_path_factory.mktemp("impatient-gw"), config)
    gw.start()
    yield gw
    gw.stop()


def test_silent_and_stalled_clients_are_dropped_after_startup_timeout(
    impatient_gw: Gateway,
) -> None:
    gw = impatient_gw
    # The token first: a handshake begun while dev had none keeps dev's made-up salt in
    # this worker for up to 2 s, and a first token made meanwhile by another process
    # logs in only after that (docs/configuration.md, `token create`).
    gw.token("dev")
    silent = RawClient(gw.port)
    partial = RawClient(gw.port)
    partial.send(build.startup_message({"user": "dev", "database": "it"})[:6])
    tls_stalled = RawClient(gw.port)
    tls_stalled.send(build.ssl_request())
    assert tls_stalled.recv_exact(1) == b"S"  # and then no ClientHello
    mid_auth = _after_startup(gw)  # never answers the SASL request
    clients = [silent, partial, tls_stalled, mid_auth]
    started = time.monotonic()
    try:
        for client in clients:
            assert client.is_closed(timeout=5.0), "a silent client was not dropped"
        elapsed = time.monotonic() - started
        assert 0.5 < elapsed < 4.0, f"dropped after {elapsed:.1f} s with startup_timeout: 1s"
        for client in (silent, partial):
            assert client.received.startswith(b"E"), client.received
        for client in (silent, partial, mid_auth):
            assert b"C08006\x00" in client.received, client.received
            assert b"startup took too long" in client.received
    finally:
        for client in clients:
            client.close()
    # A normal client is not affected by the short timeout.
    with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_half_open_connections_do_not_block_others(proto_gw: Gateway) -> None:
    gw = proto_gw
    gw.token("dev")  # create it before the clock starts
    hostile: list[socket.socket] = []
    try:
        for i in range(100):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            hostile.append(sock)
            kind = i % 4
            if kind == 1:
                sock.sendall(build.startup_message({"user": "dev", "database": "it"})[:5])
            elif kind == 2:
                sock.sendall(build.ssl_request())
            elif kind == 3:
                sock.sendall(build.startup_message({"user": "dev", "database": "it"}))
        started = time.monotonic()
        for _ in range(3):
            with psycopg.connect(gw.dsn("dev"), autocommit=True, connect_timeout=10) as conn:
                assert conn.execute("select 'through'").fetchone() == ("through",)
        assert time.monotonic() - started < 5
    finally:
        for sock in hostile:
            sock.close()


def test_gateway_survived_everything(proto_gw: Gateway) -> None:
    assert proto_gw.proc is not None and proto_gw.proc.poll() is None
    with psycopg.connect(proto_gw.dsn("agent"), autocommit=True) as conn:
        assert conn.execute("select 41 + 1").fetchone() == (42,)
    log = proto_gw.log
    assert "Traceback" not in log, log
    assert "unexpected failure" not in log, log


def test_fast_path_function_call_is_refused_and_the_session_goes_on(proto_gw: Gateway) -> None:
    """FunctionCall has no Sync after it: the refusal must end with ReadyForQuery itself."""
    with _logged_in(proto_gw, "wg-proto-fastpath") as client:
        body = struct.pack("!ihhh", 1299, 0, 0, 0)  # now(), no arguments, text result
        client.send(b"F" + struct.pack("!i", 4 + len(body)) + body)
        error = client.read_message()
        assert error.type == "E" and error.fields["C"] == "42501", error
        assert "fast-path" in error.fields["M"]
        assert client.read_message().type == "Z"
        assert [m.type for m in client.query("select 1")] == ["T", "D", "C", "Z"]
