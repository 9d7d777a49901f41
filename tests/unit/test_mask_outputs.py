"""Which result columns of the text sent to the server the database masked, so the
second layer skips them (postgres/mask_outputs.py): only a whole output expression that
is the rewriter's masking call counts, at a position the text fixes."""

from __future__ import annotations

import pytest

from wardgate.postgres.mask_outputs import MaskedOutputs, masked_outputs
from wardgate.postgres.mask_rewrite import ColumnRule, MaskCatalog, Table, rewrite

PARTIAL = "CAST(wardgate_mask.partial(CAST(email AS pg_catalog.text)) AS text)"
PSEUDONYM = (
    "CAST(wardgate_mask.pseudonym(CAST(p.email AS pg_catalog.text)) AS character varying(80))"
)

CASES = [
    (f"SELECT id, {PARTIAL} AS email, notes FROM t", (3, {1})),
    (f"SELECT {PSEUDONYM}, CAST(NULL AS integer) AS ssn FROM t p", (2, {0, 1})),
    (f"SELECT {PARTIAL} FROM t WHERE id = $1 ORDER BY 1", (1, {0})),
    (f"WITH x AS (SELECT 1) SELECT {PARTIAL} FROM t", (1, {0})),
    # Not the whole output expression: scanned.
    (f"SELECT {PARTIAL} || notes FROM t", None),
    (f"SELECT upper({PARTIAL}) FROM t", None),
    (f"SELECT CAST({PARTIAL} AS bytea) FROM t", None),
    (f"SELECT CAST({PARTIAL} AS citext) FROM t", None),
    (
        "SELECT CAST(wardgate_mask.partial(CAST(email || notes AS pg_catalog.text)) AS text) FROM t",
        None,
    ),
    ("SELECT CAST(wardgate_mask.partial(CAST(email AS text)) AS text) FROM t", None),
    ("SELECT CAST(public.partial(CAST(email AS pg_catalog.text)) AS text) FROM t", None),
    ("SELECT CAST(wardgate_mask.hmac_hex(CAST(email AS pg_catalog.text)) AS text) FROM t", None),
    # The positions are not the text's: scanned.
    (f"SELECT {PARTIAL}, * FROM t", None),
    (f"SELECT {PARTIAL}, t.* FROM t", None),
    (f"SELECT {PARTIAL}, (t).* FROM t", None),
    (f"SELECT {PARTIAL} FROM t UNION SELECT notes FROM t", None),
    (f"SELECT {PARTIAL} FROM t; SELECT notes FROM t", None),
    (f"SELECT {PARTIAL} INTO x FROM t", None),
    (f"EXPLAIN SELECT {PARTIAL} FROM t", None),
    (f"DECLARE c CURSOR FOR SELECT {PARTIAL} FROM t", None),
    # A masked column of a subquery, transformed outside or not: scanned.
    (f"SELECT e FROM (SELECT {PARTIAL} AS e FROM t) s", None),
    (f"SELECT e || notes FROM (SELECT {PARTIAL} AS e, notes FROM t) s", None),
    ("SELECT email FROM t", None),
    ("not sql at all", None),
]


@pytest.mark.parametrize(("sql", "expected"), CASES)
def test_masked_outputs(sql: str, expected: tuple[int, set[int]] | None) -> None:
    found = masked_outputs(sql)
    if expected is None:
        assert found is None
    else:
        assert found == MaskedOutputs(expected[0], frozenset(expected[1]))


def test_positions_apply_only_to_a_result_of_the_statements_width() -> None:
    found = masked_outputs(f"SELECT id, {PARTIAL} FROM t")
    assert found is not None
    assert found.of(2) == frozenset({1})
    assert found.of(3) == frozenset()


def test_the_rewriters_own_output_is_recognised() -> None:
    table = Table(
        "public", "people", "r", (("id", "integer"), ("email", "text"), ("notes", "text"))
    )
    catalog = MaskCatalog.of([table], functions_installed=True)
    rules = (ColumnRule("r", "*.people.email", "partial"),)
    paths = (("postgres", "public"),)
    cases = {
        "select id, email, notes from people": (3, {1}),
        "select * from people": (3, {1}),
        "select notes, email as e from people where id = $1": (2, {1}),
        "select email || notes from people": None,
        "select lower(email) from people": None,
        "select e from (select email as e from people) s": None,
    }
    for sql, expected in cases.items():
        sent = rewrite(sql, catalog, rules, paths)
        assert sent is not None
        found = masked_outputs(sent)
        want = None if expected is None else MaskedOutputs(expected[0], frozenset(expected[1]))
        assert found == want, (sql, sent)
    no_functions = MaskCatalog.of([table], functions_installed=False)
    sent = rewrite("select email from people", no_functions, rules, paths)
    assert sent is not None and masked_outputs(sent) == MaskedOutputs(1, frozenset({0}))
