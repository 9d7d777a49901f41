"""Memory stays bounded before a session exists: a client that floods the gateway while
it authenticates or while the upstream dial is slow is stopped after a small cap
(limits.startup_buffer_bytes), refused with 08P01 and counted as a failed login of its
address, and the gateway's resident memory does not follow what the client pushed."""

from __future__ import annotations

import contextlib
import select
import socket
import sqlite3
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Gateway, base_config, make_gateway
from tests.integration.pg_cluster import RawClient
from wardgate.identity.scram import ScramClient
from wardgate.postgres.codec import build

PUSH_LIMIT = 1024 * 1024 * 1024  # what a hostile client tries to push
CHUNK = 1024 * 1024
# The gateway may grow by this much at most while a client pushes up to PUSH_LIMIT
# (before the cap, 1 GB pushed meant about 1 GB resident).
RSS_MARGIN = 48 * 1024 * 1024


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def silent_upstream() -> Iterator[int]:
    """A 'PostgreSQL server' on loopback that accepts TCP connections (in the kernel's
    backlog) and never answers: the gateway's dial waits until connect_timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()


@pytest.fixture
def flood_gw(it_database: str, tmp_path: Path, silent_upstream: int) -> Iterator[Gateway]:
    extra = f"""\
        slow:
          type: postgres
          upstream: {{host: 127.0.0.1, port: {silent_upstream}, database: x, user: nobody, tls: disable}}
          roles: {{engineers: engineer}}
        """
    config = base_config(it_database, extra).replace(
        "max_message_bytes: 4194304}",
        "max_message_bytes: 4194304, connect_timeout: 8s, startup_timeout: 10s,"
        " address_failures: 5}",
    )
    gw = make_gateway(tmp_path / "gw", config)
    gw.start()
    yield gw
    gw.stop()


def _flood(client: RawClient) -> tuple[int, bytes]:
    """Push junk until the gateway answers or stops the stream, up to PUSH_LIMIT.
    Returns (bytes pushed, what the gateway sent)."""
    sock = client.sock
    sock.settimeout(2.0)
    junk = b"\x00" * CHUNK
    pushed = 0
    received = bytearray()
    while pushed < PUSH_LIMIT:
        readable, _, _ = select.select([sock], [], [], 0)
        if readable:
            # The gateway has answered: read it now, before a reset (the gateway closing
            # with junk still unread) could discard it. Its authentication request (sent
            # at once, before it reads on) is no answer to the junk: push on.
            chunk = b""
            with contextlib.suppress(OSError):
                chunk = sock.recv(65536)
            received += chunk
            if not chunk or _has_error(bytes(received)):
                break
        try:
            pushed += sock.send(junk)
        except TimeoutError:
            break  # the gateway stopped reading: paused, not buffered
        except (BrokenPipeError, ConnectionResetError):
            break
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)  # so the gateway closes without lingering
    sock.settimeout(5.0)
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return pushed, bytes(received)


def _has_error(data: bytes) -> bool:
    try:
        _error_fields(data)
    except AssertionError:
        return False
    return True


def _error_fields(data: bytes) -> dict[str, str]:
    """The fields of the first ErrorResponse in `data`."""
    pos = 0
    while pos + 5 <= len(data):
        kind = data[pos : pos + 1]
        (length,) = struct.unpack("!i", data[pos + 1 : pos + 5])
        body = data[pos + 5 : pos + 1 + length]
        if kind == b"E":
            return {f[:1].decode(): f[1:].decode() for f in body.split(b"\x00") if f}
        pos += 1 + length
    raise AssertionError(f"no ErrorResponse in {data[:200]!r}")


def _assert_refused(gw: Gateway, pushed: int, received: bytes, rss_before: int) -> None:
    assert gw.proc is not None
    fields = _error_fields(received)
    assert fields["C"] == "08P01" and fields["V"] == "FATAL", fields
    # Either the cap ("more than N bytes sent before the session started") or, when the
    # junk is read as the next startup message, its own protocol violation: both close
    # the connection and count against the address.
    assert fields["M"].startswith("wardgate: protocol violation: "), fields
    grew = _rss(gw.proc.pid) - rss_before
    assert grew < RSS_MARGIN, f"the gateway grew by {grew >> 20} MB after {pushed >> 20} MB pushed"
    assert pushed < PUSH_LIMIT, "the gateway took a gigabyte before its session existed"


def _addr_count(gw: Gateway, addr: str) -> int:
    db = sqlite3.connect(gw.env["WARDGATE_STORE"].removeprefix("sqlite:///"))
    try:
        found = db.execute(
            "select count from login_failures where key = ?", (f"addr:{addr}",)
        ).fetchone()
    finally:
        db.close()
    return int(found[0]) if found else 0


def test_flood_before_authentication_is_capped(flood_gw: Gateway) -> None:
    assert flood_gw.proc is not None
    rss_before = _rss(flood_gw.proc.pid)
    for _ in range(5):  # flood_gw: address_failures 5
        with RawClient(flood_gw.port) as client:
            client.send(build.startup_message({"user": "dev", "database": "it"}))
            pushed, received = _flood(client)
        _assert_refused(flood_gw, pushed, received, rss_before)
    # Each flood was a failed login of the address: it is now past its threshold (its
    # wrong tokens wait login_max_delay), yet a right token from it still logs in: on
    # loopback the flooder's address is everyone's (attack17).
    deadline = time.monotonic() + 10  # the listener counts each flood as it closes it
    while _addr_count(flood_gw, "127.0.0.1") < 5:
        assert time.monotonic() < deadline, _addr_count(flood_gw, "127.0.0.1")
        time.sleep(0.1)
    with RawClient(flood_gw.port) as same:
        assert same.login("dev", flood_gw.token("dev"), "it")[-1].type == "Z"
    # ... and so does the principal it named from another address.
    other = RawClient.__new__(RawClient)
    other.received = bytearray()
    other.sock = socket.create_connection(
        ("127.0.0.1", flood_gw.port), timeout=10, source_address=("127.0.0.2", 0)
    )
    with other:
        assert other.login("dev", flood_gw.token("dev"), "it")[-1].type == "Z"
    assert "Traceback" not in flood_gw.log


def test_flood_while_upstream_dial_is_slow_is_capped(flood_gw: Gateway) -> None:
    assert flood_gw.proc is not None
    token = flood_gw.token("dev")
    rss_before = _rss(flood_gw.proc.pid)
    with RawClient(flood_gw.port) as client:
        client.send(build.startup_message({"user": "dev", "database": "slow"}))
        msg = client.read_message()
        assert msg.type == "R" and msg.auth_code == 10, msg
        scram = ScramClient(token)
        client.send(build.sasl_initial_response(ScramClient.mechanism, scram.client_first()))
        msg = client.read_message()
        assert msg.type == "R" and msg.auth_code == 11, msg
        client.send(build.sasl_response(scram.handle_server_first(msg.body[4:])))
        # The proof is sent; the gateway's answer (SASLFinal with AuthenticationOk) waits
        # for the dial of the silent upstream, which began during SCRAM. Push meanwhile.
        pushed, received = _flood(client)
    _assert_refused(flood_gw, pushed, received, rss_before)
    assert "Traceback" not in flood_gw.log
