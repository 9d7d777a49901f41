"""attack14h: the catalogue watch's facts after DDL through the gateway. The watch looks
again right after a DDL statement ran, but a function created inside a transaction is
visible to other sessions only once that transaction commits: the facts must not stay
those of before the commit (`(3).bump` judged as a read) until the next timed look."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Reply, Target, Wire, diff_config, lazy_wires, make_target
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query

BUMP = (
    "create function public.{name}(int) returns int language sql volatile as"
    " $$ update public.stock set qty = qty + 1000 where id = $1; select $1 $$"
)


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    yield from make_target()


# `mig`: an agent that may run DDL but whose writes need a review (a migration bot).
def _config(target: Target) -> str:
    config = diff_config(target)
    config = config.replace(
        "engineers: {}, approvers: {}}", "engineers: {}, approvers: {}, mig_agents: {}}"
    )
    config = config.replace(
        "principals:\n", "principals:\n  mig: {kind: agent, groups: [mig_agents], sponsor: dev}\n"
    )
    config = config.replace("engineers: engineer}", "engineers: engineer, mig_agents: migrator}")
    config = config.replace(
        "roles:\n  reader:",
        "roles:\n  migrator: {read: allow, write: review, ddl: allow, admin: block}\n  reader:",
    )
    assert "migrator:" in config and "mig_agents: migrator" in config
    return config


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("attack14h"), _config(target))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


def _refused(reply: Reply) -> bool:
    return any(e.get("M", "").startswith("wardgate:") for e in reply.errors())


def _exists(target: Target, name: str) -> bool:
    with target.conn() as c:
        row = c.execute("select count(*) from pg_proc where proname = %s", (name,)).fetchone()
    return bool(row and row[0])


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
    assert _refused(reply), reply.text()
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
    assert _refused(reply), reply.text()
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
    assert _refused(reply), reply.text()
    assert target.log(start) == [] and target.snapshot() == before
    assert not _exists(target, "bump3")  # held whole: the DDL did not run either


def test_right_after_autocommit_ddl_another_session_is_judged_as_the_worst_case(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`bump4` made in autocommit: the next statement of another session, sent as soon
    as the DDL's answer came, is not judged on the facts read before it."""
    mig, rv = wires["mig"], wires["rv"]
    assert not mig.run(q(BUMP.format(name="bump4")), ready=1).errors()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump4"), ready=1)
    assert _refused(reply), reply.text()
    time.sleep(1)  # the watch has looked again: bump4 is in the facts now
    reply = wires["ro"].run(q("select (3).bump4"), ready=1)
    assert _refused(reply) and "function bump4" in reply.text(), reply.text()
    assert target.log(start) == [] and target.snapshot() == before
