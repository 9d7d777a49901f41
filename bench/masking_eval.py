"""Recall and precision of wardgate's content detectors on an independent labelled set.

    .venv/bin/python bench/masking_eval.py [--count 6000] [--seed 7] [--show-errors 20]

The set comes from bench/masking_labelled.py, a generator written from the entity
definitions in docs/masking.md and public format rules without reading the detectors'
code or tests (the older set, written with the detectors, is bench/masking_eval_own.py).

Scoring, per entity: a finding is right when it overlaps a labelled value of the same
entity (precision); a labelled value is found when a finding of its entity overlaps it
(recall). "masked" counts labelled values that some finding covers whatever entity it
named, which is what matters for a leak. Exits 1 when overall recall < 0.99 or
precision < 0.98.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from masking_labelled import ENTITIES, Sample, generate  # noqa: E402

from wardgate.masking import find  # noqa: E402

RECALL_TARGET = 0.99
PRECISION_TARGET = 0.98


@dataclass
class Score:
    labelled: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    masked: Counter[str] = field(default_factory=Counter)
    predicted: Counter[str] = field(default_factory=Counter)
    right: Counter[str] = field(default_factory=Counter)
    misses: list[tuple[str, str, str]] = field(default_factory=list)  # kind, text, value
    false_alarms: list[tuple[str, str, str]] = field(default_factory=list)  # kind, text, found

    def precision(self, entity: str | None = None) -> float:
        p = sum(self.predicted.values()) if entity is None else self.predicted[entity]
        r = sum(self.right.values()) if entity is None else self.right[entity]
        return r / p if p else 1.0

    def recall(self, entity: str | None = None) -> float:
        n = sum(self.labelled.values()) if entity is None else self.labelled[entity]
        f = sum(self.found.values()) if entity is None else self.found[entity]
        return f / n if n else 1.0


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def score(samples: list[Sample]) -> Score:
    s = Score()
    for sample in samples:
        findings = [(f.start, f.end, f.entity) for f in find(sample.text)]
        for start, end, entity in sample.gold:
            s.labelled[entity] += 1
            if any(e == entity and _overlaps((a, b), (start, end)) for a, b, e in findings):
                s.found[entity] += 1
            else:
                s.misses.append((sample.kind, sample.text, sample.text[start:end]))
            if any(_overlaps((a, b), (start, end)) for a, b, _ in findings):
                s.masked[entity] += 1
        for a, b, entity in findings:
            s.predicted[entity] += 1
            if any(e == entity and _overlaps((a, b), (g0, g1)) for g0, g1, e in sample.gold):
                s.right[entity] += 1
            else:
                s.false_alarms.append((sample.kind, sample.text, f"{entity}: {sample.text[a:b]}"))
    return s


def _metadata_note(kind: str, value: str) -> str:
    """Diagnostics only (never the label): whether phonenumbers' metadata knows the
    number, since a number the metadata calls invalid is one no validating detector finds."""
    if not kind.startswith("phone"):
        return ""
    import phonenumbers

    region = kind.split("-")[1] if kind.count("-") >= 1 else None
    try:
        number = phonenumbers.parse(value, region if region and len(region) == 2 else None)
    except phonenumbers.NumberParseException:
        return "  (phonenumbers: unparsable)"
    return "" if phonenumbers.is_valid_number(number) else "  (phonenumbers: invalid)"


def report(s: Score, samples: list[Sample], show_errors: int) -> None:
    negatives = sum(1 for x in samples if not x.gold)
    print(f"{len(samples)} samples, {negatives} without any sensitive value")
    print(
        f"{'entity':<12} {'labelled':>8} {'predicted':>9} {'precision':>9} {'recall':>7} {'masked':>7}"
    )
    for entity in sorted(set(ENTITIES) | set(s.predicted)):
        n = s.labelled[entity]
        masked = s.masked[entity] / n if n else 1.0
        print(
            f"{entity:<12} {n:>8} {s.predicted[entity]:>9} {s.precision(entity):>9.4f}"
            f" {s.recall(entity):>7.4f} {masked:>7.4f}"
        )
    total = sum(s.labelled.values())
    masked_all = sum(s.masked.values()) / total if total else 1.0
    print(
        f"{'overall':<12} {total:>8} {sum(s.predicted.values()):>9} {s.precision():>9.4f}"
        f" {s.recall():>7.4f} {masked_all:>7.4f}"
    )
    by_kind = Counter(kind for kind, _, _ in s.misses)
    if by_kind:
        print("misses by generator:", ", ".join(f"{k} {n}" for k, n in by_kind.most_common()))
    for kind, text, value in s.misses[:show_errors]:
        print(f"  MISS [{kind}] {value!r} in {text!r}{_metadata_note(kind, value)}")
    for kind, text, found in s.false_alarms[:show_errors]:
        print(f"  FALSE [{kind}] {found!r} in {text!r}")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--show-errors", type=int, default=20)
    args = ap.parse_args()
    samples = generate(seed=args.seed, count=args.count)
    s = score(samples)
    report(s, samples, args.show_errors)
    ok = s.recall() >= RECALL_TARGET and s.precision() >= PRECISION_TARGET
    print(
        f"targets recall >= {RECALL_TARGET}, precision >= {PRECISION_TARGET}: {'met' if ok else 'NOT met'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
