"""The session model's name maps keep count of what they hold (limits.session_names,
limits.session_name_bytes), and the relay's queue of requests awaiting a reply keeps
count of what it costs."""

from __future__ import annotations

import pytest

from wardgate.policy.mask_rules import SessionMasking
from wardgate.postgres.masking import ResultMasking
from wardgate.postgres.relay_state import EXECUTE, SYNC, Pending, PendingQueue
from wardgate.postgres.session_model import Names, NamesFull, Portal, Prepared


def test_names_past_the_count_are_refused_and_confirmed_ones_free_their_bytes() -> None:
    names: Names[Prepared] = Names(most=3, most_bytes=10_000)
    changes = [names.propose(f"s{i}", Prepared("select 1"), 0) for i in range(3)]
    with pytest.raises(NamesFull, match="more than 3 names"):
        names.propose("s3", Prepared("select 1"), 0)  # pending ones count
    for change in changes:
        names.confirm(change)
    assert names.bytes == 3 * Prepared("select 1").weight
    names.propose("s0", Prepared("select 2"), 1)  # an existing name: replaced, not new
    names.propose("", Prepared("select 3"), 1)  # the unnamed statement: not limited
    drop = names.propose("s1", None, 1)
    names.confirm(drop)
    assert "s1" not in names.confirmed
    everything = names.propose(None, None, 2)  # DEALLOCATE ALL
    names.confirm(everything)
    assert names.confirmed == {}
    # What is still pending (s0's and the unnamed replacement) keeps its weight.
    assert names.bytes == Prepared("select 2").weight + Prepared("select 3").weight


def test_names_past_the_bytes_are_refused_and_refuted_ones_free_theirs() -> None:
    names: Names[Portal] = Names(most=100, most_bytes=1000)
    big = Portal(("select $1",), ("x" * 500,))
    first = names.propose("p1", big, 0)
    with pytest.raises(NamesFull, match="more than 1000 bytes"):
        names.propose("p2", big, 0)
    names.refute(first)
    assert names.bytes == 0
    names.propose("p2", big, 0)
    names.drop(set())  # nothing confirmed yet: nothing to drop
    assert names.bytes == big.weight


def test_pending_queue_counts_cost_and_syncs() -> None:
    queue = PendingQueue()
    execute, sync = Pending(EXECUTE), Pending(SYNC, batch=0)
    queue.append(execute)
    queue.charge(execute, 1500)
    queue.append(sync)
    assert (queue.cost, queue.syncs) == (1500, 1)
    assert queue.pop_last() is sync
    assert (queue.cost, queue.syncs) == (1500, 0)
    assert queue.popleft() is execute
    assert (queue.cost, queue.syncs, len(queue)) == (0, 0, 0)


def test_masking_keeps_the_newest_names_only() -> None:
    masking = ResultMasking(SessionMasking((), (), False), most_names=2)
    for portal in ("p0", "p1", "p2"):
        masking.bound(portal, "s", ())
    masking.bound("p1", "s", (1,))  # used again: the newest now
    masking.bound("p3", "s", ())
    assert [v[1] for v in masking._bound] == ["p1", "p3"]
    versions = [masking.version("S", f"s{i}") for i in range(5)]
    for v in versions:  # statements and portals: twice as many
        masking.described(v, [])
    assert list(masking._described) == versions[1:]
