"""attack14s: DDL that a trigger or a rule runs (ee8a9df, dc8f1e7). The catalogue watch
reads the database's trigger functions, trigger WHEN conditions and rules on writes, and
policy/routine_code.py flags, from their words, those that may run DDL; one flagged
object makes every write on the database count as DDL (the window and the barrier).

Each attack has the table's owner (outside the gateway, as a migration would) install a
trigger or a rule whose code creates a function `bumpN` named by the row written, and
which the lexical reading does not flag. The watch is brought to read it (DDL through
the gateway by `mig`, as the trigger's own creation would); `dev`, who may write,
inserts a row (a plain write: no window); `rv`, whose writes need a review, calls
`(3).bumpN` right after, judged on the facts of before, and bumpN's UPDATE runs without
a review. Safe: rv's call is held and the target is unchanged."""

from __future__ import annotations

import struct
import time

import pytest

from tests.integration.attack14 import (  # noqa: F401 - fixtures
    function_exists,
    gw,
    row_writes,
    settle,
    target,
    watch_reading,
    wires,
)
from tests.integration.pg_diff import Target, Wire
from tests.integration.test_attack14n import MAKER
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def _maker(target: Target, name: str) -> str:
    """MAKER (attack14m's routine that creates a function named by its argument) as
    ``public.<name>(text)``; a NULL argument makes nothing (a variable's initial NULL)."""
    sql = MAKER.format(name=name).replace(
        "begin execute", "begin if n is null then return 1; end if; execute"
    )
    with target.conn() as c:
        c.execute(sql)
        c.execute(f"alter function public.{name}(text) owner to {target.role}")
    return name


def _owned_table(target: Target, table: str, columns: str = "name text") -> None:
    with target.conn() as c:
        c.execute(f"create table public.{table} ({columns})")
        c.execute(f"alter table public.{table} owner to {target.role}")


def _trigger(target: Target, table: str, body: str, config: str = "", when: str = "") -> None:
    """An AFTER INSERT row trigger on ``table`` running PL/pgSQL ``body``."""
    with target.conn() as c:
        c.execute(
            f"create function public.tg_{table}() returns trigger language plpgsql {config}"
            f" as $body$ {body} $body$"
        )
        c.execute(f"alter function public.tg_{table}() owner to {target.role}")
        c.execute(
            f"create trigger t after insert on public.{table} for each row {when}"
            f" execute function public.tg_{table}()"
        )


def _drop(target: Target, *sql: str) -> None:
    with target.conn() as c:
        for statement in sql:
            c.execute(statement)


def _attack(target: Target, wires: dict[str, Wire], fire: str, name: str) -> None:
    """The watch reads what was installed; `dev` runs ``fire`` (a write whose trigger or
    rule makes function ``name``); `rv` calls ``(3).name`` right after."""
    dev, rv, mig = wires["dev"], wires["rv"], wires["mig"]
    poked = mig.run(q(f"create table public.poke_{name} (i int)"), ready=1)
    assert not poked.errors(), poked.text()
    settle(rv)
    settle(dev)
    flags = watch_reading(target).ddl_by_writes
    made = dev.run(q(fire), ready=1)
    assert not made.errors(), made.text()
    assert function_exists(target, name), "the attack's precondition: the trigger made the function"
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q(f"select (3).{name}"), ready=1)
    said = f"{reply.text()!r}; routine_code's reading: {flags!r}; dev: {made.text()!r}"
    assert row_writes(target, start) == [] and target.snapshot() == before, said
    assert reply.refused(), said


# -- lexical blind spots of routine_code.ddl_reason ------------------------------------------


def test_a_trigger_calling_a_routine_named_like_a_reserved_keyword(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`create function public.values(text)` (PostgreSQL takes any keyword after a
    schema's dot) is the maker; the trigger runs `perform public.values(new.name)`."""
    table, name = "atk14s_kw", "bump14s1"
    _maker(target, "values")
    _owned_table(target, table)
    _trigger(target, table, "begin perform public.values(new.name); return new; end")
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, f"drop trigger t on public.{table}")


def test_a_trigger_calling_a_user_routine_named_like_a_plpgsql_word(
    target: Target, wires: dict[str, Wire]
) -> None:
    """The maker is `public.query(text)`; the trigger runs `perform query(new.name)`:
    PL/pgSQL passes `SELECT query(new.name)` to SQL, which calls public.query."""
    table, name = "atk14s_word", "bump14s2"
    _maker(target, "query")
    _owned_table(target, table)
    _trigger(target, table, "begin perform query(new.name); return new; end")
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, f"drop trigger t on public.{table}")


@pytest.mark.parametrize(
    "body",
    [
        "begin perform cast(new.name as public.mk14s_dom); return new; end",
        "declare v public.mk14s_dom; begin v := new.name; return new; end",
    ],
    ids=["cast-as", "declared-variable"],
)
def test_a_trigger_converting_to_a_domain_whose_check_makes_a_function(
    target: Target, wires: dict[str, Wire], body: str
) -> None:
    """A domain over text whose CHECK calls the maker (the watch knows it as a type
    whose casts run user code); the trigger converts the row's name to it with
    `CAST(... AS ...)`, or assigns it to a variable of that type: no `::`."""
    n = 3 if "cast" in body else 4
    table, name = f"atk14s_dom{n}", f"bump14s{n}"
    with target.conn() as c:
        if not c.execute("select 1 from pg_type where typname = 'mk14s_dom'").fetchone():
            _maker(target, "mk14s_domcheck")
            c.execute(
                "create domain public.mk14s_dom as text check (public.mk14s_domcheck(value) = 1)"
            )
    _owned_table(target, table)
    _trigger(target, table, body)
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, f"drop trigger t on public.{table}")


@pytest.mark.parametrize("how", ["check", "default"])
def test_an_audit_style_trigger_writing_a_table_whose_check_or_default_makes_a_function(
    target: Target, wires: dict[str, Wire], how: str
) -> None:
    """The trigger is the kind the change calls harmless (`insert into audit table
    values (new.name)`), but that audit table has a CHECK (or a column DEFAULT) calling
    the maker. routine_code reads the trigger's words only."""
    n = 5 if how == "check" else 6
    table, name = f"atk14s_aud{n}", f"bump14s{n}"
    mk = _maker(target, f"mk14s_aud{n}")
    if how == "check":
        _owned_table(target, f"{table}_log", f"name text check (public.{mk}(name) = 1)")
        body = f"begin insert into public.{table}_log (name) values (new.name); return new; end"
    else:
        _owned_table(target, f"{table}_log", f"name text, made int default public.{mk}('{name}')")
        body = f"begin insert into public.{table}_log (name) values (new.name); return new; end"
    _owned_table(target, table)
    _trigger(target, table, body)
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, f"drop trigger t on public.{table}")


@pytest.mark.parametrize("how", ["trigger-body", "trigger-when", "rule-action"])
def test_code_past_the_63rd_byte_is_read(target: Target, wires: dict[str, Wire], how: str) -> None:
    """A trigger function that plainly calls the maker, after a comment line (a
    licence header, a change note): the watch gets `begin -- ...` and nothing else.
    Likewise a trigger's `WHEN (mk(new.name) = 1)`, which pg_get_triggerdef prints after
    `CREATE TRIGGER t AFTER INSERT ON public.<table> FOR EACH ROW` (the WHEN is cut off),
    and a rule `DO ALSO SELECT mk(new.name)` whose DO falls past byte 63."""
    n = {"trigger-body": 9, "trigger-when": 10, "rule-action": 11}[how]
    table, name = f"atk14s_cut_{how.replace('-', '_')}", f"bump14s{n}"
    mk = _maker(target, f"mk14s_cut{n}")
    _owned_table(target, table)
    if how == "trigger-body":
        note = "-- keeps the row's history; reviewed by the data team, see ticket 4711"
        _trigger(target, table, f"begin\n{note}\nperform public.{mk}(new.name); return new; end")
        drop = f"drop trigger t on public.{table}"
    elif how == "trigger-when":
        _trigger(target, table, "begin return new; end", when=f"when (public.{mk}(new.name) = 1)")
        drop = f"drop trigger t on public.{table}"
    else:
        _drop(
            target,
            f"create rule r as on insert to public.{table} do also select public.{mk}(new.name)",
        )
        drop = f"drop rule r on public.{table}"
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, drop)


def test_a_trigger_hiding_a_call_behind_standard_conforming_strings_off(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`perform '\\' || ''' ; perform public.m14s(new.name) ; --'`: with the function's
    setting `standard_conforming_strings = off` (applied before PL/pgSQL compiles it,
    at CREATE and at each call), the first string ends at `'''` and the call runs; the
    scanner the gateway uses (always `on`) reads two string constants. Short enough to
    be read whole but for its last line (the 63-byte cut above): the reading is wrong
    on its own."""
    table, name = "atk14s_scs", "bump14s7"
    _maker(target, "m14s")
    _owned_table(target, table)
    body = "begin perform '\\' || ''' ; perform public.m14s(new.name) ; --';\n return new; end"
    _trigger(target, table, body, config="set standard_conforming_strings = off")
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, f"drop trigger t on public.{table}")


def test_a_rule_whose_condition_makes_a_function(target: Target, wires: dict[str, Wire]) -> None:
    """`create rule r as on insert to t where public.mk(new.name) = 1 do also insert
    into t_log values (1)`: the condition joins the action (and, for INSTEAD, the
    original statement), so every INSERT runs it."""
    table, name = "atk14s_rule", "bump14s8"
    mk = _maker(target, "mk14s_rule")
    _owned_table(target, table)
    _owned_table(target, f"{table}_log", "i int")
    _drop(
        target,
        f"create rule r as on insert to public.{table} where public.{mk}(new.name) = 1"
        f" do also insert into public.{table}_log values (1)",
    )
    try:
        _attack(target, wires, f"insert into public.{table} values ('{name}')", name)
    finally:
        _drop(target, f"drop rule r on public.{table}")


# -- statements that fire a flagged trigger: each must count as DDL ---------------------------


def _copy(table: str, name: str) -> list[bytes]:
    data = f"{name}\n".encode()
    return [
        q(f"copy public.{table} (name) from stdin"),
        b"d" + struct.pack("!I", 4 + len(data)) + data,
        b"c" + struct.pack("!I", 4),
    ]


@pytest.mark.parametrize(
    "fire",
    [
        "merge into public.{t} t using (select '{n}' as name) s on false"
        " when not matched then insert values (s.name)",
        "explain analyze insert into public.{t} values ('{n}')",
        "prepare p14s as insert into public.{t} values ($1); execute p14s('{n}')",
        "with w as (insert into public.{t} values ('{n}') returning 1) select * from w",
        "insert into public.{t}_v values ('{n}')",
        "copy",
        "begin; insert into public.{t}_d values ('{n}'); commit",
    ],
    ids=["merge", "explain-analyze", "prepare-execute", "cte", "view-instead-of", "copy",
         "deferred-constraint-trigger"],
)  # fmt: skip
def test_writes_that_fire_a_flagged_trigger_open_the_window(
    target: Target, wires: dict[str, Wire], fire: str
) -> None:
    """A trigger that routine_code does flag (it calls the maker): every statement
    that fires it must count, whatever its shape: MERGE, EXPLAIN ANALYZE, EXECUTE of a
    prepared INSERT, a data-modifying CTE under a SELECT, an INSERT into a view with an
    INSTEAD OF trigger, COPY FROM STDIN, and a deferred constraint trigger, which runs
    at COMMIT."""
    import zlib

    n = zlib.crc32(fire.encode()) % 1000
    table, name = f"atk14s_f{n}", f"bump14s_f{n}"
    mk = _maker(target, f"mk14s_f{n}")
    body = f"begin perform public.{mk}(new.name); return new; end"
    _owned_table(target, table)
    drops = [f"drop trigger t on public.{table}"]
    if "_v " in fire:
        _drop(target, f"create view public.{table}_v as select name from public.{table}")
        _drop(target, f"alter view public.{table}_v owner to {target.role}")
        with target.conn() as c:
            c.execute(
                f"create function public.tgv_{table}() returns trigger language plpgsql"
                f" as $b$ {body} $b$"
            )
            c.execute(
                f"create trigger tv instead of insert on public.{table}_v for each row"
                f" execute function public.tgv_{table}()"
            )
        drops.append(f"drop trigger tv on public.{table}_v")
    if "_d " in fire:
        _owned_table(target, f"{table}_d")
        with target.conn() as c:
            c.execute(
                f"create function public.tgd_{table}() returns trigger language plpgsql"
                f" as $b$ {body} $b$"
            )
            c.execute(
                f"create constraint trigger td after insert on public.{table}_d"
                f" deferrable initially deferred for each row"
                f" execute function public.tgd_{table}()"
            )
        drops.append(f"drop trigger td on public.{table}_d")
    _trigger(target, table, body)
    try:
        if fire == "copy":
            dev, rv, mig = wires["dev"], wires["rv"], wires["mig"]
            assert not mig.run(q(f"create table public.poke_{name} (i int)"), ready=1).errors()
            settle(rv)
            settle(dev)
            made = dev.run(*_copy(table, name), ready=1)
            assert not made.errors(), made.text()
            assert function_exists(target, name)
            start, before = target.last_id(), target.snapshot()
            reply = rv.run(q(f"select (3).{name}"), ready=1)
            assert row_writes(target, start) == [] and target.snapshot() == before, reply.text()
            assert reply.refused(), reply.text()
        else:
            _attack(target, wires, fire.format(t=table, n=name), name)
    finally:
        _drop(target, *drops)


# -- availability ---------------------------------------------------------------------------


def _write_latency(dev: Wire, table: str, count: int = 10) -> float:
    took = []
    for i in range(count):
        started = time.monotonic()
        reply = dev.run(q(f"insert into public.{table} values ({i})"), ready=1)
        took.append(time.monotonic() - started)
        assert not reply.errors(), reply.text()
    return sorted(took)[len(took) // 2]


def test_one_flagged_trigger_does_not_slow_or_cancel_unrelated_work(
    target: Target, wires: dict[str, Wire], capsys: pytest.CaptureFixture[str]
) -> None:
    """Availability (measured). A flagged trigger on one table, which nobody writes, makes
    every write on the database count as DDL. A plain INSERT into another table, median
    of 10, without and with it; and `ro`'s 1.5 s report while `dev` inserts one row.
    Safe: the write costs about the same, and the report completes."""
    plain, flagged = "atk14s_plain", "atk14s_flagged"
    _owned_table(target, plain, "i int")
    _owned_table(target, flagged)
    mk = _maker(target, "mk14s_avail")
    dev, ro, mig = wires["dev"], wires["ro"], wires["mig"]
    assert not mig.run(q("create table public.poke_avail0 (i int)"), ready=1).errors()
    settle(dev)
    settle(ro)
    without = _write_latency(dev, plain)
    _trigger(target, flagged, f"begin perform public.{mk}(new.name); return new; end")
    try:
        assert not mig.run(q("create table public.poke_avail1 (i int)"), ready=1).errors()
        settle(dev)
        settle(ro)
        assert watch_reading(target).ddl_by_writes
        with_trigger = _write_latency(dev, plain)
        ro.send(q("select pg_sleep(1.5), 42 as atk14s_long"))
        time.sleep(0.2)
        started = time.monotonic()
        mine = dev.run(q(f"insert into public.{plain} values (99)"), ready=1)
        dev_took = time.monotonic() - started
        theirs = ro.read(ready=1)
        with capsys.disabled():
            print(
                f"\nattack14s availability: write median {without * 1000:.1f} ms without,"
                f" {with_trigger * 1000:.1f} ms with a flagged trigger; during ro's 1.5 s"
                f" read the write took {dev_took:.2f} s, ro got {theirs.text() or 'its rows'}"
            )
        assert not mine.errors(), mine.text()
        assert not theirs.errors(), (theirs.text(), dev_took)
        assert with_trigger < without + 0.05, (without, with_trigger)
    finally:
        _drop(target, f"drop trigger t on public.{flagged}")
