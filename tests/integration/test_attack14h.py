"""attack14h: the catalogue watch's facts after DDL through the gateway. The watch looks
again right after a DDL statement ran, but a function created inside a transaction is
visible to other sessions only once that transaction commits: the facts must not stay
those of before the commit (`(3).bump` judged as a read) until the next timed look."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.attack14 import BUMP, function_exists, mig_config, row_writes, target, wires  # noqa: F401 - fixtures
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


# One connection to the target (attack14.py's gateway adds `diff2`).
@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("attack14h"), mig_config(target))
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_function_committed_after_its_ddl_is_known_to_the_next_statement(
    target: Target, wires: dict[str, Wire]
) -> None:
    """An engineer creates `bump1` in a transaction and commits; an agent whose writes
    need a review calls it as a field selection right after: held, not run."""
    dev, rv = wires["dev"], wires["rv"]
    assert not dev.run(q("begin"), ready=1).errors()
    assert not dev.run(q(BUMP.format(name="bump1")), ready=1).errors()
    assert not dev.run(q("commit"), ready=1).errors()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump1"), ready=1)
    assert reply.refused(), reply.text()
    assert target.log(start) == [] and target.snapshot() == before


def test_a_function_made_in_the_open_transaction_is_not_judged_from_the_old_facts(
    target: Target, wires: dict[str, Wire]
) -> None:
    """The session that made `bump2` in its open transaction sees it; the watch cannot
    (not committed): `mig`'s call of it is a write, held for a review, not run."""
    mig = wires["mig"]
    assert not mig.run(q("begin"), ready=1).errors()
    assert not mig.run(q(BUMP.format(name="bump2")), ready=1).errors()
    start, before = target.last_id(), target.snapshot()
    reply = mig.run(q("select (3).bump2"), ready=1)
    assert reply.refused(), reply.text()
    assert "commit (or roll back) first" in reply.text()
    mig.run(q("rollback"), ready=1)
    assert target.log(start) == [] and target.snapshot() == before


def test_a_call_after_ddl_in_one_string_is_judged_on_the_new_catalogue(
    target: Target, wires: dict[str, Wire]
) -> None:
    """PostgreSQL analyses each statement of a Query string once the ones before it ran:
    `create function bump3 ...; select (3).bump3` calls what the first made."""
    start, before = target.last_id(), target.snapshot()
    reply = wires["mig"].run(q(BUMP.format(name="bump3") + "; select (3).bump3"), ready=1)
    assert reply.refused(), reply.text()
    assert target.log(start) == [] and target.snapshot() == before
    assert not function_exists(target, "bump3")  # held whole: the DDL did not run either


def test_right_after_autocommit_ddl_another_session_is_judged_as_the_worst_case(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`bump4` made in autocommit: the next statement of another session, sent as soon
    as the DDL's answer came, is not judged on the facts read before it."""
    mig, rv = wires["mig"], wires["rv"]
    assert not mig.run(q(BUMP.format(name="bump4")), ready=1).errors()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump4"), ready=1)
    assert reply.refused(), reply.text()
    time.sleep(1)  # the watch has looked again: bump4 is in the facts now
    reply = wires["ro"].run(q("select (3).bump4"), ready=1)
    assert reply.refused() and "function bump4" in reply.text(), reply.text()
    assert target.log(start) == [] and target.snapshot() == before


@pytest.fixture(scope="module")
def gw2(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(
        tmp_path_factory.mktemp("attack14h2"), "workers: 2\n" + mig_config(target)
    )
    gateway.start()
    yield gateway
    gateway.stop()


def test_ddl_through_one_worker_is_known_to_the_others(target: Target, gw2: Gateway) -> None:
    """Two workers (the kernel spreads connections between them): `bump5` made through
    one; eight sessions of `rv`, some on the other worker, call it right after. None
    runs it. Before the workers shared what DDL they answered (ddl_board.py), those on
    the other worker judged it on facts read before it existed."""
    agents = [Wire(gw2, "rv") for _ in range(8)]
    mig = Wire(gw2, "mig")
    try:
        for wire in agents:  # each worker's watch has read the catalogue once
            assert not wire.run(q("select 1"), ready=1).errors()
        assert not mig.run(q(BUMP.format(name="bump5")), ready=1).errors()
        start, before = target.last_id(), target.snapshot()
        for n, wire in enumerate(agents):
            reply = wire.run(q(f"select ({n}).bump5"), ready=1)
            assert reply.refused(), reply.text()
        assert target.log(start) == [] and target.snapshot() == before
    finally:
        for wire in (*agents, mig):
            wire.close()


def test_other_sessions_wait_only_for_what_may_commit_ddl(
    target: Target, wires: dict[str, Wire]
) -> None:
    """Inside the transaction block that made `bump6`, a long statement cannot commit it:
    another session's read runs meanwhile without waiting. After the COMMIT, a read
    waits for the watch's new look (not refused), and `(3).bump6` is judged as the call
    it is."""
    dev, ro = wires["dev"], wires["ro"]
    assert not dev.run(q("begin"), ready=1).errors()
    assert not dev.run(q(BUMP.format(name="bump6")), ready=1).errors()
    dev.send(q("select pg_sleep(2)"))  # in flight for two seconds
    started = time.monotonic()
    assert not ro.run(q("select count(*) from stock"), ready=1).errors()
    assert time.monotonic() - started < 1.5
    assert not dev.read(ready=1).errors()
    assert not dev.run(q("commit"), ready=1).errors()
    assert not ro.run(q("select count(*) from stock"), ready=1).errors()  # waited, ran
    start, before = target.last_id(), target.snapshot()
    reply = ro.run(q("select (3).bump6"), ready=1)
    assert reply.refused() and "function bump6" in reply.text(), reply.text()
    assert target.log(start) == [] and target.snapshot() == before


def test_ddl_through_an_mcp_query_is_known_to_the_next_query(target: Target, gw: Gateway) -> None:
    """An MCP `query` runs in a session of its own, committed when it ends: `bump7` made
    by one is called by the next (another principal's, whose writes need a review) as
    a field selection. Held, not run."""
    from tests.integration.test_mcp import body, call, error_text

    made = call(gw, "dev", ("query", {"connection": "diff", "sql": BUMP.format(name="bump7")}))
    body(made[0])
    start, before = target.last_id(), target.snapshot()
    (reply,) = call(gw, "rv", ("query", {"connection": "diff", "sql": "select (3).bump7"}))
    assert reply.isError or "review_id" in str(reply.structuredContent), reply
    if reply.isError:
        error_text(reply)
    assert target.log(start) == [] and target.snapshot() == before


@pytest.mark.parametrize(
    "ddl",
    [
        "alter table {t} add constraint {t}_c check (public.bump(id) > -1000)",
        "alter table {t} add column b int default public.bump(2)",
        "create index on {t} ((public.bump(id)))",
        "create table {t}_2 as select public.bump(3) as x",
    ],
)
def test_ddl_that_runs_user_code_is_judged_as_a_write_too(
    target: Target, wires: dict[str, Wire], ddl: str
) -> None:
    """`mig` may run DDL, and its writes need a review. Validating a CHECK over the rows,
    filling a new column's volatile DEFAULT, building an expression index or computing
    CREATE TABLE AS runs the user function `bump` (an UPDATE of stock) at once: such a
    statement is a write as much as DDL, and needs the review a write needs."""
    mig = wires["mig"]
    table = f"own_{abs(hash(ddl)) % 10**8}"
    made = mig.run(
        q(f"create table {table} as select g as id from generate_series(1, 3) g"), ready=1
    )
    assert not made.errors(), made.text()
    start, before = target.last_id(), target.snapshot()
    reply = mig.run(q(ddl.format(t=table)), ready=1)
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()
