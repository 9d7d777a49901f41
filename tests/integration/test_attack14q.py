"""attack14q: around 5e65b8c, the ending of a dead worker's server backends
(postgres/backends.py: each worker's ledger `data_dir/backends/w<N>`, the surviving
workers' `end_backends`, `serve._end_earlier_backends` after a crash of the whole
gateway). A statement the gate judged a read while no function `bumpN` existed must not
reach the server after the DDL that makes `bumpN` commits; DDL must not be refused for
good, and a live session's backend must not be ended. Bypasses are shown on the
target's state (`(3).bumpN` is an UPDATE of `public.stock` once `bumpN` exists)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_PORT
from tests.integration.attack14 import (
    BUMP,
    attack_config,
    ext,
    mig_config,
    row_writes,
    running,
    settle,
    target,  # noqa: F401 - fixtures
)
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire
from tests.integration.test_cancel import _children, _worker_of
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def _workers(gw: Gateway, count: int = 2) -> list[int]:
    assert gw.proc is not None
    deadline = time.monotonic() + 15
    while len(workers := _children(gw.proc.pid)) < count or not all(
        f"worker {i}: PostgreSQL listener" in gw.log for i in range(count)
    ):
        assert time.monotonic() < deadline, "the workers never started"
        time.sleep(0.1)
    # The recorder processes are the workers' children, not the supervisor's.
    return sorted(workers)


def _index_of(gw: Gateway, pid: int) -> int:
    """A worker's index, from the supervisor's `supervising N workers: [...]` line."""
    for line in gw.log.splitlines():
        if "supervising" in line and "workers:" in line:
            pids = [int(p) for p in line.split("workers: [", 1)[1].split("]", 1)[0].split(",")]
            return pids.index(pid)
    raise AssertionError("no supervising line in the log")


def _wire_on(
    gw: Gateway,
    principal: str,
    opened: list[Wire],
    *,
    on: int | None = None,
    off: int | None = None,
    connection: str = "diff",
) -> Wire:
    """A ``principal`` session accepted by worker pid ``on`` (or by any but ``off``)."""
    workers = _workers(gw, 2)
    for _ in range(60):
        wire = Wire(gw, principal, connection)
        home = _worker_of(workers, gw.port, wire.sock.getsockname()[1])
        if (on is None or home == on) and (off is None or home != off):
            opened.append(wire)
            return wire
        wire.close()  # no idle session of it left on the other worker
    raise AssertionError("no session ever reached the wanted worker")


def _apart(gw: Gateway, opened: list[Wire], connection: str = "diff") -> tuple[Wire, Wire, int]:
    """`mig` on one worker and `rv` (on ``connection``) on the other, both settled, and
    the pid of `rv`'s worker (the one a test kills)."""
    mig = _wire_on(gw, "mig", opened)
    home = _worker_of(_workers(gw), gw.port, mig.sock.getsockname()[1])
    rv = _wire_on(gw, "rv", opened, off=home, connection=connection)
    victim = _worker_of(_workers(gw), gw.port, rv.sock.getsockname()[1])
    settle(rv)
    settle(mig)
    return mig, rv, victim


def _close(wires: list[Wire]) -> None:
    for wire in wires:
        try:
            wire.close()
        except OSError:
            pass


def _end_target_backends(target: Target) -> None:
    """Whatever the test left running on the target (not the gateway's doing)."""
    with target.conn() as c:
        c.execute(
            "select pg_terminate_backend(pid) from pg_stat_activity"
            " where datname = %s and pid <> pg_backend_pid()",
            (target.db,),
        )


class _Lock:
    """The target's owner holds ACCESS EXCLUSIVE on a fresh table ``public.<name>``
    (readable by the gateway's role) until `release`: a read of it waits on the server
    until then, so a string `select count(*) from <name>; select (3).bumpN` reaches
    its second statement exactly when the test says (no sleep has to outlast a
    restart)."""

    def __init__(self, target: Target, name: str) -> None:
        self.table = f"public.{name}"
        with target.conn() as c:
            c.execute(f"create table {self.table} (id int)")
            c.execute(f'grant select on {self.table} to "{target.role}"')
        self.conn = target.conn()
        self.conn.execute("begin")
        self.conn.execute(f"lock table {self.table}")

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.execute("rollback")
            self.conn.close()


def _restart(gw: Gateway) -> None:
    """Start ``gw`` again and wait for its new run's listeners (by the log: once, the
    port check of `Gateway.start` passed before the new run had written a line)."""
    before = gw.log.count("PostgreSQL listener on")
    gw.start()
    deadline = time.monotonic() + 60
    while gw.log.count("PostgreSQL listener on") <= before:
        assert gw.proc is not None and gw.proc.poll() is None, gw.log[-3000:]
        assert time.monotonic() < deadline, gw.log[-3000:]
        time.sleep(0.05)
    if "workers: 2" in gw.config_path.read_text():
        while gw.log.count("PostgreSQL listener on") < before + 2:
            assert time.monotonic() < deadline, gw.log[-3000:]
            time.sleep(0.05)


# -- a TCP forwarder between the gateway and the server ---------------------------------


class Forwarder:
    """A plain TCP forwarder on loopback (what docker-proxy, an SSH tunnel,
    `kubectl port-forward`, HAProxy or the Cloud SQL proxy are to the gateway): the
    server sees the forwarder's port as `client_port`, not the gateway's."""

    def __init__(self, to_port: int) -> None:
        self.to_port = to_port
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(64)
        self.port = self.server.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.to_port))
            done = threading.Semaphore(0)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, done), daemon=True).start()
            threading.Thread(
                target=self._closer, args=(client, upstream, done), daemon=True
            ).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket, done: threading.Semaphore) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            try:
                b.shutdown(socket.SHUT_WR)  # half-close, as socat and docker-proxy do
            except OSError:
                pass
            done.release()

    @staticmethod
    def _closer(a: socket.socket, b: socket.socket, done: threading.Semaphore) -> None:
        done.acquire()
        done.acquire()
        a.close()
        b.close()

    def close(self) -> None:
        self._stop = True
        self.server.close()


@pytest.fixture
def forwarded_two_workers(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    forwarder = Forwarder(PG_PORT)
    config = attack_config(target).replace(f"port: {PG_PORT},", f"port: {forwarder.port},")
    assert f"port: {forwarder.port}," in config
    gateway = make_gateway(tmp_path_factory.mktemp("attack14q-fwd"), "workers: 2\n" + config)
    gateway.start()
    yield gateway
    gateway.stop()
    forwarder.close()
    _end_target_backends(target)


def test_behind_a_tcp_forwarder_a_dead_workers_string_is_still_ended(
    forwarded_two_workers: Gateway, target: Target
) -> None:
    """attack14o's first test with a TCP forwarder between the gateway and PostgreSQL
    (docker's userland proxy, an SSH tunnel, `kubectl port-forward`, a cloud SQL
    proxy): `rv` on worker B sends `select count(*) from lk140; select (3).bump140`
    (the first waits for the table owner's lock, as any slow statement; the second
    statement judged a read: no bump140), B is killed, `mig` on worker A makes bump140.
    The survivor looks for B's backend by (pid, client_port); pg_stat_activity shows the
    forwarder's port, `end_backends` takes the backend as gone, B's row settles at once,
    `mig`'s DDL commits and the backend runs `(3).bump140` as an UPDATE after its sleep."""
    gw = forwarded_two_workers
    opened: list[Wire] = []
    lock = _Lock(target, "lk140")
    try:
        mig, rv, victim = _apart(gw, opened)
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select count(*) from public.lk140; select (3).bump140"))
        running(target, "select (3).bump140")  # waiting for the lock
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)  # reaped by the supervisor
        made = mig.run(q(BUMP.format(name="bump140")), ready=1)
        lock.release()
        time.sleep(0.5)  # the string has run, had its backend lived on
    finally:
        lock.release()
        _close(opened)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text())


# -- statements of every kind on the dying worker ---------------------------------------


@pytest.fixture
def two_workers(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(
        tmp_path_factory.mktemp("attack14q-w2"), "workers: 2\n" + attack_config(target)
    )
    gateway.start()
    yield gateway
    gateway.stop()
    _end_target_backends(target)


def test_pipelines_and_a_lock_wait_on_a_dying_worker_are_ended(
    two_workers: Gateway, target: Target
) -> None:
    """Worker B's sessions, when it is killed: `rv1` pipelined Parse/Bind/Execute of
    `select pg_sleep(0.5)`, a read of lk142 (waiting for a lock the owner holds) and
    `select (3).bump142` with a Flush and no Sync; `rv2` five Query messages in one
    write, two `select pg_sleep(0.2)`, two reads of lk142 and `select (3).bump142`;
    `rv3` a read waiting for a lock the owner holds, followed by `(3).bump142` in the
    same string. Each `(3).bump142` was judged a read (no bump142). `mig` on worker A
    makes bump142; the lock is released right after. A terminate ends a backend's whole
    pipeline, a lock wait included: nothing writes, and the DDL commits."""
    gw = two_workers
    with target.conn() as c:
        c.execute("create table public.lk142 (id int)")
        c.execute(f'grant select on public.lk142 to "{target.role}"')
    opened: list[Wire] = []
    holder = target.conn()
    try:
        mig = _wire_on(gw, "mig", opened)
        workers = _workers(gw)
        home = _worker_of(workers, gw.port, mig.sock.getsockname()[1])
        rv1, rv2, rv3 = (_wire_on(gw, "rv", opened, off=home) for _ in range(3))
        victim = _worker_of(workers, gw.port, rv1.sock.getsockname()[1])
        for wire in (mig, rv1, rv2, rv3):
            settle(wire)
        start, before = target.last_id(), target.snapshot()
        holder.execute("begin")
        holder.execute("lock table public.lk142")
        rv1.send(
            ext("select pg_sleep(0.5)"),
            ext("select count(*) from public.lk142"),
            ext("select (3).bump142"),
            build.flush(),
        )
        rv2.send(
            *[q("select pg_sleep(0.2)") for _ in range(2)],
            *[q("select count(*) from public.lk142") for _ in range(2)],
            q("select (3).bump142"),
        )
        rv3.send(q("select count(*) from public.lk142; select (3).bump142"))
        time.sleep(0.4)  # judged and running (or waiting) on the server
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)
        started = time.monotonic()
        made = mig.run(q(BUMP.format(name="bump142")), ready=1)
        waited = time.monotonic() - started
        holder.execute("rollback")
        time.sleep(0.7)  # every pipeline has run, had its backend lived on
    finally:
        holder.close()
        _close(opened)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text())
    assert not made.errors() and waited < 5, (made.text(), waited)


def test_a_dying_worker_0_with_an_mcp_query_in_flight(two_workers: Gateway, target: Target) -> None:
    """Worker 0 has the extra duties (the API and MCP, the chain keeper, the retention
    sweeper). `rv`'s MCP query `select count(*) from lk143; select (3).bump143` (the
    first waiting for the owner's lock) runs on an
    internal session of worker 0 (`internal_session`, noted in w0 through
    `dial_connection`); worker 0 is killed; `mig` on worker 1 makes bump143. The query's
    backend is ended before the DDL commits: nothing writes."""
    import asyncio

    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    gw = two_workers
    workers = _workers(gw)
    zero = next(pid for pid in workers if _index_of(gw, pid) == 0)
    opened: list[Wire] = []
    outcome: list[object] = []
    lock = _Lock(target, "lk143")

    async def call() -> None:
        url = f"http://127.0.0.1:{gw.api_port}/mcp"
        headers = {"Authorization": f"Bearer {gw.token('rv')}"}
        try:
            async with (
                httpx.AsyncClient(headers=headers, timeout=10) as http,
                streamable_http_client(url, http_client=http) as (read, write, _),
            ):
                info = Implementation(name="pytest-agent", version="1.0")
                async with ClientSession(read, write, client_info=info) as session:
                    await session.initialize()
                    outcome.append("initialized")
                    sql = "select count(*) from public.lk143; select (3).bump143"
                    outcome.append(
                        await session.call_tool("query", {"connection": "diff", "sql": sql})
                    )
        except BaseException as exc:  # the worker dies under it
            outcome.append(exc)

    try:
        mig = _wire_on(gw, "mig", opened, off=zero)
        settle(mig)
        start, before = target.last_id(), target.snapshot()
        thread = threading.Thread(target=lambda: asyncio.run(call()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while True:  # the MCP query's server session is sleeping
            with target.conn() as c:
                row = c.execute(
                    "select count(*) from pg_stat_activity where datname = %s"
                    " and query like 'select count(*) from public.lk143;%%'",
                    (target.db,),
                ).fetchone()
            if row and row[0]:
                break
            assert time.monotonic() < deadline, (outcome, gw.log[-3000:])
            time.sleep(0.05)
        os.kill(zero, signal.SIGKILL)
        time.sleep(0.3)
        made = mig.run(q(BUMP.format(name="bump143")), ready=1)
        lock.release()
        time.sleep(0.5)
        thread.join(1)
    finally:
        lock.release()
        _close(opened)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text(), outcome)
    assert not made.errors(), made.text()


def test_a_worker_killed_while_another_workers_ddl_drains_for_it(
    two_workers: Gateway, target: Target
) -> None:
    """`rv` on worker B sends `select count(*) from lk144; select (3).bump144` (the
    first waiting for the owner's lock); `mig` on worker
    A sends `create function bump144`: A's drain asks B, which would cancel `rv`'s
    string after the 0.5 s grace. B is killed inside the grace, with A's question
    unanswered. A must not take the dead B as answered before its backend has ended:
    nothing writes, and the DDL still commits (no refusal)."""
    gw = two_workers
    opened: list[Wire] = []
    lock = _Lock(target, "lk144")
    try:
        mig, rv, victim = _apart(gw, opened)
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select count(*) from public.lk144; select (3).bump144"))
        time.sleep(0.3)
        mig.send(q(BUMP.format(name="bump144")))
        time.sleep(0.15)  # A's drain waits for B's answer
        os.kill(victim, signal.SIGKILL)
        made = mig.read(ready=1)
        lock.release()
        time.sleep(0.5)
    finally:
        lock.release()
        _close(opened)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text())
    assert not made.errors(), made.text()


# -- a role whose connection slots are full ---------------------------------------------


@pytest.fixture(scope="module")
def mig_role(target: Target) -> Iterator[str]:
    """A second upstream role for `mig`'s own connection `diffm` (a migration bot's
    database user, as is usual): the agents' role's connection limit does not bind it."""
    role = f"{target.role}_m"
    from tests.integration.conftest import admin_conn

    with admin_conn() as c:
        c.execute(f'create role "{role}" login')
    with target.conn() as c:
        c.execute(f'grant usage, create on schema public to "{role}"')
        c.execute(f'grant select on all tables in schema public to "{role}"')
    try:
        yield role
    finally:
        with target.conn() as c:
            c.execute(f'alter role "{target.role}" connection limit -1')
            c.execute(f'drop owned by "{role}"')
        with admin_conn() as c:
            c.execute(f'drop role if exists "{role}"')


def _config_m(target: Target, role: str, timeout: str) -> str:
    import re

    config = attack_config(target)
    block = re.search(r"\n  diff:\n(?:    .*\n)+", config)
    assert block is not None
    own = block.group(0).replace("\n  diff:\n", "\n  diffm:\n", 1)
    own = own.replace(f"user: {target.role},", f"user: {role},")
    assert f"user: {role}," in own
    config = config.replace(block.group(0), block.group(0) + own.lstrip("\n"), 1)
    old = "limits: {login_failures: 50, login_window: 60s}"
    assert old in config
    return config.replace(
        old, f"limits: {{login_failures: 50, login_window: 60s, connect_timeout: {timeout}}}"
    )


def _role_backends(target: Target, states: tuple[str, ...] | None = None) -> int:
    with target.conn() as c:
        row = c.execute(
            "select count(*) from pg_stat_activity where usename = %s"
            " and (%s::text[] is null or state = any(%s::text[]))",
            (target.role, list(states) if states else None, list(states) if states else None),
        ).fetchone()
    return int(row[0]) if row else 0


def test_a_crashed_runs_string_is_ended_when_its_role_has_no_free_connection(
    target: Target, mig_role: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`workers: 1`, the agents' upstream role has `CONNECTION LIMIT 2` (an operator's
    cap). `rv` fills it with two busy sessions: `select count(*) from lk147; select
    (3).bump147` (the second judged a read: no bump147) and `select count(*) from
    lk147`, both waiting for a lock the table's owner holds. The
    gateway is killed (kill -9) and started again. Its idle backends end at once; the
    two busy ones hold both slots, so the new run's internal session to end them is
    refused (53300), the wait gives up at `limits.connect_timeout` (1 s) without a
    single CancelRequest (which needs no slot), and the gateway serves. `mig` makes
    bump147 through the new run (its own role); once the lock goes, the old string
    runs `(3).bump147` as an UPDATE that was never reviewed."""
    gw = make_gateway(tmp_path_factory.mktemp("attack14q-limit"), _config_m(target, mig_role, "1s"))
    gw.start()
    rv1 = rv2 = mig = None
    lock = _Lock(target, "lk147")
    try:
        rv1, rv2 = Wire(gw, "rv"), Wire(gw, "rv")
        settle(rv1)
        start, before = target.last_id(), target.snapshot()
        with target.conn() as c:
            c.execute(f'alter role "{target.role}" connection limit 2')
        rv1.send(q("select count(*) from public.lk147; select (3).bump147"))
        rv2.send(q("select count(*) from public.lk147"))
        time.sleep(0.3)  # waiting for the lock on the server
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait()
        _close([rv1, rv2])
        deadline = time.monotonic() + 3
        while _role_backends(target) > 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the idle ones have seen their client go
        _restart(gw)
        mig = Wire(gw, "mig", "diffm")
        made = mig.run(q(BUMP.format(name="bump147")), ready=1)
        lock.release()
        time.sleep(0.5)  # the string has run, had its backend lived on
    finally:
        lock.release()
        with target.conn() as c:
            c.execute(f'alter role "{target.role}" connection limit -1')
        if mig is not None:
            _close([mig])
        gw.stop()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text())


@pytest.fixture
def two_workers_m(
    target: Target, mig_role: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = make_gateway(
        tmp_path_factory.mktemp("attack14q-w2m"), "workers: 2\n" + _config_m(target, mig_role, "3s")
    )
    gateway.start()
    yield gateway
    gateway.stop()
    with target.conn() as c:
        c.execute(f'alter role "{target.role}" connection limit -1')
    _end_target_backends(target)


def test_ddl_is_not_refused_while_a_dead_workers_backends_hold_every_slot(
    two_workers_m: Gateway, target: Target
) -> None:
    """Availability. `workers: 2`; the agents' upstream role has `CONNECTION LIMIT 2`.
    `rv` holds both slots with two `select pg_sleep(12)` on worker B, which is killed.
    Worker A must end them before DDL may commit; its internal session is refused
    (too many connections for role), and it sends no CancelRequest (which takes no
    slot). `mig` (its own role, on A) makes a function: refused at
    `limits.connect_timeout` (3 s), and so would be every DDL for as long as the
    agent's statements run (an hour's `pg_sleep` stops every migration for an hour).
    The safe outcome: the DDL commits once a CancelRequest has ended them."""
    gw = two_workers_m
    opened: list[Wire] = []
    try:
        mig = _wire_on(gw, "mig", opened, connection="diffm")
        workers = _workers(gw)
        home = _worker_of(workers, gw.port, mig.sock.getsockname()[1])
        rv1 = _wire_on(gw, "rv", opened, off=home)
        rv2 = _wire_on(gw, "rv", opened, off=home)
        victim = _worker_of(workers, gw.port, rv1.sock.getsockname()[1])
        settle(rv1)
        settle(mig)
        with target.conn() as c:
            c.execute(f'alter role "{target.role}" connection limit 2')
        rv1.send(q("select pg_sleep(12)"))
        rv2.send(q("select pg_sleep(12)"))
        time.sleep(0.3)
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)
        started = time.monotonic()
        try:
            made = mig.run(q(BUMP.format(name="bump148")), ready=1)
            said, ok = made.text(), not made.errors()
        except ConnectionError as exc:
            said, ok = str(exc), False
        waited = time.monotonic() - started
    finally:
        with target.conn() as c:
            c.execute(f'alter role "{target.role}" connection limit -1')
        _close(opened)
    assert ok, (said, waited)


# -- the whole gateway killed and started again -----------------------------------------


def _kill_everything(gw: Gateway) -> None:
    """kill -9 of the supervisor, its workers and theirs (a container killed)."""
    assert gw.proc is not None
    found = _children(gw.proc.pid)
    found += [grandchild for pid in found for grandchild in _children(pid)]
    for pid in (gw.proc.pid, *found):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    gw.proc.wait()
    deadline = time.monotonic() + 10
    for pid in found:  # gone (or a zombie: its sockets are closed)
        while time.monotonic() < deadline:
            try:
                state = next(
                    line
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("State:")
                )
            except (OSError, StopIteration):
                break
            if "Z" in state.split()[1]:
                break
            time.sleep(0.02)


def test_a_crashed_two_worker_gateways_strings_are_ended_before_it_serves(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`workers: 2`: each worker has a session running `select count(*) from lk146;
    select (3).bump146` (waiting for the owner's lock) when the whole gateway is killed
    (supervisor, workers, recorders). The new run reads both ledgers (w0, w1) and ends
    both backends before it serves; `mig` then makes bump146 through it and the lock is
    released: nothing writes."""
    gw = make_gateway(
        tmp_path_factory.mktemp("attack14q-crash2"), "workers: 2\n" + attack_config(target)
    )
    gw.start()
    opened: list[Wire] = []
    lock = _Lock(target, "lk146")
    try:
        rv1 = _wire_on(gw, "rv", opened)
        workers = _workers(gw)
        one = _worker_of(workers, gw.port, rv1.sock.getsockname()[1])
        rv2 = _wire_on(gw, "rv", opened, off=one)
        settle(rv1)
        settle(rv2)
        start, before = target.last_id(), target.snapshot()
        rv1.send(q("select count(*) from public.lk146; select (3).bump146"))
        rv2.send(q("select count(*) from public.lk146; select (3).bump146"))
        time.sleep(0.3)
        _kill_everything(gw)
        _close(opened)
        opened.clear()
        _restart(gw)
        mig = Wire(gw, "mig")
        opened.append(mig)
        settle(mig)
        made = mig.run(q(BUMP.format(name="bump146")), ready=1)
        lock.release()
        time.sleep(0.5)
    finally:
        lock.release()
        _close(opened)
        gw.stop()
        _end_target_backends(target)
    assert not made.errors(), made.text()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, writes
    assert "an earlier run of this gateway left" in gw.log


class _Mute:
    """A listener that accepts and never answers (a server hung, a firewall that
    lets the handshake through)."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.port = self.server.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.server.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.server.close()
        for sock in self.held:
            sock.close()


def test_a_restart_with_the_server_not_answering_is_not_held_forever(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Availability. The gateway (`workers: 1`) is killed with a session running; it
    is started again with its upstream answering nothing (TCP accepted, no reply). The
    ending of the old run's backends is bounded by `limits.connect_timeout` (2 s): the
    gateway listens within that and its usual start, and says what it could not end."""
    config = attack_config(target).replace(
        "limits: {login_failures: 50, login_window: 60s}",
        "limits: {login_failures: 50, login_window: 60s, connect_timeout: 2s}",
    )
    gw = make_gateway(tmp_path_factory.mktemp("attack14q-mute"), config)
    gw.start()
    mute = _Mute()
    try:
        rv = Wire(gw, "rv")
        settle(rv)
        rv.send(q("select pg_sleep(5)"))
        time.sleep(0.3)
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait()
        rv.close()
        gw.config_path.write_text(config.replace(f"port: {PG_PORT},", f"port: {mute.port},"))
        started = time.monotonic()
        _restart(gw)
        took = time.monotonic() - started
    finally:
        gw.stop()
        mute.close()
        _end_target_backends(target)
    assert took < 20, took  # its usual start (seconds on a loaded machine) and 2 s
    assert "could not all be ended in 2 s" in gw.log


# -- a graceful stop with a statement still running -------------------------------------


def test_a_gracefully_stopped_runs_string_is_ended_before_the_next_run_serves(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`workers: 1`. `rv` sends `select count(*) from lk149; select (3).bump149` (the
    second judged a read: no bump149; the first waits for the owner's lock, as any
    slow statement), and the gateway is stopped the ordinary way (SIGTERM,
    a second one to cut the drain short: `systemctl restart`, a rolling deploy; a
    statement that outlives `limits.drain_timeout` does the same). The relay leaves
    with its string in flight; the shutdown cancels the wait for the server after
    2 s and closes the socket, which writes the backend's '-' line; the ledger is
    then empty and unlinked. The next run finds nothing to end; `mig` makes bump149
    through it, the lock goes, and the old backend runs `(3).bump149` as an UPDATE."""
    gw = make_gateway(tmp_path_factory.mktemp("attack14q-term"), attack_config(target))
    gw.start()
    mig = None
    lock = _Lock(target, "lk149")
    try:
        rv = Wire(gw, "rv")
        settle(rv)
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select count(*) from public.lk149; select (3).bump149"))
        time.sleep(0.3)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        gw.proc.send_signal(signal.SIGTERM)  # hurry: the drain is cut short
        gw.proc.wait(15)
        rv.close()
        ledger = gw.workdir / ".wardgate" / "backends" / "w0"
        left = ledger.read_text() if ledger.exists() else "(no ledger)"
        _restart(gw)
        mig = Wire(gw, "mig")
        settle(mig)
        made = mig.run(q(BUMP.format(name="bump149")), ready=1)
        lock.release()
        time.sleep(0.5)
    finally:
        lock.release()
        if mig is not None:
            _close([mig])
        gw.stop()
        _end_target_backends(target)
    assert not made.errors(), made.text()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, left)


def _wait_exited(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = next(
                line
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("State:")
            )
        except (OSError, StopIteration):
            return
        if "Z" in state.split()[1]:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} did not exit")


def test_a_worker_stopped_with_sigterm_is_not_taken_as_answered_too_early(
    two_workers: Gateway, target: Target
) -> None:
    """`workers: 2`. `rv` on worker B sends `select count(*) from lk150; select
    (3).bump150` (the first waits for the owner's lock, as any slow statement);
    B alone is stopped (SIGTERM, twice: the drain cut short; a statement that outlives
    `limits.drain_timeout` does the same). B leaves its busy session, cancels the wait
    for the server after 2 s and exits with an empty (unlinked) ledger. The supervisor
    marks B gone; worker A reads no backend and settles B's row at once; `mig`'s DDL on
    A commits bump150, the lock goes, and the backend runs `(3).bump150` as an
    UPDATE."""
    gw = two_workers
    opened: list[Wire] = []
    lock = _Lock(target, "lk150")
    try:
        mig, rv, victim = _apart(gw, opened)
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select count(*) from public.lk150; select (3).bump150"))
        time.sleep(0.3)
        os.kill(victim, signal.SIGTERM)
        time.sleep(0.2)
        os.kill(victim, signal.SIGTERM)  # hurry
        _wait_exited(victim)
        time.sleep(0.3)  # reaped by the supervisor
        made = mig.run(q(BUMP.format(name="bump150")), ready=1)
        lock.release()
        time.sleep(0.5)
    finally:
        lock.release()
        _close(opened)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text())


def test_two_of_three_workers_killed_and_a_live_session_untouched(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`workers: 3`. Workers B and C each have an `rv` session running `select
    count(*) from lk145; select (3).bump145` (waiting for the owner's lock); both are
    killed at once. `mig` on worker A makes
    bump145: it must wait for both dead workers' backends (nothing writes) and still
    commit; `ro`'s live session on A (idle, its backend in no ledger but A's) is not
    ended by the survivor's terminations."""
    gw = make_gateway(
        tmp_path_factory.mktemp("attack14q-w3"), "workers: 3\n" + attack_config(target)
    )
    gw.start()
    opened: list[Wire] = []
    lock = _Lock(target, "lk145")
    try:
        workers = _workers(gw, 3)
        mig = _wire_on(gw, "mig", opened)
        home = _worker_of(workers, gw.port, mig.sock.getsockname()[1])
        ro = _wire_on(gw, "ro", opened, on=home)
        rv1 = _wire_on(gw, "rv", opened, off=home)
        one = _worker_of(workers, gw.port, rv1.sock.getsockname()[1])
        other = next(pid for pid in workers if pid not in (home, one))
        rv2 = _wire_on(gw, "rv", opened, on=other)
        for wire in (mig, ro, rv1, rv2):
            settle(wire)
        start, before = target.last_id(), target.snapshot()
        rv1.send(q("select count(*) from public.lk145; select (3).bump145"))
        rv2.send(q("select count(*) from public.lk145; select (3).bump145"))
        time.sleep(0.3)
        os.kill(one, signal.SIGKILL)
        os.kill(other, signal.SIGKILL)
        time.sleep(0.3)
        made = mig.run(q(BUMP.format(name="bump145")), ready=1)
        lock.release()
        time.sleep(0.5)
        alive = ro.run(q("select count(*) from public.stock"), ready=1)
    finally:
        lock.release()
        _close(opened)
        gw.stop()
        _end_target_backends(target)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text())
    assert not made.errors(), made.text()
    assert not alive.errors() and alive.rows() == 1, alive.text()


def test_a_dead_workers_backend_on_a_connection_removed_by_a_reload_is_still_ended(
    two_workers: Gateway, target: Target
) -> None:
    """`workers: 2`, connections `diff` and `diff2` to the same database. `rv` on
    worker B, through `diff2`, sends `select count(*) from lk151; select (3).bump151`
    (waiting for the owner's lock). A reload removes `diff2` (its open sessions go on).
    B is killed. Worker A reads B's ledger: a backend on `diff2`, "not configured",
    taken as ended; B's row settles at once, `mig`'s DDL through `diff` commits
    bump151, the lock goes, and the backend runs `(3).bump151` as an UPDATE."""
    gw = two_workers
    opened: list[Wire] = []
    lock = _Lock(target, "lk151")
    try:
        mig, rv, victim = _apart(gw, opened, connection="diff2")
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select count(*) from public.lk151; select (3).bump151"))
        time.sleep(0.3)
        reloaded = gw.log.count("config reloaded")
        gw.config_path.write_text("workers: 2\n" + mig_config(target))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while gw.log.count("config reloaded") < reloaded + 2:  # both workers
            assert time.monotonic() < deadline, gw.log[-2000:]
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)
        started = time.monotonic()
        try:
            made = mig.run(q(BUMP.format(name="bump151")), ready=1)
            said = made.text()
        except ConnectionError as exc:  # refused: fail closed, the safe outcome here
            said = str(exc)
        waited = time.monotonic() - started
        lock.release()
        time.sleep(0.5)
    finally:
        lock.release()
        _close(opened)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, said, waited)
