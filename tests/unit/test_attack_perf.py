"""Texts that share a libpg_query fingerprint but name other tables are never judged by
each other's verdict. The fingerprint drops runs of two or more digits from a table name
(partitions) and ignores TEMP tables' names; the gate shares a read's or write's
classification, and its verdict, by fingerprint. Found while attacking the per-statement
performance changes (the audit rows of two tables named d17d236_x and d17d999_x said
the same table)."""

from __future__ import annotations

from pathlib import Path

import pytest

from wardgate.actions import Action, Decision
from wardgate.config import parse_config
from wardgate.gate import Gate
from wardgate.policy.sql import classify, fingerprint

POLICY = """
groups: {engineers: {}}
principals:
  ann: {kind: user, groups: [engineers]}
connections:
  shop:
    type: postgres
    upstream: {database: shop, user: app}
    roles: {engineers: engineer}
roles:
  engineer: {read: allow, write: allow, ddl: allow}
guardrails:
  - {name: no-payroll-2025, match: {tables: [payroll2025, t34, pay]}, verdict: block}
  - {name: no-temp-b, match: {tables_written: [b]}, verdict: block}
"""

PAIRS = [
    # judged first (allowed), then the one a guardrail blocks: same fingerprint
    ("select * from payroll2024 where id = 1", "select * from payroll2025 where id = 1"),
    ("update payroll2024 set a = 1 where id = 2", "update payroll2025 set a = 1 where id = 2"),
    ('select * from "t12" where id = 1', 'select * from "t34" where id = 1'),
    ("select * from pay2024 where id = 1", "select * from pay where id = 1"),
    (
        'select * from U&"payroll\\0032\\0030\\0032\\0034" where id = 1',
        'select * from U&"payroll\\0032\\0030\\0032\\0035" where id = 1',
    ),
    ("select * into temp a from s where id = 1", "select * into temp b from s where id = 1"),
]


@pytest.mark.parametrize(("first", "then"), PAIRS)
def test_a_table_named_differently_is_judged_by_its_own_name(first: str, then: str) -> None:
    assert fingerprint(first) == fingerprint(then)  # what makes it dangerous
    config = parse_config(POLICY, Path("policy.yaml"))
    ann = config.principal("ann")
    assert ann is not None
    gate = Gate(config)
    allowed = gate.check(Action(ann, "shop", "postgres", "sql", first))
    assert allowed.decision is Decision.ALLOW, allowed
    blocked = gate.check(Action(ann, "shop", "postgres", "sql", then))
    assert blocked.decision is Decision.BLOCK, blocked
    info = classify(then)[0]
    assert (
        info.tables_read + info.tables_written
        != classify(first)[0].tables_read + classify(first)[0].tables_written
    )


def test_literals_still_share_a_fingerprint() -> None:
    """The common case keeps its cache: literals of one digit, or none, in the text."""
    from wardgate.policy.sql import classify_keyed

    assert classify_keyed("select * from orders where id = 1")[0].startswith("f:")
    assert classify_keyed("select * from orders where id = $1")[0].startswith("f:")


def test_two_digit_literals_still_share_a_fingerprint() -> None:
    """Only identifiers join the key: `id = 42` and `id = 43` are one statement still."""
    from wardgate.policy.sql import classify_keyed

    first = classify_keyed("select * from orders where id = 42 -- 12")[0]
    assert first.startswith("f:")
    assert classify_keyed("select * from orders where id = 43 -- 13")[0] == first
    assert (
        classify_keyed("select * from orders2024 where id = 43")[0]
        != classify_keyed("select * from orders2025 where id = 43")[0]
    )
