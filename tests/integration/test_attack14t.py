"""attack14t: the DDL window's narrowing (70e0ea8, f5f2602). Before, one trigger, rule,
CHECK or default whose code may run DDL made every write on the database count as DDL;
now only a write that may reach such code does: `catalog_watch._ddl_by_writes` closes
the flagged code's tables over 'reaches' edges (partitions/children, cascading foreign
keys, views' base tables) and over the tables other triggers and rules write
(`routine_code.written_tables`, lexical), and `Gate.changes_catalogue` counts a write
whose bare table names meet that set.

Each attack: the table's owner (outside the gateway, as a migration would) makes a
flagged trigger on a table F whose function calls MAKER (a user function running
`EXECUTE 'create function bumpN ...'`), and a path from a table A to F; the watch is
brought to read it (DDL by `mig`); `dev`, who may write, writes A; `rv`, whose writes
need a review, calls `(3).bumpN` right after. Safe: rv's call is held and the target is
unchanged. A hole: bumpN's UPDATE of public.stock runs without a review."""

from __future__ import annotations

import psycopg
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
from tests.integration.test_attack14s import _drop, _maker
from wardgate.postgres.codec import build

pytestmark = pytest.mark.usefixtures("pg_server")

q = build.query


def _setup(target: Target, *sql: str) -> None:
    """Run ``sql`` as the superuser, then give every table, view and function in
    public to the role the gateway dials (the owner: a migration's objects)."""
    with target.conn() as c:
        for statement in sql:
            c.execute(statement.replace("{role}", target.role))
        # One transaction takes every table's lock in turn. Another session (it was not
        # found which: the gateway's catalogue look, or an earlier test's statement)
        # held one and waited for another in one CI run, and PostgreSQL ended this one
        # as the deadlock's victim. A migration retries.
        for attempt in range(5):
            try:
                c.execute(
                    f"""do $$ declare r record; begin
                    for r in select c.relname, c.relkind from pg_class c join pg_namespace n
                      on n.oid = c.relnamespace where n.nspname = 'public'
                      and c.relkind in ('r', 'p', 'v', 'f') loop
                      execute format('alter %s public.%I owner to "{target.role}"',
                        case r.relkind when 'f' then 'foreign table' when 'v' then 'view'
                        else 'table' end, r.relname);
                    end loop; end $$"""
                )
                break
            except psycopg.errors.DeadlockDetected:
                if attempt == 4:
                    raise


def _flagged_table(target: Target, table: str, event: str = "insert", level: str = "row") -> str:
    """Table ``table`` (name text) with an AFTER ``event`` trigger that calls the maker
    (routine_code flags it: it calls a user routine). The maker's argument: the new
    row's name (a statement trigger: the name table ``<table>_next`` holds)."""
    mk = _maker(target, f"mk_{table.strip(chr(34)).lower()}")
    arg = "new.name" if level == "row" else f"(select name from public.{table}_next)"
    sql = [f"create table if not exists public.{table} (name text)"]
    if level != "row":
        sql.append(f"create table public.{table}_next (name text)")
    fn = f"tgf_{table.strip(chr(34)).lower()}"
    sql += [
        f"create function public.{fn}() returns trigger language plpgsql as"
        f" $b$ begin perform public.{mk}({arg}); return null; end $b$",
        f'alter function public.{fn}() owner to "{{role}}"',
        f"create trigger tf after {event} on public.{table} for each {level}"
        f" execute function public.{fn}()",
    ]
    _setup(target, *sql)
    return mk


def _trigger_on(target: Target, table: str, body: str) -> None:
    """An AFTER INSERT row trigger on ``table`` (name text) running PL/pgSQL ``body``:
    unflagged code (no EXECUTE, no user routine), which writes somewhere."""
    _setup(
        target,
        f"create table if not exists public.{table} (name text)",
        f"create function public.tga_{table}() returns trigger language plpgsql as"
        f" $b$ begin {body} return new; end $b$",
        f'alter function public.tga_{table}() owner to "{{role}}"',
        f"create trigger ta after insert on public.{table} for each row"
        f" execute function public.tga_{table}()",
    )


def _attack(target: Target, wires: dict[str, Wire], fire: str, name: str) -> None:
    """The watch reads what was installed; `dev` runs ``fire`` (a write that reaches
    the flagged trigger, which makes function ``name``); `rv` calls ``(3).name``."""
    dev, rv, mig = wires["dev"], wires["rv"], wires["mig"]
    poked = mig.run(q(f"create table public.poke_{name} (i int)"), ready=1)
    assert not poked.errors(), poked.text()
    settle(rv)
    settle(dev)
    found = watch_reading(target)
    why, tables = found.ddl_by_writes, found.ddl_write_tables
    made = dev.run(q(fire), ready=1)
    assert not made.errors(), made.text()
    assert function_exists(target, name), "the attack's precondition: the write made the function"
    start, before = target.last_id(), target.snapshot()
    reply = rv.run(q(f"select (3).{name}"), ready=1)
    said = f"{reply.text()!r}; flagged: {why!r}; tables: {sorted(tables)}; dev: {made.text()!r}"
    assert row_writes(target, start) == [] and target.snapshot() == before, said
    assert reply.refused(), said


# -- holes: paths from a write to flagged code that the set misses ---------------------------


def test_a_trigger_writing_f_after_then(target: Target, wires: dict[str, Wire]) -> None:
    """The usual audit trigger shape: `if tg_op = 'INSERT' then insert into f ...`."""
    _flagged_table(target, "atk14t_f1")
    _trigger_on(
        target,
        "atk14t_a1",
        "if tg_op = 'INSERT' then insert into public.atk14t_f1 values (new.name); end if;",
    )
    _attack(target, wires, "insert into public.atk14t_a1 values ('bump14t1')", "bump14t1")


def test_a_do_also_rule_writing_f(target: Target, wires: dict[str, Wire]) -> None:
    """`create rule r as on insert to a do also insert into f values (new.name)`."""
    _flagged_table(target, "atk14t_f2")
    _setup(
        target,
        "create table public.atk14t_a2 (name text)",
        "create rule r as on insert to public.atk14t_a2"
        " do also insert into public.atk14t_f2 values (new.name)",
    )
    _attack(target, wires, "insert into public.atk14t_a2 values ('bump14t2')", "bump14t2")


def test_a_trigger_writing_a_quoted_mixed_case_table(
    target: Target, wires: dict[str, Wire]
) -> None:
    """F is `"Atk14tF3"` (an ORM's quoted PascalCase table); A's trigger inserts into
    it by that name, quotes and all."""
    _flagged_table(target, '"Atk14tF3"')
    _trigger_on(target, "atk14t_a3", 'insert into public."Atk14tF3" values (new.name);')
    _attack(target, wires, "insert into public.atk14t_a3 values ('bump14t3')", "bump14t3")


def test_a_trigger_truncating_a_list_of_tables(target: Target, wires: dict[str, Wire]) -> None:
    """F's flagged trigger is a statement trigger on TRUNCATE (TRUNCATE is not a DDL
    keyword to routine_code); A's trigger runs `truncate b, f`."""
    _flagged_table(target, "atk14t_f4", event="truncate", level="statement")
    _setup(target, "insert into public.atk14t_f4_next values ('bump14t4')")
    _trigger_on(target, "atk14t_a4", "truncate public.atk14t_b4, public.atk14t_f4;")
    _setup(target, "create table public.atk14t_b4 (i int)")
    _attack(target, wires, "insert into public.atk14t_a4 values ('x')", "bump14t4")


def test_a_trigger_truncating_with_cascade(target: Target, wires: dict[str, Wire]) -> None:
    """F references B with a plain (NO ACTION) foreign key; A's trigger runs
    `truncate b cascade`, which truncates F too and fires its TRUNCATE trigger."""
    _setup(target, "create table public.atk14t_b5 (id int primary key)")
    _flagged_table(target, "atk14t_f5", event="truncate", level="statement")
    _setup(
        target,
        "alter table public.atk14t_f5 add column b int references public.atk14t_b5",
        "insert into public.atk14t_f5_next values ('bump14t5')",
    )
    _trigger_on(target, "atk14t_a5", "truncate public.atk14t_b5 cascade;")
    _attack(target, wires, "insert into public.atk14t_a5 values ('x')", "bump14t5")


def test_a_foreign_table_over_f_on_the_same_database(
    target: Target, wires: dict[str, Wire]
) -> None:
    """`ff` is a postgres_fdw foreign table for `public.f` on this very database (a
    loopback server, as a sharding or archive setup has); dev inserts into ff."""
    _flagged_table(target, "atk14t_f6")
    _setup(
        target,
        "create extension if not exists postgres_fdw",
        f"create server atk14t_loop foreign data wrapper postgres_fdw"
        f" options (host '127.0.0.1', port '5432', dbname '{target.db}')",
        'create user mapping for "{role}" server atk14t_loop'
        " options (user 'postgres', password_required 'false')",
        "create foreign table public.atk14t_ff6 (name text) server atk14t_loop"
        " options (schema_name 'public', table_name 'atk14t_f6')",
    )
    _attack(target, wires, "insert into public.atk14t_ff6 values ('bump14t6')", "bump14t6")


def test_an_expression_index_calling_the_maker(target: Target, wires: dict[str, Wire]) -> None:
    """`create index on a ((imm(name)))`, imm an IMMUTABLE PL/pgSQL function that
    calls the (volatile) maker: PostgreSQL checks only the declared volatility."""
    mk = _maker(target, "mk_atk14t_7")
    _setup(
        target,
        "create function public.atk14t_imm7(n text) returns int language plpgsql immutable"
        f" as $b$ begin return public.{mk}(n); end $b$",
        'alter function public.atk14t_imm7(text) owner to "{role}"',
        "create table public.atk14t_a7 (name text)",
        "create index on public.atk14t_a7 ((public.atk14t_imm7(name)))",
    )
    _attack(target, wires, "insert into public.atk14t_a7 values ('bump14t7')", "bump14t7")


@pytest.mark.parametrize("how", ["calls-maker", "writes-f"])
def test_a_check_calling_a_begin_atomic_function(
    target: Target, wires: dict[str, Wire], how: str
) -> None:
    """A's CHECK calls `chk(name)`, a `language sql begin atomic ... end` function
    that calls the maker itself, or inserts into the flagged F."""
    n = 8 if how == "calls-maker" else 9
    if how == "calls-maker":
        mk = _maker(target, f"mk_atk14t_{n}")
        body = f"select public.{mk}(n);"
    else:
        _flagged_table(target, f"atk14t_f{n}")
        body = f"insert into public.atk14t_f{n} values (n); select 1;"
    _setup(
        target,
        f"create function public.atk14t_chk{n}(n text) returns int language sql"
        f" begin atomic {body} end",
        f'alter function public.atk14t_chk{n}(text) owner to "{{role}}"',
        f"create table public.atk14t_a{n} (name text check (public.atk14t_chk{n}(name) = 1))",
    )
    _attack(target, wires, f"insert into public.atk14t_a{n} values ('bump14t{n}')", f"bump14t{n}")


# -- paths the set does follow: each must stay counted ---------------------------------------


@pytest.mark.parametrize(
    "how",
    ["default-partition", "sub-partition", "inherited-child", "fk-cascade-2-levels",
     "view-over-view", "security-barrier-check-option-view", "instead-rule",
     "trigger-cte", "trigger-alias", "merge-in-trigger"],
)  # fmt: skip
def test_paths_the_closure_follows(target: Target, wires: dict[str, Wire], how: str) -> None:
    """Each `how` is a path from dev's write to F's flagged trigger that the closure
    must follow; dev's write names only its own table."""
    n = 20 + [
        "default-partition", "sub-partition", "inherited-child", "fk-cascade-2-levels",
        "view-over-view", "security-barrier-check-option-view", "instead-rule",
        "trigger-cte", "trigger-alias", "merge-in-trigger",
    ].index(how)  # fmt: skip
    f, a, name = f"atk14t_f{n}", f"atk14t_a{n}", f"bump14t{n}"
    fire = f"insert into public.{a} values ('{name}')"
    if how == "default-partition":
        # F is the default partition of A (two levels below the root via ATTACH).
        _setup(
            target,
            f"create table public.{a} (name text) partition by list (name)",
            f"create table public.{a}_x partition of public.{a} for values in ('x')",
        )
        _flagged_table(target, f)
        _setup(target, f"alter table public.{a} attach partition public.{f} default")
    elif how == "sub-partition":
        _setup(
            target,
            f"create table public.{a} (name text) partition by list (name)",
            f"create table public.{a}_m partition of public.{a} default partition by list (name)",
        )
        _flagged_table(target, f)
        _setup(target, f"alter table public.{a}_m attach partition public.{f} default")
    elif how == "inherited-child":
        # F inherits A, the trigger is on F; dev updates through A (not ONLY).
        _setup(target, f"create table public.{a} (name text)")
        _flagged_table(target, f, event="update")
        _setup(
            target,
            f"alter table public.{f} inherit public.{a}",
            f"insert into public.{f} values ('x')",
        )
        fire = f"update public.{a} set name = '{name}'"
    elif how == "fk-cascade-2-levels":
        _setup(
            target,
            f"create table public.{a} (name text primary key)",
            f"create table public.{a}_mid (name text primary key"
            f" references public.{a} on update cascade)",
            f"insert into public.{a} values ('x')",
            f"insert into public.{a}_mid values ('x')",
        )
        _flagged_table(target, f, event="update")
        _setup(
            target,
            f"alter table public.{f} add foreign key (name) references public.{a}_mid"
            " on update cascade",
            f"insert into public.{f} values ('x')",
        )
        fire = f"update public.{a} set name = '{name}'"
    elif how == "view-over-view":
        _flagged_table(target, f)
        _setup(
            target,
            f"create view public.{a}_v1 as select name from public.{f}",
            f"create view public.{a} as select name from public.{a}_v1",
        )
    elif how == "security-barrier-check-option-view":
        _flagged_table(target, f)
        _setup(
            target,
            f"create view public.{a} with (security_barrier) as select name"
            f" from public.{f} where name like 'bump%' with check option",
        )
    elif how == "instead-rule":
        _flagged_table(target, f)
        _setup(
            target,
            f"create table public.{a} (name text)",
            f"create rule r as on insert to public.{a}"
            f" do instead insert into public.{f} values (new.name)",
        )
    elif how == "trigger-cte":
        _flagged_table(target, f)
        _setup(target, f"create table public.{a}_sink (i int)")
        _trigger_on(
            target,
            a,
            f"with w as (insert into public.{f} values (new.name) returning 1)"
            f" insert into public.{a}_sink select * from w;",
        )
    elif how == "trigger-alias":
        _flagged_table(target, f)
        _trigger_on(target, a, f"insert into public.{f} as x (name) values (new.name);")
    else:
        _flagged_table(target, f)
        _trigger_on(
            target,
            a,
            f"merge into public.{f} t using (select new.name as name) s on false"
            " when not matched then insert values (s.name);",
        )
    _attack(target, wires, fire, name)


# -- availability ---------------------------------------------------------------------------


def test_an_event_trigger_does_not_make_every_insert_count(target: Target) -> None:
    """An event trigger on ddl_command_end whose function runs `EXECUTE` (as schema
    tooling's do: PostgREST's reload hook, pg_cron/pg_graphql grants). A plain INSERT
    cannot fire it. Safe: a plain INSERT into an unrelated table is not counted as DDL
    (the set holds no '*'); measured on the watch's reading and the gate's test."""
    from wardgate.gate import _reaches_ddl
    from wardgate.policy.sql import classify

    _setup(
        target,
        "create table public.atk14t_plain (i int)",
        "create function public.atk14t_et() returns event_trigger language plpgsql as"
        " $b$ begin if false then execute 'select 1'; end if; end $b$",
        "create event trigger atk14t_et on ddl_command_end execute function public.atk14t_et()",
    )
    try:
        found = watch_reading(target)
        why, tables = found.ddl_by_writes, found.ddl_write_tables
        (info,) = classify("insert into public.atk14t_plain values (1)")
        assert why, "the precondition: the event trigger is flagged"
        assert not _reaches_ddl(info, found), (why, sorted(tables))
    finally:
        _drop(target, "drop event trigger atk14t_et")
