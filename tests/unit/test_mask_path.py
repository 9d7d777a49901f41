"""Unqualified table names under the session's possible search_paths (mask_path.py and
MaskCatalog.resolve): what each statement may set, and which schema's table the
rewriter masks by. The database-side proof is in tests/integration/test_mask_path.py."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pglast import parse_sql
from pglast.stream import RawStream
from tests.unit.test_mask_rewrite import CATALOG, PARTIAL, RULES

from wardgate.postgres import mask_catalog
from wardgate.postgres.mask_catalog import MaskCatalogs
from wardgate.postgres.mask_path import SessionPaths, path_effects
from wardgate.postgres.mask_rewrite import ColumnRule, MaskCatalog, Refused, Table, rewrite

MASKED = f"SELECT {PARTIAL.format('email')} AS email FROM people"
# An unqualified name the path resolves to one table is sent pinned to its schema.
CRM = "SELECT email FROM crm.people"
PUBLIC = "SELECT email FROM public.people"
MASKED_PUBLIC = MASKED.replace("FROM people", "FROM public.people")


def _rewrite(*args: Any) -> str | None:
    """rewrite() deparsed the same way whichever path (fast or full) it took."""
    out = rewrite(*args)
    return None if out is None else "; ".join(str(RawStream()(s)) for s in parse_sql(out))


@pytest.mark.parametrize(
    ("sql", "effects"),
    [
        ('SET search_path = "$user", public', (("set", ("$user", "public")),)),
        ('set local search_path to crm, "Pub"', (("set", ("crm", "Pub")),)),
        ('set "SEARCH_PATH" = crm', (("set", ("crm",)),)),
        ("reset search_path", (("reset", ()),)),
        ("set search_path to default", (("reset", ()),)),
        ("select set_config('search_path', 'a, \"B\"', false)", (("set", ("a", "B")),)),
        ("select set_config(x, 'a', false) from t", (("unknown", ()),)),
        ("select pg_catalog.set_config('search_path', $1, false)", (("unknown", ()),)),
        ("select set_config('work_mem', '1MB', false)", ()),
        ("set role bob", (("role", ()),)),
        ("discard all", (("reset", ()), ("role", ()))),
        ("select 1 offset 0", ()),
        ("select email from people", ()),
        ('SET U&"search\\005fpath" = crm', (("set", ("crm",)),)),
    ],
)
def test_what_a_statement_may_set(sql: str, effects: tuple[object, ...]) -> None:
    assert path_effects(sql) == effects


def test_the_possible_paths_only_grow() -> None:
    paths = SessionPaths()
    assert paths.paths('"$user", public', "crm") == (("crm", "public"),)
    assert paths.paths(None, None) is None  # no default read: unknown
    paths.note("set search_path = crm")
    paths.note("select 1")
    paths.note("reset search_path")  # the start value, already possible
    assert paths.paths("public", "u") == (("public",), ("crm",))
    paths.note("set role someone")  # $user may be another name now
    assert paths.paths("public", "u") == (("public",), ("crm",))
    assert paths.paths('"$user", public', "u") is None
    paths.note("select set_config(current_user, 'x', false)")
    assert paths.paths("public", "u") is None


def test_the_sessions_own_start_value_wins() -> None:
    """What the server answered at the session's start, over the snapshot's defaults."""
    paths = SessionPaths('"$user", crm', "alice")
    assert paths.paths("public", "postgres") == (("alice", "crm"),)
    assert SessionPaths().paths('"$user", public', "postgres") == (("postgres", "public"),)
    assert SessionPaths(unknown=True).paths("public", "postgres") is None


def test_the_table_the_path_names_decides() -> None:
    """public.people.email is masked, crm.people.email is not."""
    assert _rewrite("select email from people", CATALOG, RULES, (("crm", "public"),)) == CRM
    assert (
        _rewrite("select email from people", CATALOG, RULES, (("public", "crm"),)) == MASKED_PUBLIC
    )
    assert _rewrite("select email from people", CATALOG, RULES, (("public",),)) == MASKED_PUBLIC
    # Either may be the session's: the stricter reading.
    both = (("crm", "public"), ("public",))
    assert rewrite("select email from people", CATALOG, RULES, both) == MASKED
    assert rewrite("select email from people", CATALOG, RULES, None) == MASKED
    # A schema-qualified name needs no path.
    assert rewrite("select email from crm.people", CATALOG, RULES, (("public",),)) is None


def test_star_is_expanded_when_the_path_resolves_one_table() -> None:
    out = rewrite("select * from people", CATALOG, RULES, (("public",),))
    assert out is not None and PARTIAL.format("people.email") in out
    with pytest.raises(Refused) as info:
        rewrite("select * from people", CATALOG, RULES, (("public",), ("crm",)))
    assert "several schemas" in info.value.reason
    with pytest.raises(Refused):
        rewrite("select * from people", CATALOG, RULES, None)


def test_a_schema_searched_first_may_hold_a_new_table() -> None:
    """alice.people is not in the snapshot (created since, or in the session's open
    transaction): the server would read it instead of public.people, so a rule on it
    masks the column too."""
    rules = (ColumnRule("alice", "alice.people.email", "partial"),)
    assert _rewrite("select email from people", CATALOG, rules, (("public",),)) == PUBLIC
    assert (
        _rewrite("select email from people", CATALOG, rules, (("alice", "public"),))
        == MASKED_PUBLIC
    )
    assert _rewrite("select email from people", CATALOG, rules, (("public", "alice"),)) == PUBLIC
    # A column only the new table may have: refused, not passed.
    with pytest.raises(Refused) as info:
        rewrite(
            "select ssn2 from people",
            CATALOG,
            (ColumnRule("alice", "alice.people.ssn2", "redact"),),
            (("alice", "public"),),
        )
    assert "not in the gateway's catalog snapshot" in info.value.reason


def test_temporary_tables_come_first() -> None:
    temp = Table("pg_temp_7", "people", "r", (("id", "integer"), ("email", "text")))
    catalog = MaskCatalog.of(
        [*(t for ts in CATALOG.tables.values() for t in ts), temp], functions_installed=True
    )
    rules = (ColumnRule("temp", "pg_temp_7.people.email", "partial"),)
    # Some session's temporary people: the gateway does not know whose, so it counts.
    assert rewrite("select email from people", catalog, rules, (("crm",),)) == MASKED
    # Placed last in the path, it is searched after crm.
    assert _rewrite("select email from people", catalog, rules, (("crm", "pg_temp"),)) == CRM


def test_a_name_outside_the_path_is_refused() -> None:
    with pytest.raises(Refused) as info:
        rewrite("select email from people", CATALOG, RULES, (("sales",),))
    assert "search_path (sales)" in info.value.reason


@pytest.mark.parametrize(
    "sql",
    [
        # Rule-named table, no masked column in the snapshot: a column added since may be.
        "merge into orders o using people p on o.id = p.id when matched then delete",
        "select o.id from orders o, people p tablesample system_rows (50)",
    ],
)
def test_merge_and_tablesample_over_a_named_table_without_masked_columns(sql: str) -> None:
    rules = (ColumnRule("later", "*.people.newcol", "redact"),)
    with pytest.raises(Refused):
        rewrite(sql, CATALOG, rules, (("public",),))


def test_merge_computing_with_a_blocked_function_is_refused() -> None:
    with pytest.raises(Refused) as info:
        rewrite(
            "merge into orders o using (select 1 as id) s on o.id = s.id when not matched "
            "then insert values (s.id, length(query_to_xml('select email from people', "
            "true, false, '')::text))",
            CATALOG,
            (ColumnRule("pii", "public.people.email", "partial"),),
            (("public",),),
        )
    assert "query_to_xml" in info.value.reason


def test_tablesample_masks_like_the_table() -> None:
    out = rewrite(
        "select email, id from people tablesample bernoulli (10) repeatable (1)",
        CATALOG,
        RULES,
        (("public",),),
    )
    assert out == (
        f"SELECT {PARTIAL.format('email')} AS email, id FROM public.people "
        "TABLESAMPLE bernoulli(10) REPEATABLE (1)"
    )
    rules = (ColumnRule("later", "*.people.newcol", "redact"),)
    with pytest.raises(Refused) as info:
        rewrite("select newcol from people tablesample system (5)", CATALOG, rules, (("public",),))
    assert "not in the gateway's catalog snapshot" in info.value.reason


def test_a_session_that_may_change_relations_counts_every_schema() -> None:
    """A relation may have been dropped, renamed or moved (``ALTER TABLE crm.people
    RENAME TO p2`` in the session's open transaction, where no snapshot sees it), or
    created where the path searches first (a view over a masked column named like an
    unmasked table): from then on every schema's table of a name counts."""
    for sql in (
        "alter table crm.people rename to p2",
        "drop table crm.people",
        "alter table crm.people set schema x",
        "create view alice.people as select email from public.people",
        "create table alice.people (email text)",
        "select email into alice.people from public.people",
        "explain analyze create table alice.people as select 1",
        "explain analyze select 1 into alice.people",
    ):
        assert ("catalog", ()) in path_effects(sql), sql
        paths = SessionPaths("crm, public", "u")
        assert paths.paths("x", "u") == (("crm", "public"),)
        paths.note(sql)
        assert paths.catalog_changed and paths.paths("x", "u") is None, sql
    assert path_effects("insert into people select 1") == ()
    assert path_effects("create index on people (id)") == ()


def test_ddl_through_the_gateway_makes_the_later_schemas_count_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalogs = MaskCatalogs()
    catalogs._cache["it"] = (time.monotonic() + 30, CATALOG)
    rules = RULES
    assert (
        catalogs.rewrite("it", "select email from people", rules, SessionPaths("crm, public"))
        == CRM
    )
    catalogs.stale("it")  # DDL ran (another session, through the gateway)
    assert (
        catalogs.rewrite("it", "select email from people", rules, SessionPaths("crm, public"))
        == MASKED
    )
    later = time.monotonic() + 31
    monkeypatch.setattr(mask_catalog.time, "monotonic", lambda: later)
    assert (
        catalogs.rewrite("it", "select email from people", rules, SessionPaths("crm, public"))
        == CRM
    )
