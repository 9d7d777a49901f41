"""attack14i: the window in which DDL through the gateway may have changed what the
catalogue watch read (gate.CatalogFacts, relay `_ddl_open`). A function made by DDL
must not be called as a read (`select (3).bump`) by any session, on any connection to
that database, before the watch has read it: not when the transaction that made it is
committed inside a pipeline batch that has no Sync yet, not when an earlier batch's
answer (idle) comes after a later batch opened the transaction that made it, not through
another configured connection to the same database, and not in a session another worker
process (`workers: 2`) accepted."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.attack14 import (  # noqa: F401 - fixtures
    BUMP,
    attack_config,
    ext,
    gw,
    row_writes,
    running,
    settle,
    target,
    wires,
)
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire
from tests.integration.test_cancel import _children, _worker_of
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def test_a_commit_in_a_batch_without_sync_is_a_commit(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`mig` makes `bump11` and commits it through Parse/Bind/Execute, then sends only a
    Flush: PostgreSQL runs COMMIT at its Execute, so other sessions see the function
    while the batch stays open. An agent whose writes need a review calls it: held."""
    mig, rv = wires["mig"], wires["rv"]
    mig.send(ext("begin"), ext(BUMP.format(name="bump11")), ext("commit"), build.flush())
    time.sleep(0.5)  # answered (the Flush), and no look of the watch was asked for
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump11"), ready=1)
    assert target.log(start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()
    # The COMMIT's CommandComplete settled it: a plain read neither waits for the Sync
    # (limits.connect_timeout, 10 s) nor is refused as the worst case.
    started = time.monotonic()
    reply = wires["ro"].run(q("select count(*) from stock"), ready=1)
    assert not reply.errors() and time.monotonic() - started < 5, reply.text()
    mig.run(build.sync(), ready=1)


def test_an_earlier_idle_answer_does_not_end_a_later_ddl_transaction(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`mig` pipelines `select 1` and `begin; create function bump12 ...`: the first
    answer (idle) came after the second string was sent, and the session is in the
    transaction that made `bump12`, which only it sees. Its call of it is a write,
    held for a review, not run (the transaction is committed: nothing but the DDL)."""
    mig = wires["mig"]
    settle(mig)
    reply = mig.run(q("select 1"), q("begin; " + BUMP.format(name="bump12")), ready=2)
    assert not reply.errors(), reply.text()
    start = target.last_id()
    reply = mig.run(q("select (3).bump12"), ready=1)
    assert not mig.run(q("commit"), ready=1).errors()
    writes = row_writes(target, start)
    assert writes == [], reply.text()
    assert reply.refused(), reply.text()


def test_ddl_on_one_connection_is_a_change_on_every_connection_to_its_database(
    gw: Gateway, target: Target, wires: dict[str, Wire]
) -> None:
    """An engineer makes `bump13` through connection `diff` and commits; an agent whose
    writes need a review calls it right after through `diff2`, another connection to the
    same database: held, not run."""
    dev = wires["dev"]
    settle(dev)
    rv = Wire(gw, "rv", "diff2")
    try:
        rv.run(q("select 1"), ready=1)  # logged in, before the DDL
        assert not dev.run(q("begin"), ready=1).errors()
        assert not dev.run(q(BUMP.format(name="bump13")), ready=1).errors()
        assert not dev.run(q("commit"), ready=1).errors()
        start, before = target.last_id(), target.snapshot()
        reply = rv.run(q("select (3).bump13"), ready=1)
    finally:
        rv.close()
    assert target.log(start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


@pytest.fixture(scope="module")
def two_workers(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(
        tmp_path_factory.mktemp("attack14i-w2"), "workers: 2\n" + attack_config(target)
    )
    gateway.start()
    yield gateway
    gateway.stop()


def test_ddl_through_one_worker_is_a_change_in_every_worker(
    two_workers: Gateway, target: Target
) -> None:
    """`workers: 2`: `mig` makes `bump14` (autocommit) in a session of one worker
    process; an agent whose writes need a review calls it right after in a session the
    other worker accepted (SO_REUSEPORT: new connections land on either): held, not run."""
    gw = two_workers
    assert gw.proc is not None
    deadline = time.monotonic() + 10
    while len(workers := _children(gw.proc.pid)) < 2 or not all(
        f"worker {i}: PostgreSQL listener" in gw.log for i in (0, 1)
    ):
        assert time.monotonic() < deadline, "two workers never started"
        time.sleep(0.1)
    mig = Wire(gw, "mig")
    opened: list[Wire] = []
    try:
        home = _worker_of(workers, gw.port, mig.sock.getsockname()[1])
        for _ in range(40):  # an agent session on the other worker
            rv = Wire(gw, "rv")
            opened.append(rv)
            if _worker_of(workers, gw.port, rv.sock.getsockname()[1]) != home:
                break
        else:
            raise AssertionError("no session ever reached the other worker")
        settle(rv)
        assert not mig.run(q(BUMP.format(name="bump14")), ready=1).errors()
        start, before = target.last_id(), target.snapshot()
        reply = rv.run(q("select (3).bump14"), ready=1)
        settle(rv)  # the other worker reads the catalogue again: not refused for long
    finally:
        for wire in (mig, *opened):
            wire.close()
    assert target.log(start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


def _on_the_other_worker(gw: Gateway, home: Wire, opened: list[Wire]) -> Wire:
    """An `rv` session the other worker process accepted than ``home``'s (SO_REUSEPORT:
    new connections land on either); each one opened goes into ``opened``."""
    assert gw.proc is not None
    deadline = time.monotonic() + 10
    while len(workers := _children(gw.proc.pid)) < 2 or not all(
        f"worker {i}: PostgreSQL listener" in gw.log for i in (0, 1)
    ):
        assert time.monotonic() < deadline, "two workers never started"
        time.sleep(0.1)
    mine = _worker_of(workers, gw.port, home.sock.getsockname()[1])
    for _ in range(40):
        rv = Wire(gw, "rv")
        opened.append(rv)
        if _worker_of(workers, gw.port, rv.sock.getsockname()[1]) != mine:
            return rv
    raise AssertionError("no session ever reached the other worker")


def test_a_session_on_another_worker_waits_for_the_ddl_batch_not_the_timeout(
    two_workers: Gateway, target: Target
) -> None:
    """While an engineer's batch with DDL runs (a second and a half), a read on the other
    worker waits for it and for that worker's look, then runs: not the whole
    `limits.connect_timeout` (10 s) followed by a refusal, as when nothing on that worker
    read the shared page while every session there waited."""
    dev = Wire(two_workers, "dev")
    opened: list[Wire] = []
    try:
        rv = _on_the_other_worker(two_workers, dev, opened)
        settle(rv)
        dev.send(q(BUMP.format(name="bump15") + "; select pg_sleep(1.5)"))
        running(target, "bump15")  # the batch is in flight
        started = time.monotonic()
        reply = rv.run(q("select count(*) from stock"), ready=1)
        waited = time.monotonic() - started
        assert not dev.read(ready=1).errors()
    finally:
        for wire in (dev, *opened):
            wire.close()
    assert not reply.errors(), reply.text()
    assert 0.5 < waited < 6, waited
