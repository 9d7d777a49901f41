"""postgres/transaction.py: what the server's answers make of an approved statement's
transaction, as a table of message sequences and the outcome each leads to."""

from __future__ import annotations

from typing import Any, cast

import pytest

from wardgate.postgres.transaction import TransactionOutcome, savepoint_name
from wardgate.reviews.model import ReviewInfo

REVIEW = cast(ReviewInfo, object())
RAN = ("ran", "")


def _play(steps: list[tuple[str, str]]) -> list[str]:
    """Feed ("ran", ""), ("tag", "COMMIT|statement"), ("error", ""), ("ready", "I"),
    ("end", "in_flight"|""); return the transaction field of each settled outcome."""
    t = TransactionOutcome()
    out: list[dict[str, Any]] = []
    for kind, arg in steps:
        if kind == "ran":
            t.ran(REVIEW, {"status": "ok"})
        elif kind == "tag":
            tag, _, text = arg.partition("|")
            out += [r for _, r in t.command(tag, text)]
        elif kind == "error":
            t.error()
        elif kind == "ready":
            out += [r for _, r in t.ready(arg.encode())]
        elif kind == "end":
            out += [r for _, r in t.ended(bool(arg))]
    return [r["transaction"] for r in out]


CASES = [
    ("autocommit", [RAN, ("ready", "I")], ["committed"]),
    ("commit", [RAN, ("ready", "T"), ("tag", "COMMIT|commit"), ("ready", "I")], ["committed"]),
    ("rollback", [RAN, ("ready", "T"), ("tag", "ROLLBACK|rollback")], ["rolled_back"]),
    ("open", [RAN, ("ready", "T")], []),
    ("failed-then-commit", [RAN, ("error", ""), ("ready", "E"), ("tag", "ROLLBACK|commit")],
     ["rolled_back"]),
    ("implicit-failure", [RAN, ("error", ""), ("ready", "I")], ["rolled_back"]),
    ("to-savepoint-before", [("tag", "SAVEPOINT|savepoint a"), RAN,
     ("tag", "ROLLBACK|rollback to savepoint a")], ["rolled_back"]),
    ("to-savepoint-after", [("tag", "SAVEPOINT|savepoint a"), RAN, ("tag", "SAVEPOINT|savepoint b"),
     ("tag", "ROLLBACK|ROLLBACK TO b"), ("tag", "COMMIT|commit")], ["committed"]),
    ("released-then-outer-undone", [("tag", "SAVEPOINT|savepoint a"), ("tag", "SAVEPOINT|savepoint b"),
     RAN, ("tag", "RELEASE|release b"), ("tag", "ROLLBACK|rollback to a")], ["rolled_back"]),
    ("released-kept", [("tag", "SAVEPOINT|savepoint a"), RAN, ("tag", "RELEASE|release savepoint a"),
     ("tag", "SAVEPOINT|savepoint c"), ("tag", "ROLLBACK|rollback to c"), ("ready", "T"),
     ("tag", "COMMIT|commit"), ("ready", "I")], ["committed"]),
    ("error-recovered", [RAN, ("tag", "SAVEPOINT|savepoint s"), ("error", ""),
     ("tag", "ROLLBACK|rollback to savepoint s"), ("tag", "COMMIT|commit")], ["committed"]),
    ("session-ends", [RAN, ("ready", "T"), ("end", "")], ["rolled_back"]),
    ("session-ends-commit-unanswered", [RAN, ("ready", "T"), ("end", "in_flight")], ["unknown"]),
    ("prepared", [RAN, ("tag", "PREPARE TRANSACTION|prepare transaction 'x'")], ["unknown"]),
    ("to-savepoint-after-behind-a-comment", [RAN, ("tag", "SAVEPOINT|savepoint b"),
     ("tag", "ROLLBACK|/* x */ ROLLBACK TO b"), ("tag", "COMMIT|commit")], ["committed"]),
    ("to-savepoint-before-comment-names-later", [("tag", "SAVEPOINT|savepoint a"), RAN,
     ("tag", "SAVEPOINT|savepoint b"), ("tag", "ROLLBACK|rollback to a -- b"),
     ("tag", "COMMIT|commit")], ["rolled_back"]),
    ("next-transaction-clean", [("error", ""), ("ready", "I"), RAN, ("ready", "I")], ["committed"]),
]  # fmt: skip


@pytest.mark.parametrize(("steps", "outcome"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_outcomes(steps: list[tuple[str, str]], outcome: list[str]) -> None:
    assert _play(steps) == outcome


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("SAVEPOINT a", "a"),
        ("savepoint Foo;", "foo"),
        ('ROLLBACK TO SAVEPOINT "My ""sp"""', 'My "sp"'),
        ("release b ;  ", "b"),
        # attack17b: as the server reads them, not the text's last word
        ("ROLLBACK TO SAVEPOINT a -- then b", "a"),
        ('ROLLBACK TO SAVEPOINT U&"\\0061"', "a"),
        ("SAVEPOINT É", "É"),
        ("/* first */ rollback to b", "b"),
    ],
)
def test_savepoint_names(text: str, name: str) -> None:
    assert savepoint_name(text) == name
