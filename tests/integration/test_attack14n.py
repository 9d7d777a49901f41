"""attack14n: around the commit barrier's second pass (a9b88d3): the leaving-session
path (finish -> CommitBarrier.leave), the MCP flight's lifetime, the Flush nudge, and
user code counted as what may change the catalogue. Bypasses are shown on the target's
state; availability findings on measured state (server backends, the gateway's sockets,
what a DDL or a reader gets, and how long it waits)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import zlib
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
from tests.integration.pg_diff import Target, Wire, lazy_wires
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    # atk14n_total: a read-only function the operator lists as safe (`test_an_app_...`).
    config = "safe_functions: [public.atk14n_total]\n" + attack_config(target)
    gateway = make_gateway(tmp_path_factory.mktemp("attack14n"), config)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


def _backends(target: Target, marker: str) -> int:
    """Server backends whose last statement holds ``marker``."""
    with target.conn() as c:
        row = c.execute(
            "select count(*) from pg_stat_activity where query like %s and pid <> pg_backend_pid()",
            (f"%{marker}%",),
        ).fetchone()
    return int(row[0]) if row else 0


def _upstream_sockets(gw: Gateway) -> int:
    """TCP sockets the gateway process holds to PostgreSQL (127.0.0.1:5432)."""
    assert gw.proc is not None
    pids = [gw.proc.pid]
    with contextlib.suppress(OSError):
        with open(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children") as f:
            pids.extend(int(child) for child in f.read().split())
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                remote, inode = parts[2], parts[9]
                if inode in inodes and remote.endswith(":1538"):  # 5432
                    count += 1
    return count


def _ddl(wire: Wire, sql: str) -> tuple[bool, str, float]:
    started = time.monotonic()
    try:
        made = wire.run(q(sql), ready=1)
        said, ok = made.text(), not made.errors()
    except ConnectionError as exc:
        said, ok = str(exc), False
    return ok, said, time.monotonic() - started


def test_a_copy_left_open_does_not_hold_a_backend_and_every_ddl(
    target: Target, gw: Gateway
) -> None:
    """`dev`, who may write, starts `COPY ... FROM STDIN` and closes its socket in the
    middle (a crashed bulk load, or on purpose). The session ends with its COPY
    unanswered, so the gateway writes a Terminate and waits for the server to close
    (CommitBarrier.leave, no deadline). But a server in COPY FROM STDIN reads the
    Terminate as a protocol violation ("unexpected message type 0x58 during COPY from
    stdin"), answers an error and ReadyForQuery, and waits for the next message: it
    never closes. The leaving task, the gateway's socket and the server backend stay
    for good, and the session stays in flight (1, 0) for good: every DDL on the
    database is refused (55P03) after limits.connect_timeout, until the gateway
    restarts; repeated, every server connection is taken. Safe: the backend goes away,
    and `mig`'s DDL commits."""
    marker = "atk14n_copy_left"
    sockets0 = _upstream_sockets(gw)
    for _ in range(3):
        dev = Wire(gw, "dev")
        settle(dev)
        dev.send(q(f"copy public.stock (id, qty) from stdin /* {marker} */"))
        time.sleep(0.3)  # CopyInResponse sent
        dev.sock.shutdown(socket.SHUT_RDWR)
        dev.close()
    time.sleep(1.5)
    left = _backends(target, marker)
    held = _upstream_sockets(gw) - sockets0
    mig = Wire(gw, "mig")
    try:
        settle(mig)
        ok, said, waited = _ddl(mig, BUMP.format(name="bump90"))
    finally:
        mig.close()
    assert left == 0 and held <= 0, (left, held)
    assert ok, (said, waited)


def _mcp(
    gw: Gateway, principal: str, calls: list[str], timeout: float = 60
) -> list[tuple[bool, str, float]]:
    """Run ``calls`` (SQL) at once as MCP `query` tool calls, each from an MCP client
    of its own: (ok, text, seconds) each."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    async def one(sql: str, go: asyncio.Event) -> tuple[bool, str, float]:
        url = f"http://127.0.0.1:{gw.api_port}/mcp"
        headers = {"Authorization": f"Bearer {gw.token(principal)}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=timeout) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
        ):
            info = Implementation(name="pytest-agent", version="1.0")
            async with ClientSession(read, write, client_info=info) as session:
                await session.initialize()
                await go.wait()
                started = time.monotonic()
                result = await session.call_tool("query", {"connection": "diff", "sql": sql})
                text = " ".join(getattr(c, "text", "") for c in result.content)
                return not result.isError, text, time.monotonic() - started

    async def run() -> list[tuple[bool, str, float]]:
        go = asyncio.Event()
        tasks = [asyncio.create_task(one(sql, go)) for sql in calls]
        await asyncio.sleep(1.0)  # every client initialised
        go.set()
        return list(await asyncio.gather(*tasks))

    return asyncio.run(run())


def _function(target: Target, name: str, body: str = "select 1") -> None:
    with target.conn() as c:
        c.execute(
            f"create or replace function public.{name}() returns int language sql stable"
            f" as $$ {body} $$"
        )
        c.execute(f"alter function public.{name}() owner to {target.role}")


def test_two_mcp_queries_calling_user_code_do_not_refuse_each_other(
    target: Target, gw: Gateway, wires: dict[str, Wire]
) -> None:
    """Availability. An MCP query is in flight (1, 0) from before it is judged until its
    server session is gone; one that calls user code (a user function counts as DDL
    now) first drains every other flight but its own. Two such MCP queries at once
    (an app's ordinary `select public.report()`, twice) each wait for the other, which
    waits for the first: neither reaches the server, both cancels go nowhere
    (cancel_to is not set yet), and both are refused (55P03) after
    limits.connect_timeout. Safe: both answer, promptly."""
    _function(target, "atk14n_report")
    time.sleep(0.5)
    settle(wires["dev"])
    results = _mcp(gw, "dev", ["select public.atk14n_report()"] * 8)
    assert all(ok and took < 5 for ok, _, took in results), results


def test_an_app_calling_user_functions_does_not_cancel_a_readers_statements(
    target: Target, gw: Gateway, wires: dict[str, Wire]
) -> None:
    """Availability (measured). An engineer's app calls a plain read-only user function
    (`select public.atk14n_total()`). A call of user code counts as DDL (a routine, even a
    STABLE one through a VOLATILE one it calls, may run DDL): its batch waits for the
    commit barrier, which cancels every other session's statement on the database still
    running after 0.5 s; `ro`'s report of 1.5 s got 57014 although no DDL ran anywhere.
    That stays the cost for functions the gate cannot know (docs/operations.md); one
    listed in `safe_functions` (as this one is here) is the operator's word that it
    only reads, and counts as nothing: the reader's statement completes."""
    _function(target, "atk14n_total")
    dev, ro = wires["dev"], wires["ro"]
    time.sleep(0.5)
    settle(dev)
    settle(ro)
    ro.send(q("select pg_sleep(1.5), 42 as atk14n_long"))
    time.sleep(0.2)
    started = time.monotonic()
    mine = dev.run(q("select public.atk14n_total()"), ready=1)
    dev_took = time.monotonic() - started
    theirs = ro.read(ready=1)
    assert not theirs.errors(), (theirs.text(), mine.text(), dev_took)


def test_two_approved_mcp_calls_of_user_code_do_not_refuse_each_other(
    target: Target, gw: Gateway, wires: dict[str, Wire]
) -> None:
    """Availability and approvals. `rv`'s calls of user functions need a review; a
    human approves two. The agent retries both at once through MCP. Each MCP query is
    in flight (1, 0) from before it is judged; judging an approved statement awaits
    the review store (a thread: `obtain`, `consume`), so both are registered before
    either drains. Each call of user code counts as DDL and drains every flight but its
    own: A waits for B, B for A, both cancels go nowhere (no server session yet), and
    both are refused (55P03) after limits.connect_timeout, their single-use approvals
    spent. Safe: both run."""
    import json

    from tests.integration.pg_diff import approve

    _function(target, "atk14n_fix1")
    _function(target, "atk14n_fix2")
    time.sleep(0.5)
    settle(wires["rv"])
    calls = ["select public.atk14n_fix1()", "select public.atk14n_fix2()"]
    first = _mcp(gw, "rv", calls)
    for ok, text, _ in first:
        assert ok and "pending_review" in text, first
        approve(gw, json.loads(text)["review_id"])
    second = _mcp(gw, "rv", calls)
    assert all(ok and took < 5 for ok, _, took in second), second


# A routine that makes a function named by its argument with dynamic SQL (attack14m).
MAKER = (
    "create or replace function public.{name}(n text) returns int language plpgsql volatile"
    " as $$ begin execute format('create function public.%I(int) returns int language sql"
    " volatile as $f$ update public.stock set qty = qty + 1000 where id = $1;"
    " select $1 $f$', n); return 1; end $$"
)


@pytest.mark.parametrize("how", ["trigger", "rule"])
def test_ddl_run_by_a_trigger_opens_the_window_too(
    target: Target, wires: dict[str, Wire], how: str
) -> None:
    """attack14m's routine that makes a function, run by a trigger (or a rule) on a
    table instead of called: `dev` (who may write) inserts a row, a plain write with no
    user function in its text, so changes_catalogue says no (the watch's facts know of
    no triggers or rules), no window opens and the watch is not asked to look. The
    trigger runs `create function bumpN`; `rv` calls `(3).bumpN` right after, judged a
    read against the facts of before, and the function's UPDATE runs unreviewed.
    The trigger (or rule) was made earlier by someone who may run DDL, and the watch
    has read it since. Safe: `rv`'s call is held.

    Now the watch reads the database's triggers and rules, and one whose code may run
    DDL (policy/routine_code.py: here it calls a user function) makes every write there
    count as DDL: the INSERT opens the window, and `(3).bumpN` is judged after it."""
    table, name = f"atk14n_{how}", f"bump9{1 if how == 'trigger' else 2}"
    with target.conn() as c:
        c.execute(f"create table public.{table} (name text)")
        c.execute(f"alter table public.{table} owner to {target.role}")
        c.execute(MAKER.format(name=f"mk_{table}"))
        c.execute(f"alter function public.mk_{table}(text) owner to {target.role}")
        if how == "trigger":
            c.execute(
                f"create function public.tg_{table}() returns trigger language plpgsql as"
                f" $$ begin perform public.mk_{table}(new.name); return new; end $$"
            )
            c.execute(f"alter function public.tg_{table}() owner to {target.role}")
            c.execute(
                f"create trigger t after insert on public.{table} for each row"
                f" execute function public.tg_{table}()"
            )
        else:
            c.execute(
                f"create rule r as on insert to public.{table}"
                f" do also select public.mk_{table}(new.name)"
            )
    dev, rv, mig = wires["dev"], wires["rv"], wires["mig"]
    # Made outside the gateway: the watch reads them at its next look, which DDL
    # through the gateway brings forward (as the trigger's own DDL would have).
    poked = mig.run(q(f"create table public.{table}_after (i int)"), ready=1)
    assert not poked.errors(), poked.text()
    settle(rv)
    settle(dev)
    made = dev.run(q(f"insert into public.{table} values ('{name}')"), ready=1)
    assert not made.errors(), made.text()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q(f"select (3).{name}"), ready=1)
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


@pytest.mark.parametrize(
    "call",
    [
        "select * from public.{mk}('{name}')",
        "select x from public.{mk}('{name}') as x",
        "select 1 from public.stock where public.{mk}('{name}') = 1 limit 1",
        "with m as (select public.{mk}('{name}')) select * from m",
        "prepare p_{name} as select public.{mk}($1); execute p_{name}('{name}')",
    ],
    ids=["from", "from-alias", "where", "cte", "prepare-execute"],
)
def test_a_maker_called_in_other_places_opens_the_window(
    target: Target, wires: dict[str, Wire], call: str
) -> None:
    """attack14m's maker called by `dev` as a set-returning function in FROM, in a
    WHERE, in a CTE, through PREPARE/EXECUTE: each is a call of user code, which must
    open the window; `rv`'s `(3).bumpN` right after is held."""
    n = zlib.crc32(call.encode()) % 1000
    mk, name = f"mk14n_{n}", f"bump14n_{n}"
    with target.conn() as c:
        c.execute(MAKER.format(name=mk))
        c.execute(f"alter function public.{mk}(text) owner to {target.role}")
    dev, rv = wires["dev"], wires["rv"]
    time.sleep(0.5)
    settle(rv)
    settle(dev)
    made = dev.run(q(call.format(mk=mk, name=name)), ready=1)
    assert not made.errors(), made.text()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q(f"select (3).{name}"), ready=1)
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


@pytest.mark.parametrize("how", ["view", "view-over-view", "policy"])
def test_reading_a_relation_whose_reading_runs_user_code_is_judged_as_that_call(
    target: Target, wires: dict[str, Wire], how: str
) -> None:
    """A view whose query calls a user function, a view over such a view, or a table
    whose row security policy calls one: reading it runs the function, with no call in
    the statement's text. `rv` (whose writes need a review) reads it, judged a plain
    read, and the function's UPDATE ran unreviewed. Now the watch reads which relations
    run user code when read (pg_depend of their rules and policies, through views over
    them) and a statement naming one is judged as calling that function: held."""
    fn, rel = f"bump_{how.replace('-', '_')}", f"public.code_{how.replace('-', '_')}"
    with target.conn() as c:
        c.execute(BUMP.format(name=fn))
        c.execute(f"alter function public.{fn}(int) owner to {target.role}")
        if how == "policy":
            c.execute(f"create table {rel} (id int)")
            c.execute(f"insert into {rel} values (3)")
            c.execute(f"alter table {rel} enable row level security")
            c.execute(f"alter table {rel} force row level security")
            c.execute(f"create policy p on {rel} using (public.{fn}(id) = id)")
        elif how == "view":
            c.execute(f"create view {rel} as select public.{fn}(3) as x")
        else:
            c.execute(f"create view {rel}_inner as select public.{fn}(3) as x")
            c.execute(f"create view {rel} as select x from {rel}_inner")
            c.execute(f"alter view {rel}_inner owner to {target.role}")
        c.execute(f"alter table {rel} owner to {target.role}")
    rv, mig = wires["rv"], wires["mig"]
    # Made outside the gateway: DDL through it brings the watch's next look forward.
    poked = mig.run(q(f"create table {rel}_after (i int)"), ready=1)
    assert not poked.errors(), poked.text()
    settle(rv)
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q(f"select * from {rel}"), ready=1)
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()
