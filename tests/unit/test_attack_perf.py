"""Texts that share a libpg_query fingerprint but name other tables are never judged by
each other's verdict. The fingerprint drops runs of two or more digits from a table name
(partitions) and ignores TEMP tables' names; the gate shares a read's or write's
classification, and its verdict, by fingerprint. Found while attacking the per-statement
performance changes (the audit rows of two tables named d17d236_x and d17d999_x said
the same table)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- the per-statement memos and the session model's bookkeeping ---------------------------


def test_needs_params_memo_answers_each_tuple_its_own_answer_across_threads() -> None:
    """needs_params keeps its last answer in one module global: threads judging
    statements of both kinds at once never get the other tuple's answer."""
    import threading

    from wardgate.policy.sql import needs_params

    plain = classify("select * from orders where id = 1")
    param = classify("select set_config($1, 'x', false)")
    assert needs_params(param) and not needs_params(plain)
    wrong: list[bool] = []

    def run(statements: tuple[Any, ...], expected: bool) -> None:
        for _ in range(20000):
            if needs_params(statements) is not expected:
                wrong.append(expected)

    threads = [threading.Thread(target=run, args=(param, True)) for _ in range(3)]
    threads += [threading.Thread(target=run, args=(plain, False)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


_NAMES = st.sampled_from(["a", "b", ""])
_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("propose"), st.none() | _NAMES, st.none() | st.integers(0, 3)),
        st.tuples(st.just("confirm"), st.integers(0, 30)),
        st.tuples(st.just("refute"), st.integers(0, 30)),
        st.tuples(st.just("drop"), st.sets(_NAMES)),
        st.tuples(st.just("next")),
    ),
    max_size=40,
)


@given(_OPS, st.integers(0, 3), st.integers(0, 3000))
@settings(max_examples=300, deadline=None)
def test_names_bookkeeping_is_what_it_counts(
    ops: list[tuple[Any, ...]], most: int, most_bytes: int
) -> None:
    """Weights kept per change and per confirmed name: ``bytes`` is always the weight of
    what is confirmed and pending, and ``candidates`` (now a scan from the end that stops
    at an older batch) answers what the rule over every pending change answered."""
    from wardgate.postgres.session_model import Change, Names, NamesFull, Portal

    names: Names[Portal] = Names(most=most, most_bytes=most_bytes)
    changes: list[Change[Portal]] = []
    batch = 0

    def reference(name: str) -> list[Portal | None]:  # candidates as c18caf3 wrote it
        own = [c for c in names.pending if c.batch == batch and c.name in (name, None)]
        if own:
            return [own[-1].value if own[-1].name == name else None]
        out: list[Portal | None] = [names.confirmed.get(name)]
        for c in names.pending:
            if c.name in (name, None):
                value = c.value if c.name == name else None
                if value not in out:
                    out.append(value)
        return out

    for op in ops:
        if op[0] == "propose":
            value = None if op[2] is None else Portal(("x" * op[2],), ("p" * op[2], None, ""))
            with contextlib.suppress(NamesFull):
                changes.append(names.propose(op[1], value, batch))
        elif op[0] in ("confirm", "refute") and changes:
            getattr(names, op[0])(changes[op[1] % len(changes)])
        elif op[0] == "drop":
            names.drop(set(op[1]))
        elif op[0] == "next":
            batch += 1
        weights = [v.weight for v in names.confirmed.values()]
        weights += [0 if c.value is None else c.value.weight for c in names.pending]
        assert names.bytes == sum(weights)
        for name in ("a", "b", ""):
            assert names.candidates(name, batch) == reference(name)


_NAME = st.builds(
    lambda stem, digits, tail, quoted: (
        f'"{stem}{digits}{tail}"' if quoted else stem + digits + tail
    ),
    st.sampled_from(["pay", "t", "x_", "é"]),
    st.sampled_from(["", "1", "12", "2024", "2025", "007"]),
    st.sampled_from(["", "_a", "b"]),
    st.booleans(),
)
_SHAPES = [
    "select * from {} where id = 1",
    "update {} set qty = 12 where id = 1",
    "select a from s.{} join {} using (id)",
    "insert into {} select * from {}",
]


@given(st.sampled_from(_SHAPES), _NAME, _NAME, _NAME, _NAME)
@settings(max_examples=300, deadline=None)
def test_a_shared_classification_names_the_text_own_tables(
    shape: str, a1: str, a2: str, b1: str, b2: str
) -> None:
    """Whatever was classified before under the same fingerprint, a statement's tables
    are its own."""
    from wardgate.policy.sql import _parse_and_classify, classify_keyed

    first, then = shape.format(a1, a2), shape.format(b1, b2)
    classify_keyed(first)
    shared = classify_keyed(then)[1][0]
    own = _parse_and_classify(then)[0]
    assert (shared.tables_read, shared.tables_written) == (own.tables_read, own.tables_written)


def test_names_with_digits_in_other_places_do_not_share_a_classification() -> None:
    """`s.x_2024 join x_` and `s.x_ join x_2024` hold the same names with digits and
    one fingerprint (it drops digit runs from names): their tables differ, and so do the
    guardrails that apply (found by the property test above)."""
    from wardgate.policy.sql import classify_keyed

    first = classify_keyed("select a from s.x_2024 join x_ using (id)")
    then = classify_keyed("select a from s.x_ join x_2024 using (id)")
    assert first[0] != then[0]
    assert then[1][0].tables_read == ("x_2024", "s.x_")
