"""Run the generated differential suite (tests/integration/test_pg_differential_gen.py)
with a large number of examples and print the figures docs/policy.md quotes.

    .venv/bin/python scripts/pg_differential.py --examples 2000

Needs the PostgreSQL server the integration tests use. Exits non-zero on a violation
(the server wrote), and pytest prints the shrunk sequence that did it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000, help="examples per principal")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        env = {
            **os.environ,
            "WARDGATE_DIFF_EXAMPLES": str(args.examples),
            "WARDGATE_DIFF_STATS": str(stats),
        }
        started = time.monotonic()
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "tests/integration/test_pg_differential_gen.py",
                "-q",
                "-p",
                "no:cacheprovider",
                "-o",
                "timeout=0",
            ],
            cwd=ROOT,
            env=env,
            check=False,
        )
        elapsed = time.monotonic() - started
        figures = json.loads(stats.read_text()) if stats.exists() else {}
    violations = 0 if result.returncode == 0 else 1
    print(
        f"examples run: {figures.get('examples', 0)} "
        f"({args.examples} per principal, ro and rv), violations: {violations}, "
        f"{elapsed:.0f} s"
    )
    print("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(figures.items())))
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
