#!/usr/bin/env python3
"""pgbench -S through two builds of wardgate, alternated: what does a change cost?

    git archive <base-commit> src | tar -x -C /tmp/wg-base
    .venv/bin/python bench/journal_ab.py --base /tmp/wg-base/src [--rounds 5] [--duration 5]
    .venv/bin/python bench/journal_ab.py --without-journal [--rounds 5] [--duration 5]
    .venv/bin/python bench/journal_ab.py --base-sync-ms 5 [--rounds 5] [--duration 5]

Runs the build at --base (through PYTHONPATH) and this checkout in turn, `--rounds`
times, `pgbench -S` in simple and prepared mode with 8 clients (1 worker, SQLite store,
as bench/pgbench_compare.py). Alternating keeps both builds under the same background
load, which on a shared machine moves more than the change does; the median of the
rounds is printed. Written to measure the audit journal (issue 21).

``--without-journal``: the base is this checkout's own src/, copied, with the one line
that opens the worker's journal (serve.py) replaced by ``journal = None``: the same
build with and without the journal, nothing else different. There is deliberately no
setting for that: a gateway without its journal loses records on a crash.

``--base-sync-ms MS``: the base is this checkout with ``audit.journal_sync_ms: MS``
(how often the journal is fdatasynced), this run the default (1 ms).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The lines of serve.py that open the worker's journal (up to `journal.open()`).
_JOURNAL_OPEN = re.compile(r"\n    journal = Journal\(.*?\n    journal\.open\(\)\n", re.S)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402


def one(base: str | None, mode: str, clients: int, duration: int, extra: str = "") -> float:
    saved = os.environ.get("PYTHONPATH")
    if base is not None:
        os.environ["PYTHONPATH"] = base
    try:
        with tempfile.TemporaryDirectory(prefix="wg-ab-") as tmp:
            port = pc.free_port()
            proc, token = pc.start_wardgate(Path(tmp), port, 1, extra=extra)
            try:
                tps, _ = pc.pgbench(port, "bench", token, mode, clients, duration)
            finally:
                proc.terminate()
                proc.wait(30)
            return tps
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def without_journal() -> str:
    """A copy of this checkout's src/ whose workers run without the audit journal."""
    base = Path(tempfile.mkdtemp(prefix="wg-nojournal-")) / "src"
    shutil.copytree(ROOT / "src", base, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    serve = base / "wardgate" / "serve.py"
    text = serve.read_text()
    text, found = _JOURNAL_OPEN.subn("\n    journal = None\n", text)
    if found != 1:
        raise SystemExit("serve.py no longer opens the journal as this script expects; update it")
    serve.write_text(text)
    return str(base)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--base", help="src/ directory of the base build")
    ap.add_argument(
        "--without-journal",
        action="store_true",
        help="base: this checkout with the journal left out (see above)",
    )
    ap.add_argument(
        "--base-sync-ms",
        type=float,
        help="base: this checkout with audit.journal_sync_ms set to this (this run: 1 ms)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--modes", default="simple,prepared")
    args = ap.parse_args()
    base_extra = ""
    if args.without_journal:
        args.base = without_journal()
    elif args.base_sync_ms is not None:
        base_extra = f"audit: {{journal_sync_ms: {args.base_sync_ms}}}\n"
    elif args.base is None:
        ap.error("give --base, --without-journal or --base-sync-ms")
    pc.DB = "wardgate_ab_bench"
    pc.psql(f"drop database if exists {pc.DB}")
    pc.psql(f"create database {pc.DB}")
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-U", "postgres", pc.DB],
        check=True,
        capture_output=True,
    )
    for mode in args.modes.split(","):
        base_tps: list[float] = []
        this_tps: list[float] = []
        for _ in range(args.rounds):
            base_tps.append(one(args.base, mode, args.clients, args.duration, base_extra))
            this_tps.append(one(None, mode, args.clients, args.duration))
        b, t = statistics.median(base_tps), statistics.median(this_tps)
        ratios = [x / y for x, y in zip(this_tps, base_tps, strict=True)]
        print(
            f"{mode:8} {args.clients} clients: base {b:8.0f} tps, this {t:8.0f} tps, "
            f"this/base {t / b:.3f} (median of round ratios {statistics.median(ratios):.3f}; "
            f"base {[round(x) for x in base_tps]}, this {[round(x) for x in this_tps]})",
            flush=True,
        )


if __name__ == "__main__":
    main()
