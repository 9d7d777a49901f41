"""attack14p: the commit barrier's ordering by judging time (commit_barrier.py `_still`,
relay_state.py `flight(before)`). A statement the gate judged a read while no function
`bumpN` existed must not reach the server after the DDL that makes `bumpN` commits.
Bypasses are shown on the target's state: `mig`'s writes need a review, and
`(3).bumpN` is an UPDATE once `bumpN` exists."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.attack14 import (
    BUMP,
    attack_config,
    row_writes,
    settle,
    target,  # noqa: F401 - fixtures
)
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire
from tests.integration.test_attack14o import (
    _on_the_other_worker_as,
    ddl_behind_pipelined_sleeps,
)
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


@pytest.fixture(scope="module")
def two(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(
        tmp_path_factory.mktemp("attack14p-w2"), "workers: 2\n" + attack_config(target)
    )
    gateway.start()
    yield gateway
    gateway.stop()


def _filler(n: int) -> str:
    """``n`` cheap DDL statements, each text its own (judged apart, not from a cache)."""
    return "".join(f"drop table if exists public.nothing_{i}; " for i in range(n))


def test_a_read_judged_before_a_ddl_mark_is_not_sent_after_its_commit_two_workers(
    two: Gateway, target: Target
) -> None:
    """`workers: 2`. `mig` (DDL allowed, writes need a review) on worker A sends one
    Query string: `select (3).bump140` (no bump140 yet: judged a read), then a few
    thousand cheap DDL statements (`drop table if exists`, allowed), then a `create
    table`. Worker A judges the string statement by statement; only at its end is the
    batch held for its drain, `_held_since` taken THEN. Meanwhile `dev` on worker B
    commits `create function bump140` (made earlier in an open block): its drain's
    `since` lies between the judging of `(3).bump140` and `mig`'s `_held_since`. The
    board's question reaches worker A once the string is judged: `flight(since)`
    subtracts the held batch (`_held_since >= since`: "judged later"), so worker A
    answers at once and bump140 commits. `mig`'s own drain waits for `dev`'s COMMIT,
    then sends the string: the server resolves `(3).bump140` after the commit and runs
    the UPDATE as `mig`'s read, unreviewed."""
    start, before = target.last_id(), target.snapshot()
    replies = []
    for name in ("bump140", "bump141", "bump142"):  # the window is timing: a few tries
        replies.append(_race(two, name))
        if row_writes(target, start):
            break
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, (writes, replies)


def _race(two: Gateway, name: str, *, apart: bool = True) -> str:
    mig = Wire(two, "mig")
    opened: list[Wire] = []
    try:
        if apart:
            dev = _on_the_other_worker_as(two, mig, "dev", opened)
        else:
            dev = Wire(two, "dev")
            opened.append(dev)
        settle(mig)
        settle(dev)
        assert not dev.run(q("begin; " + BUMP.format(name=name)), ready=1).errors()
        settle(mig)
        mig.send(
            q(
                f"select (3).{name}; "
                + _filler(3000)
                + f"create table if not exists public.t{name} (i int)"
            )
        )
        # The string's parse (~0.1 s) is over and `(3).bumpN` judged; its thousands of
        # DROPs are still being judged one by one (at 0.12 s: too early, judged the worst
        # case; at 0.2 and 0.3 s the read went through).
        time.sleep(0.25)
        dev.send(q("commit"))
        committed = dev.read(ready=1)
        reply = mig.read(ready=1)
    finally:
        for wire in (mig, *opened):
            wire.close()
    assert not committed.errors(), committed.text()
    return reply.text()[:200]


@pytest.fixture(scope="module")
def one(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = make_gateway(tmp_path_factory.mktemp("attack14p-w1"), attack_config(target))
    gateway.start()
    yield gateway
    gateway.stop()


def test_a_reader_pipelining_more_slow_statements_than_recancels_does_not_stop_ddl(
    target: Target, one: Gateway
) -> None:
    """Availability, after RECANCEL (attack14o's fifteen sleeps). `ro`, who may only
    read, pipelines 250 `select pg_sleep(1)` Queries in one write (5 KB). A DDL commit of
    `mig` waits for all of them; past the grace the drain cancels every RECANCEL (0.1 s),
    each cancel ending the one statement running then: some twenty statements a second (150 took 8.6 s), so 250
    outlast `limits.connect_timeout` (10 s): the DDL is refused and `mig`'s session
    ended (55P03), after ten seconds. One reader, a few bytes per migration, stops every
    migration. The safe outcome: the DDL commits, in a few seconds."""
    ok, said, waited = ddl_behind_pipelined_sleeps(one, 250, "bump147")
    assert ok and waited < 5, (said[:300], waited)


def test_held_the_same_race_in_one_worker(target: Target, one: Gateway) -> None:
    """What held: in one worker the same string is judged and held in one step of the
    event loop, so `dev`'s COMMIT is read after `_held_since`, its drain counts the held
    string, and the string is sent before the COMMIT: its read fails (42809, no bump)."""
    start, before = target.last_id(), target.snapshot()
    replies = [_race(one, name, apart=False) for name in ("bump145", "bump146")]
    assert row_writes(target, start) == [] and target.snapshot() == before, replies
    assert all(reply.startswith("42809") for reply in replies), replies
