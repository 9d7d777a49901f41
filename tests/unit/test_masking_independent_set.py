"""The detectors against the independent labelled set (bench/masking_labelled.py, written
from the docs without reading the detectors), on a small bounded sample, and the recall
gaps that set was built to probe."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from wardgate.masking import find

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from masking_eval import PRECISION_TARGET, RECALL_TARGET, score  # noqa: E402
from masking_labelled import generate  # noqa: E402


@pytest.mark.parametrize("seed", [7, 23])
def test_the_independent_set_meets_the_targets(seed: int) -> None:
    s = score(generate(seed=seed, count=1500))
    assert s.recall() >= RECALL_TARGET, s.misses[:10]
    assert s.precision() >= PRECISION_TARGET, s.false_alarms[:10]


def _spans(text: str, entity: str) -> list[str]:
    return [text[f.start : f.end] for f in find(text) if f.entity == entity]


@pytest.mark.parametrize(
    "text, number",
    [
        ("call +44(0)20 7123 4567 today", "+44(0)20 7123 4567"),
        ("+44 (0)161 496 0123", "+44 (0)161 496 0123"),
        ("+49 (0)30 22345678", "+49 (0)30 22345678"),
        ("+1 415 823 4567 x3679", "+1 415 823 4567 x3679"),
        ("(415) 823-4567 ext. 12", "(415) 823-4567 ext. 12"),
        ("312-553-2522 Ext. 6336", "312-553-2522 Ext. 6336"),
        ("Phone: 91 847 63 55", "91 847 63 55"),  # Spanish landline, no +34
        ("Telefon: 335-474-0384", "335-474-0384"),  # Italian mobile in a US shape
        ("Contact number: 2066002819", "2066002819"),
        ("req=883203 (612) 743-0039 status=200", "(612) 743-0039"),
        ("34041,Li,+41 31.251.14.68,2015-11-04", "+41 31.251.14.68"),  # not an IPv4
    ],
)
def test_phone_shapes_from_the_issue(text: str, number: str) -> None:
    assert _spans(text, "phone") == [number]


@pytest.mark.parametrize("password", ["a#b^c%d)e@f", "pa#ss", "x^y", "50%off", "p)w", "me@home!"])
def test_url_passwords_with_special_characters(password: str) -> None:
    text = f"dsn=postgresql://app:{password}@db.example.com:5432/orders"
    found = find(text)
    assert [text[f.start : f.end] for f in found if f.entity == "secret"] == [password]
    assert not [f for f in found if f.entity == "email"]  # the tail is not an email


def test_cards_in_csv_rows_and_not_inside_failed_ibans() -> None:
    assert _spans("12286,Liam,4111 1111 1111 1111,06/24/1991", "credit_card") == [
        "4111 1111 1111 1111"
    ]
    assert _spans("amount 12,34", "credit_card") == []
    assert _spans("LT03 2283 5441 4360 6367", "credit_card") == []


def test_secret_key_assignments() -> None:
    text = 'secret_key: DuKSUKp6tkzvQSU6PDGYDh0OVvESetFl\n"signing_key": "abc123def456ghi"'
    assert _spans(text, "secret") == ["DuKSUKp6tkzvQSU6PDGYDh0OVvESetFl", "abc123def456ghi"]
