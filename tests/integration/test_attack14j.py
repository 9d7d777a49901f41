"""attack14j: a FETCH that runs more than the gateway saw, and a user cast that JSON
functions call with no cast in the text. Each case is driven through the real gateway
into a real PostgreSQL 15 and judged by the server's write log (`pg_diff.py`): `rv`'s
writes need a review, so no write may land without one.

- SQL `FETCH`/`MOVE` of a portal bound through the protocol runs that portal's
  statement. Sent as a Query it was judged by what the portal holds (attack 14), but sent
  through Parse/Bind/Execute it was judged as the bare FETCH, a read; and a portal
  bound to `FETCH c1` (which runs `c1` in turn) was followed one step only.
- `to_json`, `to_jsonb`, `row_to_json`, `json_build_object`, `json_agg` ... convert a
  value of a user type with the type's cast to `json` when one exists: a user function,
  run with no cast or function name in the text.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.conftest import Gateway
from tests.integration.pg_diff import (
    Target,
    Wire,
    lazy_wires,
    make_target,
    start_gateway,
    wire_decision,
)
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query

# Made by the database's owner: an enum rendered in JSON by a function of its own (the
# documented way to give a type its JSON form), which writes.
EXTRA = """
create type public.mood as enum ('sad', 'happy');
create table public.moods (id int primary key, m public.mood not null);
insert into public.moods values (1, 'happy');
create function public.mood_json(public.mood) returns json language sql volatile as
    $$ update public.stock set qty = qty + 1000 where id = 8; select to_json($1::text) $$;
create cast (public.mood as json) with function public.mood_json(public.mood);
"""


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    for made in make_target():
        with made.conn() as c:
            c.execute(EXTRA)
            c.execute(f'grant select on public.moods to "{made.role}"')
            c.execute("truncate audit.write_log")
        yield made


@pytest.fixture(scope="module")
def gw(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = start_gateway(tmp_path_factory.mktemp("attack14j"), target)
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


def _ext(sql: str) -> bytes:
    return build.parse("", sql) + build.bind("", "") + build.execute("") + build.sync()


UPDATE = "UPDATE stock SET qty = 77 WHERE id = 1 RETURNING id"


def _bind_update(w: Wire, *chain: str) -> None:
    """In an open transaction (protocol portals end with theirs): portal c1 bound to
    the UPDATE, whose review waits for its Execute, and each of ``chain`` (a FETCH)
    bound to portal c2, c3, ..."""
    assert not w.run(q("BEGIN"), ready=1).errors()
    messages = [build.parse("s1", UPDATE), build.bind("c1", "s1")]
    for i, sql in enumerate(chain, start=2):
        messages += [build.parse(f"s{i}", sql), build.bind(f"c{i}", f"s{i}")]
    bound = w.run(*messages, build.sync(), ready=1)
    assert not bound.errors(), bound.text()


@pytest.mark.parametrize("fetch", ["FETCH ALL FROM c1", "MOVE ALL IN c1", "FETCH 1 c1"])
def test_a_fetch_sent_through_parse_is_judged_by_the_portal_it_runs(
    target: Target, wires: dict[str, Wire], fetch: str
) -> None:
    """Before: `rv` bound portal c1 to `UPDATE stock ... RETURNING id` (its review waits
    for Execute), then sent `FETCH ALL FROM c1` through Parse/Bind/Execute; the gateway
    judged the bare FETCH, a read, and PostgreSQL ran the UPDATE (the write log had
    it, with no review filed)."""
    start = target.last_id()
    w = wires["rv"]
    _bind_update(w)
    reply = w.run(_ext(fetch), ready=1)
    w.run(q("COMMIT"), ready=1)
    assert target.log(start) == []
    assert wire_decision(reply) == "review", reply.text()


@pytest.mark.parametrize("extended", [False, True], ids=["query", "parse"])
def test_a_fetch_of_a_portal_that_fetches_another_is_judged_by_the_last(
    target: Target, wires: dict[str, Wire], extended: bool
) -> None:
    """Before: `rv` bound c1 to the UPDATE and c2 to `FETCH ALL FROM c1`, then sent
    `FETCH ALL FROM c2`: the gateway resolved c2 to its FETCH, a read, and PostgreSQL
    ran c2, which ran c1: the UPDATE, with no review."""
    start = target.last_id()
    w = wires["rv"]
    _bind_update(w, "FETCH ALL FROM c1")
    fetch = "FETCH ALL FROM c2"
    reply = w.run(_ext(fetch) if extended else q(fetch), ready=1)
    w.run(q("COMMIT"), ready=1)
    assert target.log(start) == []
    assert wire_decision(reply) == "review", reply.text()


def test_a_fetch_chain_deeper_than_the_gateway_follows_is_refused(
    target: Target, wires: dict[str, Wire]
) -> None:
    """c2 fetches c1, c3 fetches c2, ... c6 fetches c5: refused, not followed forever."""
    start = target.last_id()
    w = wires["rv"]
    _bind_update(w, *(f"FETCH ALL FROM c{i}" for i in range(1, 6)))
    reply = w.run(_ext("FETCH ALL FROM c6"), ready=1)
    w.run(q("ROLLBACK"), ready=1)
    assert target.log(start) == []
    assert "wardgate:portal-chain" in reply.text(), reply.text()


@pytest.mark.parametrize(
    "sql",
    [
        "select to_json('happy'::mood)",
        "select to_jsonb(m) from moods limit 1",
        "select row_to_json(x) from moods x limit 1",
        "select json_build_object('m', m) from moods limit 1",
        "select json_agg(m) from (select m from moods limit 1) s",
    ],
)
def test_a_user_cast_to_json_is_user_code_of_its_source_type(
    target: Target, wires: dict[str, Wire], sql: str
) -> None:
    """Before: each of these was a read for `rv`, and PostgreSQL's JSON functions
    converted the `mood` value with its cast to json, `mood_json`, which updated
    stock row 8 with no review."""
    start = target.last_id()
    reply = wires["rv"].run(q(sql), ready=1)
    assert target.log(start) == []
    assert wire_decision(reply) == "review", reply.text()


def test_cursors_and_portals_that_read_still_run(wires: dict[str, Wire]) -> None:
    """What the fixes must not stop: a DECLAREd cursor fetched through Parse, a protocol
    portal of a plain SELECT fetched by SQL, and JSON of built-in types."""
    w = wires["ro"]
    assert not w.run(q("BEGIN"), ready=1).errors()
    assert not w.run(q("DECLARE d CURSOR FOR SELECT id FROM stock"), ready=1).errors()
    reply = w.run(_ext("FETCH 2 FROM d"), ready=1)
    assert not reply.errors() and reply.rows() == 2, reply.text()
    bound = w.run(
        build.parse("r1", "SELECT id FROM stock"),
        build.bind("p1", "r1"),
        build.parse("r2", "FETCH ALL FROM p1"),
        build.bind("p2", "r2"),
        build.sync(),
        ready=1,
    )
    assert not bound.errors(), bound.text()
    reply = w.run(q("FETCH 3 FROM p2"), ready=1)
    assert not reply.errors() and reply.rows() == 3, reply.text()
    assert not w.run(q("COMMIT"), ready=1).errors()
    reply = w.run(q("select to_json(id), row_to_json(s) from stock s limit 1"), ready=1)
    assert not reply.errors() and reply.rows() == 1, reply.text()
