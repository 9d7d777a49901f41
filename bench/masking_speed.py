#!/usr/bin/env python3
"""How many cells per second the masking engine gets through, per detector.

    .venv/bin/python bench/masking_speed.py [--seconds 0.3]

Cells are realistic database values. "clean" cells hold nothing sensitive
(names, cities, dates, timestamps, UUIDs, amounts, statuses, short notes,
order numbers, versions, JSON, log lines); "dirty" cells each hold one value
of the entity being measured, alone or inside a short sentence.

For each detector: ``find(cell, {entity})`` on the clean cells and on that
entity's dirty cells. Then ``find`` with every entity, and ``Masker.mask_text``
and ``mask_bytes`` per strategy on clean and on mixed dirty cells. Pure CPU,
one core; figures move by +-20 % between runs on a shared VM.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from wardgate.masking import ENTITIES, Masker, Strategy, find  # noqa: E402

CLEAN = [
    "Alice Johnson",
    "Düsseldorf",
    "2024-01-15",
    "2024-01-15T10:30:00.123456Z",
    "550e8400-e29b-41d4-a716-446655440000",
    "1,234.56",
    "42",
    "shipped",
    "Customer asked to deliver after 5pm, ring twice",
    "ORD-2024-004512",
    "v10.0.19045",
    "1.2.3-beta.4",
    '{"sku": "A-1001", "qty": 3, "price": 19.99}',
    "2024-01-15 10:30:01 INFO worker started pid=4211 queue=default",
    "Invoice 2024/00123 paid on 15.01.2024",
    "The quick brown fox jumps over the lazy dog near the old river bank again",
    "0.000123",
    "Flat 4, 221B Baker Street, London NW1 6XE",
]

DIRTY = {
    "email": ["jane.doe@example.com", "Write to Jane at jane.doe@example.co.uk today"],
    "credit_card": ["4111 1111 1111 1111", "Paid with card 5500-0000-0000-0004 yesterday"],
    "iban": ["DE89370400440532013000", "Refund to GB82 WEST 1234 5698 7654 32 please"],
    "phone": ["+44 20 7946 0958", "Call me at (415) 555-2671 after six"],
    "ssn": ["123-45-6789", "SSN on file: 123-45-6789"],
    "national_id": ["AB123456C", "DNI 12345678Z, CF RSSMRA85T10A562S"],
    "ipv4": ["203.0.113.7", "login from 198.51.100.23 failed"],
    "ipv6": ["2001:4860:4860::8888", "client [2a00:1450:4001:82b::200e]:443 connected"],
    "jwt": [
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
        "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ24",
    ],
    "secret": [
        "AKIAIOSFODNN7EXAMPLE",
        "host=db user=app password=s3cr3t-Pa55 dbname=shop",
        "postgres://app:hunter2@db.internal:5432/shop",
    ],
}


def rate(fn: Callable[[str], object], cells: list[str], seconds: float) -> float:
    """Cells per second, the best of three timed rounds."""
    best = 0.0
    for _ in range(3):
        count = 0
        start = time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for cell in cells:
                fn(cell)
            count += len(cells)
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def fmt(cells_per_second: float) -> str:
    return f"{cells_per_second:>12,.0f}  ({1e6 / cells_per_second:6.1f} us/cell)"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=0.3, help="time per measurement")
    args = parser.parse_args()
    seconds = args.seconds

    print(f"{'detector':<14}{'clean cells/s':>34}{'dirty cells/s':>36}")
    for entity in sorted(ENTITIES):
        only = frozenset({entity})
        dirty = DIRTY[entity]
        assert all(any(f.entity == entity for f in find(c, only)) for c in dirty), entity
        clean = rate(partial(find, entities=only), CLEAN, seconds)
        hot = rate(partial(find, entities=only), dirty, seconds)
        print(f"{entity:<14}{fmt(clean):>34}{fmt(hot):>36}")

    mixed = [cell for cells in DIRTY.values() for cell in cells]
    print(
        f"{'all entities':<14}{fmt(rate(find, CLEAN, seconds)):>34}{fmt(rate(find, mixed, seconds)):>36}"
    )

    print()
    print(f"{'Masker':<22}{'clean cells/s':>34}{'dirty cells/s':>36}")
    clean_bytes = [c.encode() for c in CLEAN]
    mixed_bytes = [c.encode() for c in mixed]
    for strategy in Strategy:
        masker = Masker(b"bench-key-0123456789abcdef", strategy)
        text_clean = rate(masker.mask_text, CLEAN, seconds)
        text_dirty = rate(masker.mask_text, mixed, seconds)
        print(f"{'mask_text ' + strategy.value:<22}{fmt(text_clean):>34}{fmt(text_dirty):>36}")
        bytes_clean = rate(masker.mask_bytes, clean_bytes, seconds)  # type: ignore[arg-type]
        bytes_dirty = rate(masker.mask_bytes, mixed_bytes, seconds)  # type: ignore[arg-type]
        print(f"{'mask_bytes ' + strategy.value:<22}{fmt(bytes_clean):>34}{fmt(bytes_dirty):>36}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
