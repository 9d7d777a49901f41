"""Memory stays bounded in an extended-protocol batch that never ends: a client may send
Parse, Bind, Describe, Execute... with no Sync for as long as it likes, and the gateway
keeps something for each forwarded message until the server answers it. The server
answers an open batch only when its 8 KB output buffer fills (or at a Flush), not at all
once one of its statements failed, and not while it waits (a lock, a long statement).

* requests awaiting their reply are bounded (relay.UNANSWERED_BYTES): past the budget
  the client is not read and the server gets a Flush; the batch then goes on, answered
  in full at its Sync;
* after the server's error in the open batch, what the client sends up to its Sync is
  closed at once, as the server skips it;
* prepared statements and portals: limits.session_names and limits.session_name_bytes,
  past which the session ends with 54000.

Each test pushes as fast as it can (hundreds of MB, or hundreds of thousands of
messages) and asserts the gateway's RSS stayed within a fixed margin, and what became
of the connection (paused, or answered in full, or ended with a clear error)."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Gateway, base_config, make_gateway
from tests.integration.pg_cluster import RawClient
from tests.integration.test_bounds import RSS_MARGIN, _rss
from wardgate.postgres.codec import build

NAMES = 1000  # limits.session_names of this gateway
# Describe of the unnamed statement: 7 bytes, the cheapest message to send, and answered
# by two messages (ParameterDescription, RowDescription or NoData).
DESCRIBE = build.describe("S", "")
# A 1 MB statement, parsed as the unnamed statement again and again.
BIG_PARSE = build.parse("", "select '" + "x" * (1024 * 1024 - 16) + "'")


@pytest.fixture(scope="module")
def gw(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = base_config(it_database).replace(
        "max_message_bytes: 4194304}",
        f"max_message_bytes: 4194304, session_names: {NAMES}, session_name_bytes: 1048576,"
        " connect_timeout: 60s, startup_timeout: 60s}",
    )
    g = make_gateway(tmp_path_factory.mktemp("bounds_batch"), config)
    g.start()
    yield g
    g.stop()


def _login(gw: Gateway) -> RawClient:
    client = RawClient(gw.port)
    reply = client.login("dev", gw.token("dev"), "it")
    assert reply[-1].type == "Z", reply[-1]
    return client


def _push(sock: socket.socket | object, data: bytes, seconds: float, limit: int = 2**40) -> int:
    """Send `data` again and again for `seconds`, or until a send blocks for 2 s, or
    `limit` bytes went out; the bytes sent (the last `data` may be cut: `_sync_after`)."""
    assert isinstance(sock, socket.socket)
    sock.settimeout(2.0)
    pushed = 0
    view = memoryview(data)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and pushed < limit:
        try:
            pushed += sock.send(view[pushed % len(data) :])
        except TimeoutError:
            break
    return pushed


def _sync_after(sock: socket.socket | object, data: bytes, pushed: int) -> int:
    """Send the rest of the `data` `_push` cut, then a Sync (in a thread: the gateway
    may not read yet). Returns how many times `data` was sent in all."""
    assert isinstance(sock, socket.socket)
    rest = data[pushed % len(data) :] if pushed % len(data) else b""
    sock.settimeout(60.0)
    threading.Thread(target=sock.sendall, args=(rest + build.sync(),), daemon=True).start()
    return -(-pushed // len(data))


def _read_all(sock: socket.socket | object, until: float) -> Iterator[tuple[str, bytes]]:
    """Every message the gateway sends until ReadyForQuery (or the connection ends)."""
    assert isinstance(sock, socket.socket)
    buf = bytearray()
    sock.settimeout(max(until - time.monotonic(), 1.0))
    while True:
        while len(buf) >= 5:
            (length,) = struct.unpack_from("!i", buf, 1)
            if len(buf) < length + 1:
                break
            kind, body = chr(buf[0]), bytes(buf[5 : length + 1])
            del buf[: length + 1]
            yield kind, body
            if kind == "Z":
                return
        data = sock.recv(1 << 20)
        if not data:
            return
        buf += data


def _grew(gw: Gateway, before: int) -> int:
    assert gw.proc is not None
    grew = _rss(gw.proc.pid) - before
    print(f"bounds: the gateway grew by {grew >> 20} MB")
    return grew


def test_open_batch_while_the_server_waits_is_paused_then_answered(gw: Gateway) -> None:
    """The batch's first statement sleeps 3 s; the client sends Describe after Describe
    with no Sync, reading nothing: the server reads none of it meanwhile, so the gateway
    queues each until the kernel's buffers to the server are full (on loopback about
    1 MB of them: this bound matters for large messages, see the next test). Past the
    budget it stops reading and sends the server a Flush; once the sleep ends, reading
    resumes and the batch is answered in full: no deadlock, nothing lost."""
    assert gw.proc is not None
    with _login(gw) as client:
        rss_before = _rss(gw.proc.pid)
        client.send(build.parse("", "select pg_sleep(3)") + build.bind("", "") + build.execute(""))
        client.send(build.parse("", "select 1"))
        # 50 000 of them: six times what the budget admits (each counts 1 KB), and few
        # enough to be judged in a few seconds once the server reads again.
        pushed = _push(client.sock, DESCRIBE, 2.5, limit=50_000 * len(DESCRIBE))
        grew = _grew(gw, rss_before)
        print(f"bounds: {pushed // len(DESCRIBE)} Describe messages pushed")
        assert grew < RSS_MARGIN, f"the gateway grew by {grew >> 20} MB"
        # The sleep ends; the client sends Sync and reads: every Describe is answered.
        described = _sync_after(client.sock, DESCRIBE, pushed)
        kinds: dict[str, int] = {}
        for kind, _ in _read_all(client.sock, time.monotonic() + 60):
            kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds.get("E", 0) == 0, kinds
    assert kinds["1"] == 2 and kinds["2"] == 1 and kinds["C"] == 1 and kinds["Z"] == 1, kinds
    assert kinds["t"] == described and kinds["T"] == described, (described, kinds)
    assert "Traceback" not in gw.log


def test_big_statements_in_an_open_batch_are_bounded(gw: Gateway) -> None:
    """1 MB Parse messages with no Sync and no Flush, not reading: the server answers
    each with 5 bytes, sent only when 8 KB of them (1 600 statements, 1.6 GB) are
    waiting; the gateway kept each statement's text until then."""
    assert gw.proc is not None
    with _login(gw) as client:
        rss_before = _rss(gw.proc.pid)
        pushed = _push(client.sock, BIG_PARSE, 5.0)
        grew = _grew(gw, rss_before)
        print(f"bounds: {pushed >> 20} MB of 1 MB Parse messages pushed")
        assert pushed >= 32 * len(BIG_PARSE), "too few pushed to show a bound"
        assert grew < RSS_MARGIN, f"the gateway grew by {grew >> 20} MB"
        parsed = _sync_after(client.sock, BIG_PARSE, pushed)
        kinds = [k for k, _ in _read_all(client.sock, time.monotonic() + 60)]
    assert kinds.count("1") == parsed and kinds[-1] == "Z", (parsed, kinds[-5:])
    assert "Traceback" not in gw.log


def test_messages_after_a_failed_statement_are_not_kept(gw: Gateway) -> None:
    """The first statement fails: the server skips the rest up to the Sync and answers
    none of it. The gateway kept each skipped message until that Sync, and scanned them
    (each Bind looks at the portal changes still pending): without the fix it took
    longer than a minute to answer the Sync after 8 s of this (5 s here)."""
    assert gw.proc is not None
    with _login(gw) as client:
        rss_before = _rss(gw.proc.pid)
        client.send(build.parse("", "select 1/0") + build.bind("", "") + build.execute(""))
        error = client.read_until("E")[-1]
        assert error.type == "E" and b"division by zero" in error.body, error
        batch = build.bind("", "") + build.execute("") + DESCRIBE * 64
        pushed = _push(client.sock, batch, 5.0)
        grew = _grew(gw, rss_before)
        print(f"bounds: {pushed >> 20} MB pushed after the error")
        assert grew < RSS_MARGIN, f"the gateway grew by {grew >> 20} MB"
        _sync_after(client.sock, batch, pushed)
        kinds = [k for k, _ in _read_all(client.sock, time.monotonic() + 60)]
    assert kinds == ["Z"], kinds[:10]
    assert "Traceback" not in gw.log


@pytest.mark.parametrize("kind", ["statements", "portals"])
def test_names_past_the_limit_end_the_session(gw: Gateway, kind: str) -> None:
    """limits.session_names: the 1001st prepared statement (or portal) ends the session
    with 54000, saying which limit and what to do; the server had every earlier one."""
    assert gw.proc is not None
    with _login(gw) as client:
        rss_before = _rss(gw.proc.pid)
        if kind == "statements":
            sent = [build.parse(f"s{i}", "select 1") for i in range(NAMES + 1)]
        else:
            client.send(build.query("begin"))
            assert client.read_until("Z")[-1].body == b"T"
            client.send(build.parse("q", "select 1") + build.sync())
            assert client.read_until("Z")[-1].type == "Z"
            sent = [build.bind(f"p{i}", "q") for i in range(NAMES + 1)]
        client.send(b"".join(sent[:NAMES]) + build.sync())
        kinds = [k for k, _ in _read_all(client.sock, time.monotonic() + 30)]
        assert kinds.count("1" if kind == "statements" else "2") == NAMES, kinds[-5:]
        assert kinds[-1] == "Z", kinds[-5:]
        client.send(sent[NAMES] + build.sync())
        messages = list(_read_all(client.sock, time.monotonic() + 30))
        assert client.is_closed(), "the session went on"
        _grew(gw, rss_before)
    kind_, body = messages[-1]
    assert kind_ == "E" and b"C54000\0" in body and b"SFATAL\0" in body, messages[-1]
    assert b"limits.session_names" in body and b"DEALLOCATE" in body, body
    assert "session limit" in gw.log


def test_name_bytes_past_the_limit_end_the_session(gw: Gateway) -> None:
    """limits.session_name_bytes (1 MiB here): 64 KB statements, each under its own name."""
    big = "select '" + "y" * 65536 + "'"
    with _login(gw) as client:
        for i in range(32):
            client.send(build.parse(f"b{i}", big) + build.sync())
            messages = list(_read_all(client.sock, time.monotonic() + 30))
            if messages[-1][0] != "Z":
                break
        assert client.is_closed(), "the session went on"
    assert i == 15, i  # 15 statements of 64 KiB fit in 1 MiB
    assert messages[-1][0] == "E" and b"C54000\0" in messages[-1][1], messages[-1]
    assert b"bytes" in messages[-1][1], messages[-1]


def test_control_session_works(gw: Gateway) -> None:
    with _login(gw) as client:
        assert [m.type for m in client.query("select 1")] == ["T", "D", "C", "Z"]


def _recorded(gw: Gateway, text: str) -> list[dict[str, object]]:
    """The action records of `text`, once the recorder wrote one (up to 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        with contextlib.closing(sqlite3.connect(gw.workdir / "store.db")) as db:
            rows = db.execute("select payload from audit_events where type = 'action'").fetchall()
        found = [p for (raw,) in rows if (p := json.loads(raw)).get("text") == text]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_a_query_after_a_failed_statement_of_the_batch_is_skipped_as_the_server_does(
    gw: Gateway,
) -> None:
    """PostgreSQL skips a Query too while it skips to the Sync (only that Sync's
    ReadyForQuery comes). The gateway closes it at once: it took that ReadyForQuery for
    the Query's, and the next statement's answer for the Sync's, so the next statement
    was never recorded as done."""
    marker = f"select 7 as after_{uuid.uuid4().hex[:8]}"
    with _login(gw) as client:
        client.send(build.parse("", "select 1/0") + build.bind("", "") + build.execute(""))
        assert client.read_until("E")[-1].type == "E"
        client.send(build.query("select 42"))
        client.send(build.sync())
        assert [m.type for m in client.read_until("Z")] == ["Z"]
        assert [m.type for m in client.query(marker)] == ["T", "D", "C", "Z"]
    records = _recorded(gw, marker)
    assert [r["status"] for r in records] == ["ok"], records
    assert [r["status"] for r in _recorded(gw, "select 42")] == ["not_executed"]
