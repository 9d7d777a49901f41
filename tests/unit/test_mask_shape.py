"""The rewriter's memory by statement shape (postgres/mask_shape.py): a statement
rewritten through its shape (literals as parameters, put back after) is the
statement's own rewrite, for every statement of test_mask_rewrite's tables and for
literal-heavy ones."""

from __future__ import annotations

import time

import pytest
from pglast import parse_sql
from pglast.stream import RawStream
from tests.unit.test_mask_rewrite import CATALOG, REFUSED, REWRITTEN, RULES, UNCHANGED

from wardgate.postgres.mask_catalog import MaskCatalogs
from wardgate.postgres.mask_path import SessionPaths
from wardgate.postgres.mask_rewrite import Refused, rewrite
from wardgate.postgres.mask_shape import fill, shape_of, template_of

LITERALS = [
    "select email, 'a''b', 1.5, -2, B'101', X'ff', $$x$$, E'\\n' from people where id = 7",
    "select substring(email from 2 for 3), position('@' in email) from people limit 5",
    "select email from people where id in (1, 2, 3) order by 1 offset 2 fetch first 3 rows only",
    "select email || 'x' from people p join orders o on o.people_id = p.id and o.id > 10",
    "select email, date '2026-01-01' from people",  # the shape does not parse
    "select email from people where name = $1 and id = 3",
    "select card from people where card = 'tok' limit 1",
    "select email from people where email like 'a%'",
    "copy (select email from people where id = 1) to stdout with (format csv, delimiter ';')",
    "select 'x' as email from orders",
]


def _canonical(sql: str) -> str:
    return "; ".join(str(RawStream()(s)) for s in parse_sql(sql))


def _direct(sql: str) -> str | None | Refused:
    paths = SessionPaths("public", "u")
    paths.note(sql)  # DDL (CREATE TABLE AS) makes the path unknown
    try:
        return rewrite(sql, CATALOG, RULES, paths.paths(None, "u"))
    except Refused as exc:
        return exc


@pytest.mark.parametrize(
    "sql", [s for s, _ in REWRITTEN] + [s for s, _ in REFUSED] + UNCHANGED + LITERALS
)
def test_the_shape_gives_the_statements_own_rewrite(sql: str) -> None:
    catalogs = MaskCatalogs()
    catalogs._cache["c"] = (time.monotonic() + 30, CATALOG)
    expected = _direct(sql)
    for _ in range(2):  # computed, then remembered
        try:
            paths = SessionPaths("public", "u")
            got: str | None | Refused = catalogs.rewrite("c", sql, RULES, paths)
        except Refused as exc:
            got = exc
        if isinstance(expected, Refused):
            assert isinstance(got, Refused) and got.reason == expected.reason, sql
        elif expected is None:
            assert got is None, sql
        else:
            assert isinstance(got, str) and _canonical(got) == _canonical(expected), sql


def test_a_shape_serves_new_literals_without_a_rewrite(monkeypatch: pytest.MonkeyPatch) -> None:
    catalogs = MaskCatalogs()
    catalogs._cache["c"] = (time.monotonic() + 30, CATALOG)
    paths = None
    first = catalogs.rewrite("c", "select email from public.people where id = 1", RULES, paths)
    calls: list[str] = []
    from wardgate.postgres import mask_catalog

    def counted(sql: str, *args: object) -> object:
        calls.append(sql)
        return rewrite(sql, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(mask_catalog, "rewrite", counted)
    second = catalogs.rewrite("c", "select email from public.people where id = 42", RULES, paths)
    assert calls == []
    assert first is not None and second is not None
    assert second == first.replace(" 1 ", " 42 ")
    assert "42" in second and "1" not in second.replace("10000", "")


def test_shapes() -> None:
    assert shape_of("select 1") == ("select  $10000 ", ("1",))
    assert shape_of("select a from t") is None  # no literal
    assert shape_of("select $10000, 1") is None  # a parameter that high: not shaped
    text, literals = shape_of("select 'it''s', email from t where x = -5") or ("", ())
    assert literals == ("'it''s'", "5")
    template = template_of(text.replace("email", "f(email)"), 2)
    assert template is not None
    assert (
        fill(template, literals).split() == "select 'it''s' , f(email) from t where x = - 5".split()
    )
    assert template_of("select $10000, $10000", 2) is None  # not each once
