"""attack14o: around the commit barrier (postgres/commit_barrier.py) and the one-message
path after DDL (relay.py `_needs_no_facts`, 4673d57). A statement the gate judged a read
while no function `bumpN` existed must not reach the server after the DDL that makes
`bumpN` commits. Bypasses are shown on the target's state: `mig`'s writes need a review,
and `(3).bumpN` is an UPDATE once `bumpN` exists."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator

import pytest

from tests.integration.attack14 import (  # noqa: F401 - fixtures
    BUMP,
    attack_config,
    function_exists,
    gw,
    row_writes,
    running,
    settle,
    target,
    wires,
)
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire
from tests.integration.test_attack14i import (  # noqa: F401 - two_workers: a fixture
    _on_the_other_worker,
    two_workers,
)
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def test_a_batch_held_by_the_barrier_is_not_sent_after_a_later_ddl_commit(
    target: Target, gw: Gateway
) -> None:
    """Two batches that may commit DDL, held by the barrier at the same time, do not wait
    for each other: a held batch is not in flight (`flight` subtracts `_held_unsent`).
    `mig` (DDL allowed, writes need a review) sends `select pg_sleep(1); select
    (3).bump90; create table ...`: its second statement is judged a read (no bump90
    yet), and the string, which may commit DDL, is held while `ro`'s statement runs.
    Then `dev` commits `create function bump90` (made earlier in an open block): held as
    well, its drain waits for `ro` only, not for `mig`'s held string. Once `ro`'s
    statement is cancelled both are sent; the server parses `(3).bump90` after the
    sleep, after bump90 committed, and runs the UPDATE as `mig`'s read."""
    mig, dev, ro = Wire(gw, "mig"), Wire(gw, "dev"), Wire(gw, "ro")
    try:
        for wire in (mig, dev, ro):
            settle(wire)
        assert not dev.run(q("begin; " + BUMP.format(name="bump90")), ready=1).errors()
        settle(mig)
        start, before = target.last_id(), target.snapshot()
        ro.send(q("select pg_sleep(3)"))
        running(target, "select pg_sleep(3)")  # the next DDL commit must wait for it
        mig.send(q("select pg_sleep(1); select (3).bump90; create table public.t90 (i int)"))
        time.sleep(0.1)  # judged and held
        dev.send(q("commit"))
        committed = dev.read(ready=1)
        reply = mig.read(ready=1)
        ro.read(ready=1)
    finally:
        for wire in (mig, dev, ro):
            wire.close()
    assert not committed.errors(), committed.text()
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()


@pytest.fixture
def two_workers_to_kill(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    gateway = make_gateway(
        tmp_path_factory.mktemp("attack14o-w2kill"), "workers: 2\n" + attack_config(target)
    )
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_dead_workers_running_string_is_not_taken_as_answered(
    two_workers_to_kill: Gateway, target: Target
) -> None:
    """`workers: 2`. `rv` (writes need a review) sends `select pg_sleep(2); select
    (3).bump91` on worker B (the second statement judged a read: no bump91). Worker B
    dies (kill -9: a crash, the OOM killer). The supervisor marks it gone
    (`DdlBoard.worker_gone`: its acks become "everything answered", since "it has no
    statements left to wait for"), but its server backends are still running what it
    sent: PostgreSQL notices the closed socket only when it next reads or writes it.
    `mig`'s DDL on worker A then finds nothing to wait for, commits bump91 at once, and
    the backend parses `(3).bump91` after its sleep and runs the UPDATE.

    Now the supervisor only marks B gone; worker A reads B's ledger of backends
    (postgres/backends.py), ends the one still sleeping, and settles B's row only then:
    `mig`'s DDL waits for that, and the string never gets to `(3).bump91`."""
    from tests.integration.test_cancel import _children, _worker_of

    gw = two_workers_to_kill
    assert gw.proc is not None
    mig = Wire(gw, "mig")
    opened: list[Wire] = []
    try:
        rv = _on_the_other_worker(gw, mig, opened)
        settle(rv)
        settle(mig)
        victim = _worker_of(_children(gw.proc.pid), gw.port, rv.sock.getsockname()[1])
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select pg_sleep(2); select (3).bump91"))
        running(target, "select (3).bump91")
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.3)  # reaped by the supervisor
        started = time.monotonic()
        made = mig.run(q(BUMP.format(name="bump91")), ready=1)
        waited = time.monotonic() - started
        time.sleep(2.5)  # the string has run
    finally:
        for wire in (mig, *opened):
            try:
                wire.close()
            except OSError:
                pass
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, made.text(), waited)


def test_a_reader_pipelining_slow_statements_does_not_stop_every_ddl(
    target: Target, gw: Gateway
) -> None:
    """Availability. `ro`, who may only read, pipelines fifteen `select pg_sleep(1)`
    Queries in one write: the gateway forwards them all (a few bytes each). A DDL commit
    of `mig` waits for every one of them; the drain cancels once, after the grace, which
    ends only the statement running then: the next one starts at once. The rest still
    take longer than `limits.connect_timeout`, the DDL is refused and `mig`'s session
    ended (55P03). One read-only agent stops every migration, without the 60 MB unread
    result of attack14l. The safe outcome: the DDL commits (each statement still running
    after the grace is cancelled, or the backend's whole pipeline)."""
    ok, said, waited = ddl_behind_pipelined_sleeps(gw, 15, "bump92")
    assert ok, (said, waited)


def ddl_behind_pipelined_sleeps(gw: Gateway, sleeps: int, name: str) -> tuple[bool, str, float]:
    """`ro` pipelines ``sleeps`` Queries of `select pg_sleep(1)` in one write; `mig`
    then makes function ``name``: whether that went through, what `mig` was told, and
    how long it waited."""
    ro, mig = Wire(gw, "ro"), Wire(gw, "mig")
    try:
        settle(ro)
        settle(mig)
        ro.send(*[q("select pg_sleep(1)") for _ in range(sleeps)])
        time.sleep(0.3)
        started = time.monotonic()
        try:
            made = mig.run(q(BUMP.format(name=name)), ready=1)
            said, ok = made.text(), not made.errors()
        except ConnectionError as exc:
            said, ok = str(exc), False
        return ok, said, time.monotonic() - started
    finally:
        ro.close()
        mig.close()


def test_a_lock_holder_whose_rollback_arrives_in_two_pieces_is_not_held(
    target: Target, wires: dict[str, Wire]
) -> None:
    """attack14l's lock holder, with its ROLLBACK split over two TCP segments (as any
    stream may deliver it). `dev` holds a lock that `mig`'s ALTER waits for; from the
    ALTER's sending the catalogue is `changing`. The gateway reads the first bytes of
    the ROLLBACK: no whole message to peek at (`_needs_no_facts(None)` is False), so it
    waits for the catalogue watch and stops reading the client; the rest of the
    ROLLBACK stays unread until the watch looks, which it does only after the ALTER is
    answered, which waits for the ROLLBACK: `limits.connect_timeout` (10 s) lost, then
    the ROLLBACK is judged as the worst case."""
    dev, mig = wires["dev"], wires["mig"]
    assert not dev.run(q("create table public.lock_hold2 (id int)"), ready=1).errors()
    settle(dev)
    assert not dev.run(q("begin; lock table public.lock_hold2"), ready=1).errors()
    mig.send(q("alter table public.lock_hold2 add column c int"))
    time.sleep(0.3)  # the ALTER waits for the lock
    rollback = q("rollback")
    started = time.monotonic()
    dev.send(rollback[:3])
    time.sleep(0.1)  # the gateway reads the first piece on its own
    dev.send(rollback[3:])
    rolled = dev.read(ready=1)
    took = time.monotonic() - started
    altered = mig.read(ready=1)
    assert not rolled.errors() and not altered.errors(), (rolled.text(), altered.text())
    assert took < 3, took


def test_ddl_a_dead_worker_sent_is_a_change_until_its_backend_is_done(
    two_workers_to_kill: Gateway, target: Target
) -> None:
    """`workers: 2`. `mig` on worker B sends `select pg_sleep(1.5); create function
    bump93 ...` (autocommit: committed at the end of the string). Worker B dies while
    the backend sleeps. The supervisor marks it gone: its batch counts as answered, and
    worker A's watch looks again at once, before the backend has even run the CREATE,
    and settles on a catalogue without bump93. The backend then commits bump93 (its
    output is buffered; the closed socket is noticed only at the flush). `rv` on worker
    A calls `(3).bump93` after that: judged a read on the facts of before, the UPDATE
    runs without a review.

    Now worker A ends B's backends before it trusts its catalogue again (the backend is
    terminated in its sleep: bump93 is never made) and, should one outlive that, reads
    the catalogue again only once it has ended: either way `(3).bump93` writes nothing,
    and is refused if bump93 exists."""
    from tests.integration.test_cancel import _children, _worker_of

    gw = two_workers_to_kill
    assert gw.proc is not None
    rv = Wire(gw, "rv")
    opened: list[Wire] = []
    try:
        mig = _on_the_other_worker_as(gw, rv, "mig", opened)
        settle(rv)
        settle(mig)
        victim = _worker_of(_children(gw.proc.pid), gw.port, mig.sock.getsockname()[1])
        mig.send(q("select pg_sleep(1.5); " + BUMP.format(name="bump93")))
        running(target, "bump93")
        os.kill(victim, signal.SIGKILL)
        time.sleep(0.5)  # reaped; worker A ends B's backends
        settle(rv)
        time.sleep(1.5)  # past the sleep: had the backend lived on, the CREATE has run
        made = function_exists(target, "bump93")
        start, before = target.last_id(), target.snapshot()
        reply = rv.run(q("select (3).bump93"), ready=1)
    finally:
        for wire in (rv, *opened):
            try:
                wire.close()
            except OSError:
                pass
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert not made, "the dead worker's backend lived on to make bump93"
    assert reply.errors(), reply.text()


def _on_the_other_worker_as(gw: Gateway, home: Wire, principal: str, opened: list[Wire]) -> Wire:
    """A ``principal`` session the other worker accepted than ``home``'s."""
    from tests.integration.test_cancel import _children, _worker_of

    assert gw.proc is not None
    deadline = time.monotonic() + 10
    while len(workers := _children(gw.proc.pid)) < 2 or not all(
        f"worker {i}: PostgreSQL listener" in gw.log for i in (0, 1)
    ):
        assert time.monotonic() < deadline, "two workers never started"
        time.sleep(0.1)
    mine = _worker_of(workers, gw.port, home.sock.getsockname()[1])
    for _ in range(40):
        wire = Wire(gw, principal)
        opened.append(wire)
        if _worker_of(workers, gw.port, wire.sock.getsockname()[1]) != mine:
            return wire
    raise AssertionError("no session ever reached the other worker")


def test_a_crashed_gateways_running_string_is_ended_before_the_next_run_serves(
    target: Target, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`workers: 1`, no supervisor: the whole gateway is killed (kill -9) while `rv`'s
    string `select pg_sleep(6); select (3).bump94` sleeps on the server. It is started
    again at once, and `mig` makes bump94 through the new run, whose catalogue facts
    know nothing of the old backend. Had it lived on, it would parse `(3).bump94` after
    that commit and run the UPDATE. The new run reads the old run's ledger of backends
    (postgres/backends.py) and ends them before it serves."""
    gw = make_gateway(tmp_path_factory.mktemp("attack14o-restart"), attack_config(target))
    gw.start()
    try:
        rv, mig = Wire(gw, "rv"), Wire(gw, "mig")
        settle(rv)
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select pg_sleep(6); select (3).bump94"))
        running(target, "select (3).bump94")
        assert gw.proc is not None
        gw.proc.kill()
        gw.proc.wait()
        rv.close()
        mig.close()
        gw.start()
        mig = Wire(gw, "mig")
        settle(mig)
        made = mig.run(q(BUMP.format(name="bump94")), ready=1)
        time.sleep(6)  # past the old string's sleep
        mig.close()
    finally:
        gw.stop()
    assert not made.errors(), made.text()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, writes
    # rv's and mig's, and the gateway's own (the catalogue watch's) if open then.
    assert re.search(r"an earlier run of this gateway left [2-9] server session", gw.log)
