"""A throwaway PostgreSQL cluster with TLS and three kinds of upstream login, plus a
few raw-wire helpers for tests that talk to the gateway byte by byte.

The cluster listens on 127.0.0.1 (a free port) with ``ssl = on`` and a self-signed
certificate generated here (SAN: localhost, 127.0.0.1), and these logins:

* ``scram_user``: SCRAM-SHA-256, TLS only (``hostnossl ... reject``);
* ``md5_user``: md5, with or without TLS;
* ``trust_user``: trust.

The binaries are the newest ``/usr/lib/postgresql/*/bin``; as tests run as root, they
run as the ``postgres`` OS user (``runuser``) on a data directory it owns; a non-root
run starts them as the current user. The cluster superuser is ``postgres`` either way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import ipaddress
import os
import pwd
import secrets
import shutil
import socket
import ssl
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.conftest import missing
from wardgate.identity.scram import ScramClient
from wardgate.postgres.codec import build

OS_USER = "postgres"
SUPERUSER = "postgres"


def _as_postgres(args: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: root runs it as the postgres OS user."""
    return ["runuser", "-u", OS_USER, "--", *args] if os.geteuid() == 0 else args


# -- certificates ---------------------------------------------------------------------


def make_self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A P-256 key and a self-signed (CA) certificate valid for localhost and 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


# -- the cluster ----------------------------------------------------------------------


def _bindir() -> Path | None:
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")

    def version(path: str) -> tuple[int, ...]:
        part = Path(path).parents[1].name
        return tuple(int(x) for x in part.split(".") if x.isdigit())

    found = [p for p in found if Path(p).with_name("pg_ctl").exists()]
    if not found:
        return None
    return Path(max(found, key=version)).parent


@dataclass
class PgCluster:
    root: Path  # owned by the postgres OS user; holds data/, the socket and the log
    bindir: Path
    port: int
    cert: Path  # the server certificate (also its own CA): use it as `ca:` / sslrootcert
    passwords: dict[str, str]  # upstream user -> password (never literals in any config)
    host: str = "127.0.0.1"
    database: str = "postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def admin(self) -> psycopg.Connection[Any]:
        """A superuser connection over the unix socket (not through wardgate)."""
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            _as_postgres(list(args)),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=str(self.root),
        )
        if result.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{self.log}"
            )
        return result

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(
                    [
                        str(self.bindir / "pg_ctl"),
                        "-D",
                        str(self.data),
                        "-m",
                        "immediate",
                        "-w",
                        "stop",
                    ]
                ),
                capture_output=True,
                timeout=60,
                cwd=str(self.root),
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_cluster() -> PgCluster:
    """initdb + configure + start. The caller stops it and deletes `root`."""
    bindir = _bindir()
    if bindir is None:
        missing("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb, pg_ctl)")
    assert bindir is not None
    owner = (os.geteuid(), os.getegid())
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            missing("runuser is not installed (needed to run PostgreSQL as non-root)")
        try:
            pw = pwd.getpwnam(OS_USER)
        except KeyError:
            missing(f"no {OS_USER!r} OS user to run PostgreSQL as")
            raise
        owner = (pw.pw_uid, pw.pw_gid)
    root = Path(tempfile.mkdtemp(prefix="wardgate-pgc-"))
    root.chmod(0o755)  # the gateway reads the certificate; the server's user owns everything
    os.chown(root, *owner)
    cluster = PgCluster(
        root=root,
        bindir=bindir,
        port=_free_port(),
        cert=root / "server.crt",
        passwords={"scram_user": secrets.token_urlsafe(18), "md5_user": secrets.token_urlsafe(18)},
    )
    try:
        cluster.run(
            str(bindir / "initdb"),
            "-D",
            str(cluster.data),
            "-U",
            SUPERUSER,
            "--auth-local=trust",
            "--auth-host=reject",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        cert, key = make_self_signed(root / "tls-tmp", "wardgate test upstream")
        for src, dst in (
            (cert, cluster.data / "server.crt"),
            (key, cluster.data / "server.key"),
            (cert, cluster.cert),
        ):
            shutil.copyfile(src, dst)
            os.chown(dst, *owner)
        (cluster.data / "server.key").chmod(0o600)
        shutil.rmtree(root / "tls-tmp")
        with open(cluster.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"""
listen_addresses = '127.0.0.1'
port = {cluster.port}
unix_socket_directories = '{cluster.socket_dir}'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 40
shared_buffers = 16MB
"""
            )
        (cluster.data / "pg_hba.conf").write_text(
            f"local all {SUPERUSER} trust\n"
            "hostssl all scram_user 127.0.0.1/32 scram-sha-256\n"
            "hostnossl all scram_user 127.0.0.1/32 reject\n"
            "host all md5_user 127.0.0.1/32 md5\n"
            "host all trust_user 127.0.0.1/32 trust\n"
        )
        cluster.run(
            str(bindir / "pg_ctl"),
            "-D",
            str(cluster.data),
            "-l",
            str(root / "postgres.log"),
            "-w",
            "-t",
            "30",
            "start",
        )
        with cluster.admin() as conn:
            conn.execute("set password_encryption = 'scram-sha-256'")
            conn.execute(
                f"create role scram_user login password '{cluster.passwords['scram_user']}'"
            )
            conn.execute("set password_encryption = 'md5'")
            conn.execute(f"create role md5_user login password '{cluster.passwords['md5_user']}'")
            conn.execute("create role trust_user login")
            stored = dict(
                conn.execute(
                    "select rolname, rolpassword from pg_authid where rolname like '%_user'"
                ).fetchall()
            )
        assert str(stored["scram_user"]).startswith("SCRAM-SHA-256$"), stored
        assert str(stored["md5_user"]).startswith("md5"), stored
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The throwaway TLS cluster, stopped and deleted at the end of the run."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


# -- raw wire helpers -------------------------------------------------------------------


@dataclass
class Message:
    type: str
    body: bytes

    @property
    def fields(self) -> dict[str, str]:
        """The fields of an ErrorResponse/NoticeResponse: {'C': sqlstate, 'M': message, ...}."""
        out: dict[str, str] = {}
        for part in self.body.split(b"\x00"):
            if part:
                out[chr(part[0])] = part[1:].decode("utf-8", "replace")
        return out

    @property
    def auth_code(self) -> int:
        assert self.type == "R", self
        return int(struct.unpack("!i", self.body[:4])[0])


class RawClient:
    """A PostgreSQL client socket driven by hand. Every byte received is kept in `received`."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (host, port), timeout=timeout
        )
        self.received = bytearray()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} of {n} bytes")
            out += chunk
        self.received += out
        return bytes(out)

    def read_message(self) -> Message:
        header = self.recv_exact(5)
        (length,) = struct.unpack("!i", header[1:5])
        return Message(chr(header[0]), self.recv_exact(length - 4))

    def read_until(self, *types: str) -> list[Message]:
        """Messages up to and including the first of one of `types` (or an ErrorResponse)."""
        out: list[Message] = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg.type in types or msg.type == "E":
                return out

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True once the peer has closed (EOF or reset) within `timeout`; unread data is drained."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.received += chunk
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False

    def start_tls(self) -> None:
        """SSLRequest, then a TLS handshake without verification."""
        self.send(build.ssl_request())
        answer = self.recv_exact(1)
        assert answer == b"S", answer
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert isinstance(self.sock, socket.socket)
        self.sock = ctx.wrap_socket(self.sock)

    def login(self, user: str, token: str, database: str, **params: str) -> list[Message]:
        """Startup and authentication done by hand (SCRAM-SHA-256, or a cleartext password
        when asked for one). Returns the messages that follow, up to and including
        ReadyForQuery, or ``[ErrorResponse]`` if the gateway refused at any step."""
        self.send(build.startup_message({"user": user, "database": database, **params}))
        msg = self.read_message()
        if msg.type == "E":
            return [msg]
        assert msg.type == "R", msg
        if msg.auth_code == 3:
            self.send(build.password_message(token))
        else:
            assert msg.auth_code == 10 and b"SCRAM-SHA-256\x00" in msg.body, msg
            scram = ScramClient(token)
            self.send(build.sasl_initial_response(ScramClient.mechanism, scram.client_first()))
            msg = self.read_message()
            if msg.type == "E":
                return [msg]
            assert msg.type == "R" and msg.auth_code == 11, msg
            self.send(build.sasl_response(scram.handle_server_first(msg.body[4:])))
            msg = self.read_message()
            if msg.type == "E":
                return [msg]
            assert msg.type == "R" and msg.auth_code == 12, msg
            scram.verify_server_final(msg.body[4:])
        rest = self.read_until("Z")
        if rest[0].type == "E":
            return rest[:1]
        assert rest[0].type == "R" and rest[0].auth_code == 0, rest
        return rest[1:]

    def query(self, sql: str) -> list[Message]:
        """A simple-protocol query; the messages up to and including ReadyForQuery."""
        self.send(build.query(sql))
        out: list[Message] = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if msg.type == "Z":
                return out


def startup_error(port: int, user: str, token: str, database: str, **params: str) -> dict[str, str]:
    """Log in by hand and return the fields of the FATAL ErrorResponse that refused it
    (psycopg cannot show the SQLSTATE of a failed connection). Checks the gateway then
    closes the connection."""
    with RawClient(port) as client:
        messages = client.login(user, token, database, **params)
        assert messages and messages[-1].type == "E", f"login was not refused: {messages}"
        fields = messages[-1].fields
        assert fields.get("V", fields.get("S")) == "FATAL", fields
        assert client.is_closed(), "the gateway kept the connection open after a FATAL error"
        return fields
