"""attack14u: the catalogue watch must not wait on a migration's locks. PostgreSQL
deparses a rule, a trigger's WHEN and a BEGIN ATOMIC body only after it has locked
every table the definition names. The watch read them inside its one catalogue query,
so a migration run outside the gateway that held one of those tables in ACCESS
EXCLUSIVE stopped the look: sessions waiting for it after DDL through the gateway went
on as the worst case, and the watch kept the tables it had locked before, so a
migration that next altered one of those deadlocked with it (attack14t's setup was
ended as such a deadlock's victim in one CI run).

Each case: a definition that names tables W (written, or read) and S (its own);
a migration, outside the gateway, takes one of them in ACCESS EXCLUSIVE; DDL by `mig`
makes the watch look while it is held; then the migration alters the other table.
Safe: the look ends (sessions settle), the migration is not held by the watch, the
definition counts as unreadable (a write that reaches it counts as DDL) until the lock
is gone, and it is read a second later."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.integration.attack14 import gw, settle, target, wires  # noqa: F401 - fixtures
from tests.integration.conftest import Gateway
from tests.integration.pg_diff import Target, Wire
from tests.integration.test_attack14s import _attack, _drop, _maker, _owned_table, _trigger
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

UNREAD = "its definition could not be read yet"
# (the definition, the table the migration holds, the table it alters next, the
# watch's name for where the code is)
CASES = {
    "rule": (
        "create rule wl_r as on insert to public.wl_s do also"
        " insert into public.wl_w values (public.wl_mk(new.name))",
        "wl_w", "wl_s", "a rule on public.wl_s",
    ),
    "trigger-when": (
        "create trigger wl_t before insert on public.wl_s for each row"
        " when (public.wl_mk(new.name) = 1) execute function public.wl_tf()",
        "wl_s", "wl_w", "a trigger's WHEN on public.wl_s",
    ),
    "begin-atomic": (
        "alter table public.wl_s add constraint wl_c check (public.wl_chk(name) = 1)",
        "wl_w", "wl_s", "a CHECK or default of public.wl_s",
    ),
}  # fmt: skip


@pytest.fixture
def objects(target: Target) -> Iterator[None]:
    with target.conn() as c:
        c.execute("create table public.wl_s (name text)")
        c.execute("create table public.wl_w (name text)")
        c.execute(
            "create function public.wl_tf() returns trigger language plpgsql"
            " as $b$ begin return new; end $b$"
        )
    _maker(target, "wl_mk")
    with target.conn() as c:
        c.execute(
            "create function public.wl_chk(n text) returns int language sql"
            " begin atomic select public.wl_mk(n) from public.wl_w limit 1; end"
        )
    yield
    with target.conn() as c:
        c.execute("drop table if exists public.wl_s, public.wl_w cascade")
        c.execute("drop function if exists public.wl_tf(), public.wl_chk(text), public.wl_mk(text)")


def _logged(gw: Gateway, start: int, where: str, unread: bool, timeout: float = 8.0) -> str:
    """The line the gateway logs after ``start`` for connection `diff` (the wires'; `diff2`
    reads the same database on its own schedule) saying why ``where`` may run DDL:
    that its definition could not be read (``unread``), or another reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in gw.log[start:].splitlines():
            if "connection 'diff':" in line and f"{where}: " in line:
                if (f"{where}: {UNREAD}" in line) == unread:
                    return line
        time.sleep(0.1)
    raise AssertionError(f"no such line for {where!r} ({unread=}): {gw.log[start:][-3000:]}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_migrations_lock_neither_stalls_the_watch_nor_deadlocks_with_it(
    target: Target, gw: Gateway, wires: dict[str, Wire], objects: None, case: str
) -> None:
    definition, held, altered, where = CASES[case]
    with target.conn() as c:
        c.execute(definition)
    mig, rv = wires["mig"], wires["rv"]
    poke = f"wl_poke_{case.replace('-', '_')}"
    with target.conn() as migration:
        migration.execute("set lock_timeout = '5s'")
        migration.execute("begin")
        migration.execute(f"lock table public.{held} in access exclusive mode")
        start = len(gw.log)
        poked = mig.run(build.query(f"create table public.{poke} (i int)"), ready=1)
        assert not poked.errors(), poked.text()
        settle(rv)  # the look with the lock held has ended, and sessions go on
        _logged(gw, start, where, unread=True)
        began = time.monotonic()
        migration.execute(f"alter table public.{altered} add column wl_extra int")
        waited = time.monotonic() - began
        start = len(gw.log)
        migration.execute("commit")
    # Below deadlock_timeout (1 s): the watch held nothing the migration waited for.
    assert waited < 0.9, f"the migration's ALTER waited {waited:.2f} s"
    # Once the lock is gone the watch reads the definition (it looks again a second
    # later): the routine it calls flags it now, for what it says.
    _logged(gw, start, where, unread=False)
    with target.conn() as c:
        c.execute(f"drop table public.{poke}")


# -- names the watch's own queries resolve -----------------------------------------------

# A user `||` for (text, oid) matches exactly where the built-in needs a coercion: under
# the role's search_path it made the watch's marker (`$1::text || 'r' || r.oid`) the
# attacker's text, so a rule or a trigger's WHEN was judged as `SELECT 1` (helper attack,
# 2026-12-08). The watch's session resolves names in pg_catalog only (CATALOG_READER).
HIJACK = (
    "create function public.wl_cat(a text, b oid) returns text language sql immutable as"
    " $$ select case when a like 'wardgate-definition-%' then 'SELECT 1'"
    " else pg_catalog.textcat(a, b::pg_catalog.text) end $$",
    "create operator public.|| (leftarg = text, rightarg = oid, function = public.wl_cat)",
)


@pytest.mark.parametrize("how", ["trigger-when", "rule-writing-a-flagged-table"])
def test_a_user_operator_does_not_rewrite_what_the_watch_reads(
    target: Target, wires: dict[str, Wire], how: str
) -> None:
    """dev's insert into A runs the maker (a trigger's WHEN on A calls it, or A's rule
    writes B, whose trigger calls it), which makes function `bump14uN`; rv calls
    `(3).bump14uN` right after. Safe: A's write counted as DDL, so rv's call is held
    and the target is unchanged."""
    n = 1 if how == "trigger-when" else 2
    a, name = f"wl_op{n}", f"bump14u{n}"
    mk = _maker(target, f"mk14u_op{n}")
    _owned_table(target, a)
    with target.conn() as c:
        for sql in HIJACK:
            c.execute(sql)
        if how == "trigger-when":
            c.execute(
                f"create function public.tg_{a}() returns trigger language plpgsql"
                " as $b$ begin return new; end $b$"
            )
            c.execute(
                f"create trigger t after insert on public.{a} for each row"
                f" when (public.{mk}(new.name) = 1) execute function public.tg_{a}()"
            )
    if how != "trigger-when":
        _owned_table(target, f"{a}_b")
        _trigger(target, f"{a}_b", f"begin perform public.{mk}(new.name); return new; end")
        with target.conn() as c:
            c.execute(
                f"create rule r as on insert to public.{a} do also"
                f" insert into public.{a}_b values (new.name)"
            )
    try:
        _attack(target, wires, f"insert into public.{a} values ('{name}')", name)
    finally:
        _drop(
            target,
            f"drop table public.{a} cascade",
            f"drop table if exists public.{a}_b cascade",
            "drop operator public.|| (text, oid)",
            "drop function public.wl_cat(text, oid)",
        )
