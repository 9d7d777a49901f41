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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from tests.integration.shell_oracle import (  # noqa: E402
    command_lines,
    judged_read,
    run_in_sandbox,
    sandbox_available,
)


def generate(wanted: int, start_seed: int) -> tuple[list[str], int]:
    """At least ``wanted`` distinct lines judged read, and how many lines were drawn."""
    reads: dict[str, None] = {}
    drawn = 0
    round_seed = start_seed
    while len(reads) < wanted:

        @seed(round_seed)
        @settings(
            max_examples=max(1000, 3 * (wanted - len(reads))),
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(command_lines())
        def collect(line: str) -> None:
            nonlocal drawn
            drawn += 1
            if judged_read(line):
                reads[line] = None

        collect()
        round_seed += 1
    return list(reads)[:wanted], drawn


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
    lines, drawn = generate(args.reads, args.seed)
    t1 = time.perf_counter()
    print(f"generated {drawn} lines, {len(lines)} distinct ones judged read ({t1 - t0:.0f} s)")
    failures = []
    programs: Counter[str] = Counter()
    batches = [lines[i : i + args.batch] for i in range(0, len(lines), args.batch)]
    done = 0
    with ThreadPoolExecutor(args.workers) as pool:  # each batch is its own sandbox
        for outcomes in pool.map(lambda b: run_in_sandbox(b, args.timeout), batches):
            for outcome in outcomes:
                programs.update(set(outcome.programs))
                if outcome.violations:
                    failures.append(outcome)
            done += len(outcomes)
            print(f"  ran {done}/{len(lines)}, violations so far: {len(failures)}", flush=True)
    t2 = time.perf_counter()
    print(f"ran {len(lines)} lines judged read in the sandbox in {t2 - t1:.0f} s")
    print(f"programs executed ({len(programs)}): " + ", ".join(sorted(programs)))
    print(f"violations: {len(failures)}")
    for outcome in failures[:50]:
        print(f"  {outcome.command!r}: {'; '.join(outcome.violations)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
