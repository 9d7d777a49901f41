"""Query cancellation through the gateway: the client's CancelRequest carries the
gateway's own key, which the gateway maps (through the store, so any worker or
replica can) to the upstream backend's key."""

from __future__ import annotations

import os
import secrets
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_PORT
from tests.integration.conftest import Gateway, admin_conn, base_config, make_gateway
from tests.integration.pg_cluster import RawClient
from wardgate.postgres.codec import build


def _wait_active(app: str, timeout: float = 10.0) -> None:
    """Until the upstream backend of session `app` is running pg_sleep."""
    deadline = time.monotonic() + timeout
    with admin_conn() as admin:
        while time.monotonic() < deadline:
            row = admin.execute(
                "select 1 from pg_stat_activity where application_name = %s and state = 'active'"
                " and query like 'select pg_sleep%%'",
                (app,),
            ).fetchone()
            if row:
                return
            time.sleep(0.02)
    raise AssertionError(f"the query of {app} never started upstream")


def _cancel_during_sleep(
    conn: psycopg.Connection[Any], app: str, cancel: Callable[[], None]
) -> float:
    """Run pg_sleep(30) and cancel it from another thread; returns the seconds it took."""
    errors: list[BaseException] = []

    def canceller() -> None:
        try:
            _wait_active(app)
            cancel()
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    thread = threading.Thread(target=canceller)
    start = time.monotonic()
    thread.start()
    try:
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
    finally:
        thread.join(15)
    assert not errors, errors
    return time.monotonic() - start


@pytest.mark.parametrize("how", ["cancel", "cancel_safe"])
@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_cancel_long_query(gateway: Gateway, how: str, sslmode: str) -> None:
    # `cancel` is libpq's classic PQcancel (always plaintext); `cancel_safe` is the newer
    # API, which sends the CancelRequest inside TLS when the session used TLS.
    app = f"wg-cancel-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(
        gateway.dsn("dev", sslmode=sslmode, application_name=app), autocommit=True
    ) as conn:
        elapsed = _cancel_during_sleep(conn, app, getattr(conn, how))
        assert elapsed < 5, f"cancel took {elapsed:.1f} s"
        assert conn.execute("select 'usable'").fetchone() == ("usable",)


def _raw_cancel(port: int, pid: int, secret: bytes) -> None:
    with RawClient(port) as client:
        client.send(build.cancel_request(pid, secret))
        assert client.is_closed(), "the gateway did not close the cancel connection"
        assert client.received == b"", "a CancelRequest is never answered"


def test_cancel_with_wrong_key_does_nothing(gateway: Gateway) -> None:
    app = f"wg-cancel-raw-{uuid.uuid4().hex[:8]}"
    with RawClient(gateway.port) as client:
        messages = client.login("dev", gateway.token("dev"), "it", application_name=app)
        (key,) = [m for m in messages if m.type == "K"]
        pid, secret = struct.unpack("!i", key.body[:4])[0], key.body[4:]
        # The client sees the upstream backend's real pid, but the gateway's own secret.
        with admin_conn() as admin:
            row = admin.execute(
                "select pid from pg_stat_activity where application_name = %s", (app,)
            ).fetchone()
        assert row is not None and row[0] == pid

        client.send(build.query("select pg_sleep(30)"))
        _wait_active(app)
        # Sent straight to the server, the key the client holds cancels nothing: the
        # server's secret never left the gateway.
        with RawClient(PG_PORT) as direct:
            direct.send(build.cancel_request(pid, secret))
        wrong = bytes(b ^ 0xFF for b in secret)
        _raw_cancel(gateway.port, pid, wrong)  # right pid, wrong secret
        _raw_cancel(gateway.port, pid ^ 0x5A5A, secret)  # wrong pid, right secret
        _raw_cancel(gateway.port, pid, secret + b"\x00" * 4)  # right key, padded to 8 bytes
        _raw_cancel(gateway.port, secrets.randbelow(2**31), secrets.token_bytes(4))
        client.sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            client.read_message()  # still sleeping: nothing was cancelled
        client.sock.settimeout(10.0)

        started = time.monotonic()
        _raw_cancel(gateway.port, pid, secret)
        replies = client.read_until("Z")  # RowDescription may come first, then the error
        assert replies[-1].type == "E" and replies[-1].fields["C"] == "57014", replies
        assert time.monotonic() - started < 5
        assert client.read_message().type == "Z"
        assert client.query("select 1")[-1].type == "Z"


@pytest.fixture(scope="module")
def two_workers(it_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = make_gateway(tmp_path_factory.mktemp("gw2"), "workers: 2\n" + base_config(it_database))
    gw.start()
    yield gw
    gw.stop()


def test_cancel_with_two_workers(two_workers: Gateway) -> None:
    """A cancel arrives on a new connection, which SO_REUSEPORT may hand to the other
    worker process; ten of them are all but sure to cross over at least once."""
    gw = two_workers
    deadline = time.monotonic() + 10
    while (
        "worker 1: PostgreSQL listener" not in gw.log
        or "worker 0: PostgreSQL listener" not in gw.log
    ):
        assert time.monotonic() < deadline, gw.log
        time.sleep(0.1)
    for round_ in range(2):
        app = f"wg-cancel-w2-{round_}-{uuid.uuid4().hex[:6]}"
        with psycopg.connect(gw.dsn("dev", application_name=app), autocommit=True) as conn:
            for _ in range(5):
                elapsed = _cancel_during_sleep(conn, app, conn.cancel)
                assert elapsed < 5, f"cancel took {elapsed:.1f} s"
                assert conn.execute("select 1").fetchone() == (1,)
    assert gw.proc is not None and gw.proc.poll() is None


# -- which worker holds a socket (Linux /proc) ---------------------------------------------


def _children(pid: int) -> list[int]:
    out = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == pid:
                out.append(int(status.parent.name))
    return out


def _worker_of(workers: list[int], gw_port: int, client_port: int, timeout: float = 3.0) -> int:
    """The worker process that accepted the connection from `client_port`."""
    deadline = time.monotonic() + timeout
    while True:
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if parts[1].endswith(f":{gw_port:04X}") and parts[2].endswith(f":{client_port:04X}"):
                inode = parts[9]
        if inode is not None:
            for pid in workers:
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    try:
                        if os.readlink(fd) == f"socket:[{inode}]":
                            return pid
                    except OSError:
                        continue
        if time.monotonic() > deadline:
            raise AssertionError(f"no worker holds the connection from port {client_port}")
        time.sleep(0.02)


def test_cancel_crosses_workers_deterministically(two_workers: Gateway) -> None:
    """The CancelRequest is sent on a connection accepted by the *other* worker."""
    gw = two_workers
    assert gw.proc is not None
    deadline = time.monotonic() + 10
    while len(workers := _children(gw.proc.pid)) < 2:
        assert time.monotonic() < deadline, "two workers never started"
        time.sleep(0.1)
    app = f"wg-cancel-x-{uuid.uuid4().hex[:8]}"
    with RawClient(gw.port) as session:
        messages = session.login("dev", gw.token("dev"), "it", application_name=app)
        (key,) = [m for m in messages if m.type == "K"]
        pid, secret = struct.unpack("!i", key.body[:4])[0], key.body[4:]
        home = _worker_of(workers, gw.port, session.sock.getsockname()[1])
        session.send(build.query("select pg_sleep(30)"))
        _wait_active(app)
        for _ in range(100):
            with RawClient(gw.port) as cancel:
                if _worker_of(workers, gw.port, cancel.sock.getsockname()[1]) != home:
                    cancel.send(build.cancel_request(pid, secret))
                    assert cancel.is_closed()
                    break
        else:
            raise AssertionError("no connection ever reached the other worker")
        session.sock.settimeout(5.0)
        replies = session.read_until("Z")
        assert replies[-1].type == "E" and replies[-1].fields["C"] == "57014", replies
        assert session.read_message().type == "Z"


@pytest.mark.parametrize("round_", range(2))
def test_workers_share_one_generated_certificate(
    it_database: str, tmp_path: Path, round_: int
) -> None:
    """On the first start every worker wants the self-signed pair at once: all must come
    up, with the same certificate (verify-full against the file works on any of them)."""
    gw = make_gateway(tmp_path / f"gw8-{round_}", "workers: 8\n" + base_config(it_database))
    gw.start()
    try:
        deadline = time.monotonic() + 15
        while sum(f"worker {i}: PostgreSQL listener" in gw.log for i in range(8)) < 8:
            assert "failed" not in gw.log, gw.log
            assert time.monotonic() < deadline, gw.log
            time.sleep(0.1)
        cert = gw.workdir / ".wardgate" / "tls" / "server.crt"
        for _ in range(8):  # new connections land on any of the workers
            dsn = gw.dsn("dev", sslmode="verify-full", sslrootcert=str(cert))
            with psycopg.connect(dsn) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
        assert "failed" not in gw.log, gw.log
    finally:
        gw.stop()
