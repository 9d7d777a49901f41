"""The shell classifier's differential oracle, full count (docs/ssh.md, "The oracle").

    sudo .venv/bin/python bench/shell_oracle.py [--reads 10000] [--batch 500] [--workers 2]

Generates bash command lines from the oracle's grammar (Hypothesis), keeps the distinct
ones the classifier judges ``read``, runs them in the throwaway sandbox under strace
(tests/integration/shell_oracle.py) and reports every line that wrote something or ran
a program off the read allow-list. Needs root, unshare and strace. Exit status 1 when
any line did.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from tests.integration.shell_oracle import (  # noqa: E402
    command_lines,
    judged_read,
    run_in_sandbox,
    sandbox_available,
)


def generate_round(round_seed: int, examples: int, seen: set[str]) -> tuple[list[str], int]:
    """New distinct lines judged read from one Hypothesis run, and how many it drew."""
    reads: dict[str, None] = {}
    drawn = 0

    @seed(round_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(command_lines())
    def collect(line: str) -> None:
        nonlocal drawn
        drawn += 1
        if line not in seen and judged_read(line):
            reads[line] = None

    collect()
    return list(reads), drawn


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per line")
    parser.add_argument("--workers", type=int, default=2, help="sandboxes at a time")
    args = parser.parse_args()
    reason = sandbox_available()
    if reason is not None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    seen: set[str] = set()
    drawn = 0
    futures = []
    # Generation and sandbox runs overlap: each round's reads go to a sandbox at once.
    with ThreadPoolExecutor(args.workers) as pool:
        round_seed = args.seed
        while len(seen) < args.reads:
            new, count = generate_round(round_seed, 2 * args.batch, seen)
            new = new[: args.reads - len(seen)]
            seen.update(new)
            drawn += count
            round_seed += 1
            futures.append(pool.submit(run_in_sandbox, new, args.timeout))
            print(f"  generated {drawn} lines, {len(seen)} judged read", flush=True)
        failures = []
        programs: Counter[str] = Counter()
        ran = 0
        for future in as_completed(futures):
            for outcome in future.result():
                ran += 1
                programs.update(set(outcome.programs))
                if outcome.violations:
                    failures.append(outcome)
            print(f"  ran {ran}/{len(seen)}, violations so far: {len(failures)}", flush=True)
    elapsed = time.perf_counter() - t0
    print(f"generated {drawn} lines; {len(seen)} distinct ones judged read ran in the sandbox")
    print(f"elapsed {elapsed:.0f} s ({args.workers} sandboxes at a time)")
    print(f"programs executed ({len(programs)}): " + ", ".join(sorted(programs)))
    print(f"violations: {len(failures)}")
    for outcome in failures[:50]:
        print(f"  {outcome.command!r}: {'; '.join(outcome.violations)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
