"""What the attack14h-t modules share (issue 14: the catalogue window after DDL and the
commit barrier): the function they make, the configuration with `mig`, one gateway per
module on a fresh target, and the waits. A module takes the fixtures by importing them
(`from tests.integration.attack14 import gw, target, wires  # noqa: F401`)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_diff import Target, Wire, diff_config, lazy_wires, make_target
from wardgate.gate import UserCode
from wardgate.postgres import catalog_watch
from wardgate.postgres.codec import build

# A function whose call writes (the target's write log shows whether it ran).
BUMP = (
    "create function public.{name}(int) returns int language sql volatile as"
    " $$ update public.stock set qty = qty + 1000 where id = $1; select $1 $$"
)


def mig_config(target: Target) -> str:
    """pg_diff's configuration with `mig`: an agent that may run DDL but whose writes
    need a review (a migration bot)."""
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


def attack_config(target: Target) -> str:
    """`mig_config`, and a second connection, `diff2`, to the same database (say, one a
    team's agents use)."""
    text = mig_config(target)
    block = re.search(r"\n  diff:\n(?:    .*\n)+", text)
    assert block is not None
    second = block.group(0).replace("\n  diff:\n", "\n  diff2:\n", 1)
    return text.replace(block.group(0), block.group(0) + second.lstrip("\n"), 1)


@pytest.fixture(scope="module")
def target(pg_server: None) -> Iterator[Target]:
    yield from make_target()


@pytest.fixture(scope="module")
def gw(
    target: Target, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Gateway]:
    """One gateway (`attack_config`) for the module's tests."""
    name = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    gateway = make_gateway(tmp_path_factory.mktemp(name), attack_config(target))
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture
def wires(gw: Gateway) -> Iterator[dict[str, Wire]]:
    yield from lazy_wires(gw)


def settle(wire: Wire) -> None:
    """Wait until the watch has read what an earlier test's DDL committed: until then
    every expression is judged as the worst case (`select 1` too)."""
    for _ in range(50):
        if not wire.run(build.query("select 1"), ready=1).errors():
            return
        time.sleep(0.1)
    raise AssertionError("the catalogue facts did not settle")


def ext(sql: str) -> bytes:
    """``sql`` as the unnamed statement's Parse, Bind and Execute (no Sync)."""
    return build.parse("", sql) + build.bind("", "") + build.execute("")


def function_exists(target: Target, name: str) -> bool:
    """A function of that name exists on the target (whatever its schema)."""
    with target.conn() as c:
        row = c.execute("select count(*) from pg_proc where proname = %s", (name,)).fetchone()
    return bool(row and row[0])


def running(target: Target, text: str, timeout: float = 10.0) -> None:
    """Wait until a backend of the target's database runs a query string holding
    ``text``: the statement is in flight on the server, not only sent by a client whose
    bytes a busy gateway has not read yet (a fixed sleep is not enough while other tests
    share the cores)."""
    deadline = time.monotonic() + timeout
    with target.conn() as c:
        while time.monotonic() < deadline:
            row = c.execute(
                "select count(*) from pg_stat_activity where datname = %s"
                " and state = 'active' and pid <> pg_backend_pid()"
                " and position(%s in query) > 0",
                (target.db, text),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.01)
    raise AssertionError(f"the server never ran {text!r}")


def row_writes(target: Target, start: int) -> list[tuple[object, ...]]:
    """What the target's write log holds after ``start``, DDL aside: the rows a
    statement wrote (a test's proof that nothing ran)."""
    return [row for row in target.log(start) if row[1] != "DDL"]


def watch_reading(target: Target) -> UserCode:
    """What the catalogue watch reads of the target now (its queries, run here, each
    deferred definition read as the watch reads it), for failure messages."""
    mark = catalog_watch.marker()
    with target.conn() as c, psycopg.RawCursor(c) as cur:
        rows = cur.execute(catalog_watch._USER_CODE_QUERY, (mark,)).fetchall()
        read = {}
        for key, sql in catalog_watch.deferred(rows, mark).items():
            one = cur.execute(sql, (key[1:],)).fetchone()
            if one and one[0] is not None:
                read[key] = str(one[0])
        names = cur.execute(catalog_watch._QUERY).fetchall()
    return catalog_watch.user_code(
        catalog_watch.with_definitions(rows, mark, read), frozenset(str(r[0]) for r in names)
    )
