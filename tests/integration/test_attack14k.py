"""attack14k: more ways around the window in which DDL through the gateway may have
changed what the catalogue watch read (gate.CatalogFacts). A pipelined COMMIT (or
ROLLBACK) run through Execute in one batch must settle that batch's mark, not a later
batch's that still holds uncommitted DDL; and a routine that shares a name with a
built-in the gate trusts runs user code whatever volatility it declares (a STABLE one
may call a VOLATILE one, which writes). Open (strict xfail): a statement that waits for a
lock while the server parses it resolves its names after a DDL commit it was judged
before."""

from __future__ import annotations

import time

import pytest

from tests.integration.attack14 import BUMP, ext, gw, row_writes, settle, target, wires  # noqa: F401 - fixtures
from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Target, Wire
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def test_a_pipelined_rollback_does_not_settle_a_later_batchs_ddl(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`mig` pipelines, in one write, a batch `ROLLBACK` (Execute) + Sync and a batch
    `alter table archive_hold ...` (it waits for an engineer's lock),
    `create function bump41 ...` + Sync. The ROLLBACK's
    CommandComplete settled the first DDL mark it found, the second batch's: the watch
    looked while bump41 was not committed yet, the facts were trusted again, and when
    the second batch committed nobody looked. `select (3).bump41` then ran as a read for
    an agent whose writes need a review (bump41's UPDATE ran)."""
    mig, rv, dev = wires["mig"], wires["rv"], wires["dev"]
    assert not dev.run(q("create table public.archive_hold (id int)"), ready=1).errors()
    settle(rv)
    # The second batch waits for a lock an engineer holds: its DDL commits later.
    assert not dev.run(q("begin; lock table public.archive_hold"), ready=1).errors()
    mig.send(
        ext("rollback"),
        build.sync(),
        ext("alter table public.archive_hold add column c41 int"),
        ext(BUMP.format(name="bump41")),
        build.sync(),
    )
    reply = mig.read(ready=1)  # the ROLLBACK, answered at once
    time.sleep(0.5)  # the watch looked (nothing new is committed yet)
    assert not dev.run(q("rollback"), ready=1).errors()
    reply = mig.read(ready=1)
    assert not reply.errors(), reply.text()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump41"), ready=1)
    assert target.log(start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


def test_a_stable_routine_named_like_a_built_in_is_user_code(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`mig` (DDL allowed) makes `public.left(int, int)` STABLE, whose body calls the
    VOLATILE `public.bump`: PostgreSQL lets a STABLE routine call a VOLATILE one. The gate
    took only VOLATILE routines for shadows of `left`, so the `select left(7, 1)` of
    an agent whose writes need a review (exact argument types: public.left wins) was a read, and bump's
    UPDATE ran."""
    mig, rv = wires["mig"], wires["rv"]
    ddl = (
        "create function public.left(int, int) returns text language sql stable as"
        " $$ select public.bump($1)::text $$"
    )
    made = mig.run(q(ddl), ready=1)
    try:
        if not made.errors():
            settle(rv)
        start, before = target.last_id(), target.snapshot()
        reply = rv.run(q("select left(7, 1)"), ready=1)
        assert target.log(start) == [] and target.snapshot() == before, reply.text()
        assert made.refused() or reply.refused(), reply.text()
    finally:
        with target.conn() as c:
            c.execute("drop function if exists public.left(int, int)")


def test_a_read_waiting_for_a_lock_does_not_call_what_the_lock_holder_commits(
    gw: Gateway, target: Target, wires: dict[str, Wire]
) -> None:
    """`mig` (two sessions) opens a transaction that alters `archive_hold2` and makes
    `bump43` (no mark: a confirmed block, nothing committed). Its other session sends
    `select (3).bump43 from archive_hold2`: judged a read (bump43 is not in the facts),
    forwarded, and the server waits for the table's lock while parsing it. The COMMIT
    then marks, settles, the watch looks, but the read already passed the gate: once
    the lock is free, PostgreSQL resolves `(3).bump43` to the new function and runs it."""
    mig, dev = wires["mig"], wires["dev"]
    assert not dev.run(q("create table public.archive_hold2 (id int)"), ready=1).errors()
    assert not dev.run(q("insert into public.archive_hold2 values (1)"), ready=1).errors()
    other = Wire(gw, "mig")
    try:
        settle(other)
        assert not mig.run(q("begin"), ready=1).errors()
        assert not mig.run(
            q("alter table public.archive_hold2 add column c43 int"), ready=1
        ).errors()
        assert not mig.run(q(BUMP.format(name="bump43")), ready=1).errors()
        start, before = target.last_id(), target.snapshot()
        other.send(q("select (3).bump43 from public.archive_hold2"))
        deadline = time.monotonic() + 15  # until the server shows it waiting for the lock
        while time.monotonic() < deadline:
            with target.conn() as c:
                row = c.execute(
                    "select count(*) from pg_stat_activity where wait_event_type = 'Lock'"
                    " and query like '%bump43%'"
                ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.1)
        assert not mig.run(q("commit"), ready=1).errors()
        reply = other.read(ready=1)
    finally:
        other.close()
    writes = row_writes(target, start)
    assert writes == [] and target.snapshot() == before, reply.text()
