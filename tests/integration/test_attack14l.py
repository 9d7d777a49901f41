"""attack14l: the commit barrier (postgres/commit_barrier.py). A statement judged before
a DDL commit must not be resolved by the server after it: the DDL waits until the
statements other sessions forwarded before it are answered, cancels the ones still
running after a grace, and is refused (its session ends) when they cannot be ended.
Each test checks the target's state: `rv`'s writes need a review, and the function it
calls (a field selection the gate judged a read: no such function existed) writes."""

from __future__ import annotations

import threading
import time

import pytest

from tests.integration.attack14 import (  # noqa: F401 - fixtures
    BUMP,
    function_exists,
    gw,
    row_writes,
    running,
    settle,
    target,
    wires,
)
from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Reply, Target, Wire
from tests.integration.test_attack14i import (  # noqa: F401 - two_workers: a fixture
    _on_the_other_worker,
    two_workers,
)
from tests.integration.test_bounds_batch import _recorded
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def _slow_string_then_ddl(
    target: Target, agent: Wire, mig: Wire, name: str
) -> tuple[Reply, Reply, float]:
    """`agent` sends a Query string whose second statement calls `name` (no such
    function yet: judged a read); while its first sleeps, `mig` creates `name`
    (autocommit). PostgreSQL parses the second statement only after the first ends,
    so without the barrier it finds the new function and runs it."""
    agent.send(q(f"select pg_sleep(3); select (3).{name}"))
    running(target, f"select (3).{name}")  # in flight on the server
    started = time.monotonic()
    made = mig.run(q(BUMP.format(name=name)), ready=1)
    waited = time.monotonic() - started
    return agent.read(ready=1), made, waited


def test_a_later_statement_of_a_slow_string_does_not_call_what_ddl_commits(
    target: Target, wires: dict[str, Wire]
) -> None:
    rv, mig = wires["rv"], wires["mig"]
    settle(rv)
    start, before = target.last_id(), target.snapshot()
    reply, made, waited = _slow_string_then_ddl(target, rv, mig, "bump60")
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, reply.text()
    assert "57014" in reply.codes(), reply.text()  # cancelled, not run
    assert not made.errors(), made.text()  # the DDL itself went through, after the cancel
    assert function_exists(target, "bump60")
    assert 0.4 < waited < 5, waited


def test_the_barrier_spans_workers(two_workers: Gateway, target: Target) -> None:  # noqa: F811
    """The same with the agent's session on the other worker process."""
    mig = Wire(two_workers, "mig")
    opened: list[Wire] = []
    try:
        rv = _on_the_other_worker(two_workers, mig, opened)
        settle(rv)
        start, before = target.last_id(), target.snapshot()
        reply, made, waited = _slow_string_then_ddl(target, rv, mig, "bump61")
    finally:
        for wire in (mig, *opened):
            wire.close()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, reply.text()
    assert "57014" in reply.codes(), reply.text()
    assert not made.errors(), made.text()
    assert 0.4 < waited < 5, waited


def test_a_quick_statement_is_waited_for_not_cancelled(
    target: Target, wires: dict[str, Wire]
) -> None:
    """A statement that ends within the grace is answered as usual, and the DDL waits
    for it."""
    rv, mig = wires["rv"], wires["mig"]
    settle(rv)
    rv.send(q("select pg_sleep(0.3); select 1"))
    running(target, "pg_sleep(0.3)")
    started = time.monotonic()
    made = mig.run(q(BUMP.format(name="bump62")), ready=1)
    waited = time.monotonic() - started
    reply = rv.read(ready=1)
    assert not reply.errors() and not made.errors(), (reply.text(), made.text())
    assert 0.1 < waited < 0.5, waited


def test_ddl_through_mcp_waits_for_a_client_session(target: Target, gw: Gateway) -> None:
    """An MCP query that makes a function is DDL committing too: a client session's
    slow string is cancelled before it."""
    from tests.integration.test_mcp import body, call

    rv = Wire(gw, "rv")
    try:
        settle(rv)
        start, before = target.last_id(), target.snapshot()
        rv.send(q("select pg_sleep(3); select (3).bump63"))
        time.sleep(0.3)
        made = call(gw, "dev", ("query", {"connection": "diff", "sql": BUMP.format(name="bump63")}))
        body(made[0])
        reply = rv.read(ready=1)
    finally:
        rv.close()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, reply.text()
    assert "57014" in reply.codes(), reply.text()


def test_an_mcp_query_in_flight_is_cancelled_before_ddl_commits(
    target: Target, gw: Gateway, wires: dict[str, Wire]
) -> None:
    """The other way round: an MCP query of `rv` is in flight when `mig` commits DDL."""
    from tests.integration.test_mcp import call

    mig = wires["mig"]
    settle(mig)
    start, before = target.last_id(), target.snapshot()
    answers: list[object] = []
    sql = "select pg_sleep(3); select (3).bump64"
    agent = threading.Thread(
        target=lambda: answers.extend(call(gw, "rv", ("query", {"connection": "diff", "sql": sql})))
    )
    agent.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # until the server runs it
            with target.conn() as c:
                row = c.execute(
                    "select count(*) from pg_stat_activity where query like '%bump64%'"
                    " and state = 'active' and pid <> pg_backend_pid()"
                ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.05)
        made = mig.run(q(BUMP.format(name="bump64")), ready=1)
    finally:
        agent.join(30)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, answers
    assert not made.errors(), made.text()
    assert answers and getattr(answers[0], "isError", False), answers


def test_ddl_is_refused_when_an_earlier_statement_cannot_be_ended(
    target: Target, gw: Gateway
) -> None:
    """`rv` asks for 60 MB and reads none of it: the server has finished sending what
    the socket buffers take, and a cancel does not end a statement blocked writing its
    result. The gateway holds its answer, so the statement stays unanswered: `mig`'s DDL
    is not sent, its session ends with 55P03 after `limits.connect_timeout`, and the
    function does not exist."""
    rv = Wire(gw, "rv")
    mig = Wire(gw, "mig")
    try:
        settle(rv)
        rv.send(q("select repeat('x', 1000000) from generate_series(1, 60)"))
        time.sleep(1)
        mig.send(q(BUMP.format(name="bump65")))
        with pytest.raises(ConnectionError) as ended:
            mig.read(ready=1)
    finally:
        rv.close()
        mig.close()
    assert "55P03" in str(ended.value) and "DDL not sent" in str(ended.value), ended.value
    assert not function_exists(target, "bump65")
    recorded = _recorded(gw, BUMP.format(name="bump65"))
    assert [r["status"] for r in recorded] == ["not_executed"], recorded


def test_a_lock_holder_can_roll_back_while_ddl_waits_for_its_lock(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`dev` holds a lock; `mig`'s ALTER waits for it, and from its sending every session
    on the database waits for the catalogue watch's next look, which comes only once
    the ALTER is answered. `dev`'s ROLLBACK, judged the same whatever the catalogue
    holds, goes through at once, not after `limits.connect_timeout` (10 s)."""
    dev, mig = wires["dev"], wires["mig"]
    assert not dev.run(q("create table public.lock_hold (id int)"), ready=1).errors()
    settle(dev)
    assert not dev.run(q("begin; lock table public.lock_hold"), ready=1).errors()
    mig.send(q("alter table public.lock_hold add column c int"))
    time.sleep(0.3)  # the ALTER waits for the lock
    started = time.monotonic()
    rolled = dev.run(q("rollback"), ready=1)
    took = time.monotonic() - started
    altered = mig.read(ready=1)
    assert not rolled.errors() and not altered.errors(), (rolled.text(), altered.text())
    assert took < 3, took
