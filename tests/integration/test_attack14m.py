"""attack14m: around the commit barrier (postgres/commit_barrier.py) and the DDL window
(gate.CatalogFacts). A statement the gate judged a read, with facts that did not yet
know a function, must not run that function: not when the function is made by DDL that
a routine runs (no DDL statement crosses the gateway), not when an MCP query was judged
before a DDL commit and reaches the server after it. And a principal that may only read
must not be able to make every DDL commit on its database fail. Each bypass is shown on
the target's state: `rv`'s writes need a review, and the function it calls as a field
selection (`(3).bumpN`, judged a read while no such function exists) writes."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time

import pytest

from tests.integration.attack14 import BUMP, gw, row_writes, running, settle, target, wires  # noqa: F401 - fixtures
from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Target, Wire
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query

# A routine that makes a function named by its argument with dynamic SQL: calling it is
# a call of a user function (a write), not DDL.
MAKER = (
    "create function public.{name}(n text) returns int language plpgsql volatile as $$"
    " begin execute format('create function public.%I(int) returns int language sql"
    " volatile as $f$ update public.stock set qty = qty + 1000 where id = $1;"
    " select $1 $f$', n); return 1; end $$"
)


def test_ddl_run_by_a_routine_opens_the_window_too(target: Target, wires: dict[str, Wire]) -> None:
    """An engineer (who may write) calls a routine that makes `bump70` with EXECUTE:
    a call of a user function, a write, not DDL, so no DDL window opens and the
    catalogue watch is not asked to look. The agent whose writes need a review calls
    `(3).bump70` right after: the gate still has the facts of before, judges a read,
    and the function's UPDATE runs without a review (until the next timed look, 30 s)."""
    dev, rv = wires["dev"], wires["rv"]
    assert not dev.run(q(MAKER.format(name="mk70")), ready=1).errors()
    settle(rv)
    made = dev.run(q("select public.mk70('bump70')"), ready=1)
    assert not made.errors(), made.text()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump70"), ready=1)
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


def test_a_procedure_that_commits_ddl_opens_the_window_too(
    target: Target, wires: dict[str, Wire]
) -> None:
    """The same through CALL of a procedure that makes `bump71` and COMMITs inside."""
    dev, rv = wires["dev"], wires["rv"]
    maker = MAKER.format(name="mkp71").replace(
        "function public.mkp71(n text) returns int", "procedure public.mkp71(n text)"
    )
    maker = maker.replace("n); return 1; end", "n); commit; end").replace(
        " plpgsql volatile ", " plpgsql ", 1
    )
    assert not dev.run(q(maker), ready=1).errors(), maker
    settle(rv)
    made = dev.run(q("call public.mkp71('bump71')"), ready=1)
    assert not made.errors(), made.text()
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q("select (3).bump71"), ready=1)
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


def test_a_reader_with_an_open_extended_batch_does_not_stop_every_ddl(
    target: Target, gw: Gateway
) -> None:
    """Availability. `ro`, who may only read, sends Parse/Bind/Execute of `select 1` and
    neither Sync nor Flush: PostgreSQL runs it and keeps the answers in its output
    buffer, so the gateway counts them in flight forever, and a cancel reaches an idle
    backend (ignored). Every DDL commit on the database then waits for them, and is
    refused after `limits.connect_timeout`, its session ended (55P03): one read-only
    agent stops every migration. The safe outcome: the DDL commits (the gateway can ask
    the idle backend for its answers with a Flush, or not count a batch the server has
    finished)."""
    ro = Wire(gw, "ro")
    mig = Wire(gw, "mig")
    try:
        settle(ro)
        settle(mig)
        ro.send(build.parse("", "select 1") + build.bind("", "") + build.execute(""))
        time.sleep(0.3)
        started = time.monotonic()
        try:
            made = mig.run(q(BUMP.format(name="bump72")), ready=1)
            said = made.text()
            ok = not made.errors()
        except ConnectionError as exc:
            said, ok = str(exc), False
        waited = time.monotonic() - started
    finally:
        ro.close()
        mig.close()
    assert ok, (said, waited)


def test_an_mcp_query_judged_before_a_ddl_commit_does_not_run_after_it(
    target: Target, gw: Gateway
) -> None:
    """An MCP query is judged (gate.check), then dials its own server session
    (internal_session: TCP, startup, SCRAM), and only then registers with the commit
    barrier (query.py `barrier.add`). A DDL COMMIT that the gateway reads in between
    finds nothing in flight, is sent at once, and the query then reaches the server
    after it: `(3).bumpN`, judged a read against the facts of before, runs the new
    function. `mig` holds `create function bumpN` in an open transaction (no window:
    only its COMMIT opens one) and commits a few ms after `rv`'s MCP query; the delay
    is swept, since where exactly in the request the judging falls is not visible."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    mig = Wire(gw, "mig")
    ro = Wire(gw, "ro")
    hits: list[tuple[str, float, list[tuple[object, ...]]]] = []
    start0, before0 = target.last_id(), target.snapshot()

    async def run() -> None:
        url = f"http://127.0.0.1:{gw.api_port}/mcp"
        headers = {"Authorization": f"Bearer {gw.token('rv')}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
        ):
            info = Implementation(name="pytest-agent", version="1.0")
            async with ClientSession(read, write, client_info=info) as session:
                await session.initialize()
                for attempt in range(40):
                    name = f"bump8{attempt:02d}"
                    delay = (attempt % 20) * 0.002
                    await asyncio.to_thread(settle, ro)
                    assert not mig.run(q("begin"), ready=1).errors()
                    assert not mig.run(q(BUMP.format(name=name)), ready=1).errors()
                    start = target.last_id()
                    call = asyncio.create_task(
                        session.call_tool(
                            "query", {"connection": "diff", "sql": f"select (3).{name}"}
                        )
                    )
                    await asyncio.sleep(delay)
                    await asyncio.to_thread(mig.run, q("commit"), ready=1)
                    await call
                    writes = row_writes(target, start)
                    if writes:
                        hits.append((name, delay, writes))
                        return

    try:
        asyncio.run(run())
    finally:
        mig.close()
        ro.close()
    assert hits == [] and row_writes(target, start0) == [] and target.snapshot() == before0, hits


def test_a_statement_prepared_before_ddl_is_judged_again_when_bound_after_it(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`rv` prepares `s`, `select x.bump73 from t73 x`: a column, a read. `mig` drops the
    column and makes a function `bump73(t73)` that writes. PostgreSQL analyses `s`
    again at its next Bind (its table changed), and `x.bump73` is now the function.
    Bound and executed after the DDL, `s` must be judged with the new facts: held."""
    rv, mig = wires["rv"], wires["mig"]
    with target.conn() as c:
        c.execute("create table public.t73 (id int, bump73 int)")
        c.execute("insert into public.t73 values (3, 3)")
        c.execute(f"alter table public.t73 owner to {target.role}")
    settle(rv)
    prepared = rv.run(build.parse("s", "select x.bump73 from public.t73 x"), build.sync(), ready=1)
    assert not prepared.errors(), prepared.text()
    made = mig.run(
        q(
            "alter table public.t73 drop column bump73; create function public.bump73(public.t73)"
            " returns int language sql volatile as"
            " $$ update public.stock set qty = qty + 1000 where id = $1.id; select 1 $$"
        ),
        ready=1,
    )
    assert not made.errors(), made.text()
    settle(rv)
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(build.bind("", "s"), build.execute(""), build.sync(), ready=1)
    assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
    assert reply.refused(), reply.text()


@pytest.mark.parametrize("leave", ["terminate", "close"])
def test_a_session_that_leaves_does_not_take_its_running_string_out_of_the_barrier(
    target: Target, gw: Gateway, wires: dict[str, Wire], leave: str
) -> None:
    """`rv` sends `select pg_sleep(1.5); select (3).bumpN` (the second judged a read: no
    such function) and leaves at once: a Terminate, or its socket closed. The gateway
    ends the session and drops it from the commit barrier, but the server backend is
    still sleeping (it reads the Terminate, or sees the closed socket, only after the
    string) and parses the second statement after that. `mig`'s DDL then finds nothing
    in flight, commits `bumpN` at once, and the server runs it as `rv`'s read."""
    mig = wires["mig"]
    name = "bump75" if leave == "terminate" else "bump76"
    rv = Wire(gw, "rv")
    try:
        settle(rv)
        settle(mig)
        start, before = target.last_id(), target.snapshot()
        rv.send(q(f"select pg_sleep(1.5); select (3).{name}"))
        running(target, f"select (3).{name}")
        if leave == "terminate":
            rv.send(build.terminate())
        else:
            rv.sock.shutdown(socket.SHUT_RDWR)
        time.sleep(0.2)
        made = mig.run(q(BUMP.format(name=name)), ready=1)
        assert not made.errors(), made.text()
        time.sleep(2.5)  # the string has run
    finally:
        rv.close()
    assert row_writes(target, start) == [] and target.snapshot() == before


def test_an_mcp_client_that_leaves_does_not_take_its_query_out_of_the_barrier(
    target: Target, gw: Gateway, wires: dict[str, Wire]
) -> None:
    """The same through MCP: `rv`'s query `select pg_sleep(1.5); select (3).bump77` is
    running when its MCP client goes away (the session is closed while the call is
    outstanding). The query must stay in the barrier (or be cancelled for sure) until
    its server session has ended: `mig`'s DDL must not commit `bump77` under it."""
    import httpx
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import Implementation

    mig = wires["mig"]
    settle(mig)
    start, before = target.last_id(), target.snapshot()
    sql = "select pg_sleep(1.5); select (3).bump77"

    async def run() -> None:
        url = f"http://127.0.0.1:{gw.api_port}/mcp"
        headers = {"Authorization": f"Bearer {gw.token('rv')}"}
        async with (
            httpx.AsyncClient(headers=headers, timeout=30) as http,
            streamable_http_client(url, http_client=http) as (read, write, _),
        ):
            info = Implementation(name="pytest-agent", version="1.0")
            async with ClientSession(read, write, client_info=info) as session:
                await session.initialize()
                call = asyncio.create_task(
                    session.call_tool("query", {"connection": "diff", "sql": sql})
                )
                await asyncio.sleep(0.4)
                call.cancel()
                with contextlib.suppress(BaseException):
                    await call

    asyncio.run(run())
    time.sleep(0.2)
    made = mig.run(q(BUMP.format(name="bump77")), ready=1)
    assert not made.errors(), made.text()
    time.sleep(2.5)
    assert row_writes(target, start) == [] and target.snapshot() == before
