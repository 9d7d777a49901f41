"""The gateway dialling real PostgreSQL servers: trust, md5 and SCRAM logins, TLS modes,
credentials from the environment and from the vault, and every way the upstream can
fail, without the stored credential or the upstream's identity ever reaching the client."""

from __future__ import annotations

import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from tests.integration.pg_cluster import PgCluster, RawClient, make_self_signed, startup_error
from wardgate.identity.scram import ScramServer, ScramVerifierSet, derive_keys
from wardgate.postgres.codec import build

ROLES = "{agents: reader, engineers: engineer}"
VAULT_SECRET = "upstream.scram"


def _connection(name: str, upstream: str) -> str:
    return f"{name}:\n  type: postgres\n  upstream: {{{upstream}}}\n  roles: {ROLES}\n"


# -- misbehaving upstream servers ------------------------------------------------------------


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = conn.recv(n - len(out))
        if not chunk:
            raise ConnectionError("closed")
        out += chunk
    return out


def _recv_startup(conn: socket.socket) -> bytes:
    (length,) = struct.unpack("!i", _recv_exact(conn, 4))
    return _recv_exact(conn, length - 4)


def _recv_typed(conn: socket.socket) -> tuple[bytes, bytes]:
    header = _recv_exact(conn, 5)
    (length,) = struct.unpack("!i", header[1:])
    return header[:1], _recv_exact(conn, length - 4)


def _fake_scram_bad_signature(conn: socket.socket, password: str) -> None:
    """A server that checks the gateway's proof (so it knows the password) but then
    signs with the wrong key: the gateway must not trust it."""
    salt = secrets.token_bytes(16)
    server = ScramServer(ScramVerifierSet(salt, 4096, (derive_keys(password, salt, 4096, "k"),)))
    _recv_startup(conn)
    conn.sendall(build.auth_sasl(["SCRAM-SHA-256"]))
    _, body = _recv_typed(conn)
    nul = body.index(b"\x00")
    conn.sendall(build.auth_sasl_continue(server.handle_client_first(body[nul + 5 :])))
    _, body = _recv_typed(conn)
    server.handle_client_final(body)  # the proof is right...
    conn.sendall(build.auth_sasl_final(b"v=" + b"A" * 43 + b"="))  # ...the signature is not
    conn.recv(100)


class FakeUpstream:
    """A TCP server on 127.0.0.1 playing a broken or hostile PostgreSQL server."""

    def __init__(self, behaviour: str, password: str = "") -> None:
        self.behaviour = behaviour
        self.password = password
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            b = self.behaviour
            if b == "silent":
                while not self.stopping.is_set() and conn.recv(100):
                    pass
            elif b == "garbage":
                _recv_startup(conn)
                conn.sendall(b"\xff" * 64)
                conn.recv(100)
            elif b == "close":
                _recv_startup(conn)
            elif b == "gss":
                _recv_startup(conn)
                conn.sendall(b"R" + struct.pack("!ii", 8, 7))  # AuthenticationGSS
                conn.recv(100)
            elif b == "ssl-junk":
                _recv_startup(conn)  # the SSLRequest
                conn.sendall(b"N" + build.error_response("XX000", "injected before startup"))
                conn.recv(100)
            elif b == "too-many":
                _recv_startup(conn)
                conn.sendall(
                    build.error_response(
                        "53300", "sorry, too many clients already", severity="FATAL"
                    )
                )
            elif b == "bad-signature":
                _fake_scram_bad_signature(conn, self.password)
            elif b == "skip-final":
                # Starts SCRAM, then declares success without ever proving anything.
                _recv_startup(conn)
                conn.sendall(build.auth_sasl(["SCRAM-SHA-256"]))
                _recv_typed(conn)
                conn.sendall(
                    build.auth_ok()
                    + build.backend_key_data(1, b"fake")
                    + build.ready_for_query(b"I")
                )
                conn.recv(100)
            elif b == "version-18":
                # A server of a major version the classifier is not checked against.
                _recv_startup(conn)
                conn.sendall(
                    build.auth_ok()
                    + build.parameter_status("server_version", "18.1")
                    + build.backend_key_data(1, b"fake")
                    + build.ready_for_query(b"I")
                )
                conn.recv(100)
        except (OSError, ConnectionError):
            pass
        except BaseException as exc:  # reported by the test
            self.errors.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.sock.close()
        for thread in self.threads:
            thread.join(5)


FAKES = (
    "silent", "garbage", "close", "gss", "ssl-junk", "too-many", "bad-signature", "skip-final",
    "version-18",
)  # fmt: skip


@pytest.fixture(scope="module")
def fakes(pg_cluster: PgCluster) -> Iterator[dict[str, FakeUpstream]]:
    servers = {b: FakeUpstream(b, pg_cluster.passwords["scram_user"]) for b in FAKES}
    yield servers
    for server in servers.values():
        server.close()
    errors = [e for server in servers.values() for e in server.errors]
    assert not errors, errors


@pytest.fixture(scope="module")
def upstream_gw(
    it_database: str,
    pg_cluster: PgCluster,
    fakes: dict[str, FakeUpstream],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("upstream-gw")
    wrong_ca, _ = make_self_signed(tmp / "wrong-ca", "not the upstream")
    c = pg_cluster
    up = f"host: 127.0.0.1, port: {c.port}, database: postgres"
    extra = "".join(
        [
            _connection("up_trust", f"{up}, user: trust_user, tls: disable"),
            _connection("up_md5", f"{up}, user: md5_user, password: env:WG_UP_MD5, tls: disable"),
            _connection(
                "up_md5_tls", f"{up}, user: md5_user, password: env:WG_UP_MD5, tls: require"
            ),
            _connection(
                "up_scram", f"{up}, user: scram_user, password: env:WG_UP_SCRAM, tls: require"
            ),
            _connection(
                "up_vault",
                f"{up}, user: scram_user, password: 'secret:{VAULT_SECRET}', tls: require",
            ),
            _connection(
                "up_verify",
                f"{up}, user: scram_user, password: env:WG_UP_SCRAM, tls: verify-full, ca: '{c.cert}'",
            ),
            _connection(
                "up_verify_ca",
                f"{up}, user: scram_user, password: env:WG_UP_SCRAM, tls: verify-ca, ca: '{c.cert}'",
            ),
            _connection(
                "up_wrong_ca",
                f"{up}, user: scram_user, password: env:WG_UP_SCRAM, tls: verify-full, ca: '{wrong_ca}'",
            ),
            _connection(
                "up_bad_pw", f"{up}, user: scram_user, password: env:WG_UP_BAD, tls: require"
            ),
            _connection(
                "up_md5_bad_pw", f"{up}, user: md5_user, password: env:WG_UP_BAD, tls: disable"
            ),
            _connection(
                "up_scram_plain", f"{up}, user: scram_user, password: env:WG_UP_SCRAM, tls: disable"
            ),
            _connection("up_no_pw", f"{up}, user: md5_user, tls: disable"),
            _connection(
                "up_no_secret",
                f"{up}, user: md5_user, password: 'secret:not.in.vault', tls: disable",
            ),
            _connection(
                "up_no_tls",
                f"host: {PG_HOST}, port: {PG_PORT}, database: postgres, user: {PG_USER}, tls: require",
            ),
            _connection(
                "up_prefer", f"{up}, user: scram_user, password: env:WG_UP_SCRAM, tls: prefer"
            ),
            _connection(
                "up_prefer_plain",
                f"host: {PG_HOST}, port: {PG_PORT}, database: postgres, user: {PG_USER}, tls: prefer",
            ),
            *(
                _connection(
                    "fake_" + b.replace("-", "_"),
                    f"host: 127.0.0.1, port: {server.port}, database: x, user: fake,"
                    f" password: env:WG_UP_SCRAM, tls: {'prefer' if b == 'ssl-junk' else 'disable'}",
                )
                for b, server in fakes.items()
            ),
        ]
    )
    config = base_config(it_database, extra).replace(
        "max_message_bytes: 4194304}", "max_message_bytes: 4194304, connect_timeout: 2s}"
    )
    assert "connect_timeout: 2s" in config
    gw = make_gateway(tmp / "gw", config)
    gw.env["WG_UP_MD5"] = c.passwords["md5_user"]
    gw.env["WG_UP_SCRAM"] = c.passwords["scram_user"]
    gw.env["WG_UP_BAD"] = "wrong-" + secrets.token_urlsafe(12)
    gw.cli("secret", "set", VAULT_SECRET, input=c.passwords["scram_user"] + "\n")
    gw.start()
    yield gw
    gw.stop()


def _secrets(gw: Gateway) -> list[str]:
    return [gw.env["WG_UP_MD5"], gw.env["WG_UP_SCRAM"], gw.env["WG_UP_BAD"]]


def _assert_no_secret(gw: Gateway, text: str) -> None:
    for value in _secrets(gw):
        assert value not in text, "an upstream credential reached the client or the log"


def _who(gw: Gateway, connection: str) -> tuple[str, bool]:
    with psycopg.connect(gw.dsn("dev", connection), autocommit=True) as conn:
        row = conn.execute(
            "select current_user::text, ssl from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone()
        assert row is not None
        return str(row[0]), bool(row[1])


@pytest.mark.parametrize(
    ("connection", "user", "tls"),
    [
        ("up_trust", "trust_user", False),
        ("up_md5", "md5_user", False),
        ("up_md5_tls", "md5_user", True),
        ("up_scram", "scram_user", True),
        ("up_vault", "scram_user", True),
        ("up_verify", "scram_user", True),
        ("up_verify_ca", "scram_user", True),
        ("up_prefer", "scram_user", True),
        ("up_prefer_plain", PG_USER, False),
    ],
)
def test_upstream_login_methods(
    upstream_gw: Gateway, connection: str, user: str, tls: bool
) -> None:
    assert _who(upstream_gw, connection) == (user, tls)


def test_policy_applies_on_cluster_connections(upstream_gw: Gateway) -> None:
    with psycopg.connect(upstream_gw.dsn("agent", "up_scram"), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="blocked by role:reader"):
            conn.execute("create table nope (a int)")
        assert conn.execute("select 1").fetchone() == (1,)


def _refused(gw: Gateway, connection: str) -> tuple[str, dict[str, str]]:
    """The psycopg message and the raw ErrorResponse fields of a refused session."""
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(gw.dsn("dev", connection), connect_timeout=20)
    fields = startup_error(gw.port, "dev", gw.token("dev"), connection)
    message = str(info.value)
    assert f'connection "{connection}"' in message, message
    assert f'connection "{connection}"' in fields["M"], fields
    _assert_no_secret(gw, message + repr(fields))
    return message, fields


@pytest.mark.parametrize(
    ("connection", "reason"),
    [
        ("up_wrong_ca", "TLS to its database server failed"),
        ("up_bad_pw", "rejected the gateway's stored credential"),
        ("up_md5_bad_pw", "rejected the gateway's stored credential"),
        # The server's own error names the upstream user; it must not reach the client.
        ("up_scram_plain", "rejected the gateway's stored credential"),
        ("up_no_tls", "does not offer TLS"),
        ("up_no_pw", "holds no valid credential"),
        ("up_no_secret", "cannot read its credential"),
        ("down", "not reachable"),
    ],
)
def test_upstream_failures_are_08006_without_detail(
    upstream_gw: Gateway, connection: str, reason: str
) -> None:
    message, fields = _refused(upstream_gw, connection)
    assert fields["C"] == "08006", fields
    assert reason in fields["M"], fields
    for detail in (
        "scram_user",
        "md5_user",
        "pg_hba",
        "password authentication failed",
        "not.in.vault",
    ):
        assert detail not in message, message
        assert detail not in repr(fields), fields


def test_down_upstream_with_psycopg(gateway: Gateway) -> None:
    with pytest.raises(psycopg.OperationalError, match='connection "down" is unavailable'):
        psycopg.connect(gateway.dsn("dev", "down"))
    # psycopg shows no SQLSTATE for a failed connection; the raw reply carries it.
    assert startup_error(gateway.port, "dev", gateway.token("dev"), "down")["C"] == "08006"


def test_credentials_never_reach_the_client(upstream_gw: Gateway) -> None:
    """Everything a client receives, byte for byte, through sessions on every login kind."""
    seen = bytearray()
    for connection in ("up_md5", "up_scram", "up_vault", "up_trust"):
        with RawClient(upstream_gw.port) as client:
            messages = client.login(
                "dev", upstream_gw.token("dev"), connection, application_name="leak-check"
            )
            assert messages[-1].type == "Z", messages
            replies = client.query("select current_user, current_setting('application_name')")
            assert replies[-1].type == "Z"
            seen += client.received
    for connection in ("up_bad_pw", "up_md5_bad_pw", "up_scram_plain"):
        with RawClient(upstream_gw.port) as client:
            assert client.login("dev", upstream_gw.token("dev"), connection)[-1].type == "E"
            seen += client.received
    text = seen.decode("latin-1")
    _assert_no_secret(upstream_gw, text)
    # The gateway's log names failures but never the credentials.
    time.sleep(0.2)
    _assert_no_secret(upstream_gw, upstream_gw.log)
    assert "rejected" in upstream_gw.log or "refused" in upstream_gw.log


def test_terminated_backend_ends_session_and_gateway_keeps_serving(gateway: Gateway) -> None:
    app = f"wg-kill-{uuid.uuid4().hex[:8]}"
    conn = psycopg.connect(gateway.dsn("dev", application_name=app), autocommit=True)
    try:
        assert conn.execute("select 1").fetchone() == (1,)
        with admin_conn() as admin:
            rows = admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
                (app,),
            ).fetchall()
        assert rows == [(True,)], f"expected one upstream backend for {app}: {rows}"
        with pytest.raises(psycopg.OperationalError) as info:
            # The FATAL may arrive before or after this query is sent.
            for _ in range(20):
                conn.execute("select 1")
                time.sleep(0.1)
        message = str(info.value)
        assert (
            "terminating connection due to administrator command" in message
            or "lost the connection to the database server" in message
            or "server closed the connection" in message
            or "consuming input failed" in message
        ), message
    finally:
        conn.close()
    with psycopg.connect(gateway.dsn("dev"), autocommit=True) as again:
        assert again.execute("select 'alive'").fetchone() == ("alive",)
    assert gateway.proc is not None and gateway.proc.poll() is None


def test_terminated_backend_raw_errors(gateway: Gateway) -> None:
    """On the wire: the server's 57P01 is forwarded, then the connection closes (no
    second error of wardgate's own: a client would read it as its next answer)."""
    app = f"wg-kill-raw-{uuid.uuid4().hex[:8]}"
    with RawClient(gateway.port) as client:
        assert client.login("dev", gateway.token("dev"), "it", application_name=app)[-1].type == "Z"
        with admin_conn() as admin:
            admin.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where application_name = %s",
                (app,),
            )
        codes = []
        try:
            while True:
                msg = client.read_message()
                if msg.type == "E":
                    codes.append(msg.fields["C"])
        except (ConnectionError, TimeoutError):
            pass
        assert codes, "the client was told nothing"
        assert codes == ["57P01"], codes


def test_upstream_logs_show_session_setup(upstream_gw: Gateway, pg_cluster: PgCluster) -> None:
    """The cluster saw real TLS SCRAM logins from the gateway (not a fallback path)."""
    with psycopg.connect(upstream_gw.dsn("dev", "up_verify"), autocommit=True) as conn:
        version = conn.execute(
            "select version, cipher is not null from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone()
    assert version is not None and version[1] is True
    with pg_cluster.admin() as admin:
        method = admin.execute(
            "select rolpassword like 'SCRAM-SHA-256$%' from pg_authid where rolname = 'scram_user'"
        ).fetchone()
    assert method == (True,)


@pytest.mark.parametrize(
    ("behaviour", "sqlstate", "reason"),
    [
        ("silent", "08006", "did not complete the connection"),  # after connect_timeout
        ("garbage", "08006", "did not complete the connection"),
        ("close", "08006", "did not complete the connection"),
        ("gss", "08006", "asks for an unsupported authentication method"),
        ("ssl-junk", "08006", "did not complete the connection"),
        ("too-many", "53300", "busy or starting"),
        ("bad-signature", "08006", "failed to prove its identity"),
        ("skip-final", "08006", "failed to prove its identity"),
        ("version-18", "08006", "runs PostgreSQL '18.1'"),
    ],
)
def test_misbehaving_upstream(
    upstream_gw: Gateway,
    fakes: dict[str, FakeUpstream],
    behaviour: str,
    sqlstate: str,
    reason: str,
) -> None:
    connection = "fake_" + behaviour.replace("-", "_")
    token = upstream_gw.token("dev")
    started = time.monotonic()
    fields = startup_error(upstream_gw.port, "dev", token, connection)
    elapsed = time.monotonic() - started
    assert fakes[behaviour].accepted >= 1, "the gateway never dialled the fake server"
    assert fields["C"] == sqlstate, fields
    assert reason in fields["M"], fields
    assert f'connection "{connection}"' in fields["M"], fields
    assert "injected" not in repr(fields)  # nothing the fake said before startup leaks
    assert elapsed < 5, f"took {elapsed:.1f} s with connect_timeout: 2s"
    _assert_no_secret(upstream_gw, repr(fields))


def _wait_active(cluster: PgCluster, user: str) -> int:
    deadline = time.monotonic() + 10
    with cluster.admin() as admin:
        while time.monotonic() < deadline:
            row = admin.execute(
                "select pid from pg_stat_activity where usename = %s and state = 'active'"
                " and query like 'select pg_sleep%%'",
                (user,),
            ).fetchone()
            if row:
                return int(row[0])
            time.sleep(0.02)
    raise AssertionError("the query never started upstream")


def test_cancel_on_tls_scram_upstream(upstream_gw: Gateway, pg_cluster: PgCluster) -> None:
    """The upstream session is TLS-only (hostnossl ... reject); the forwarded
    CancelRequest still reaches it."""
    with psycopg.connect(upstream_gw.dsn("dev", "up_verify"), autocommit=True) as conn:
        errors: list[BaseException] = []

        def cancel() -> None:
            try:
                _wait_active(pg_cluster, "scram_user")
                conn.cancel_safe()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=cancel)
        thread.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            thread.join(15)
        assert not errors, errors
        assert time.monotonic() - started < 5
        assert conn.execute("select 1").fetchone() == (1,)


def test_backend_terminated_mid_query(upstream_gw: Gateway, pg_cluster: PgCluster) -> None:
    with psycopg.connect(upstream_gw.dsn("dev", "up_md5"), autocommit=True) as conn:
        killed: list[object] = []

        def kill() -> None:
            try:
                pid = _wait_active(pg_cluster, "md5_user")
                with pg_cluster.admin() as admin:
                    killed.append(
                        admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()
                    )
            except BaseException as exc:
                killed.append(exc)

        thread = threading.Thread(target=kill)
        thread.start()
        try:
            with pytest.raises(psycopg.errors.AdminShutdown):
                conn.execute("select pg_sleep(30)")
        finally:
            thread.join(15)
        assert killed == [(True,)], killed
    with psycopg.connect(upstream_gw.dsn("dev", "up_md5"), autocommit=True) as again:
        assert again.execute("select 'alive'").fetchone() == ("alive",)
