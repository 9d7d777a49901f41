#!/usr/bin/env python3
"""What the PostgreSQL frontend decoder costs per message, an older build's against this one's.

    PYTHONPATH=src .venv/bin/python bench/decoder_cost.py [--old REV | --old-file PATH]

Feeds pgbench-like traffic, one read per transaction as a client sends it, to a
`FrontendDecoder` and drains it: ``prepared`` is pgbench -M prepared (Bind with one
text parameter, Describe, Execute, Sync), ``extended`` the same with an unnamed
Parse in front (drivers that do not prepare), ``simple`` one Query. The old decoder
is ``src/wardgate/postgres/codec/frontend.py`` as of REV (default: the commit before
the direct parsers), loaded beside this tree's codec. Prints the CPU time per message
in microseconds (the best of --repeat rounds, the builds alternated; CPU time, not
wall time, as the machine is shared) and Python calls per message. No network, no
database.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from types import FrameType, ModuleType

from wardgate.postgres.codec import build
from wardgate.postgres.codec.frontend import FrontendDecoder

FRONTEND = "src/wardgate/postgres/codec/frontend.py"
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
WORKLOADS = {
    "prepared": [
        build.bind("", "P0_1", ["48213"], result_formats=[0]),
        build.describe("P", ""),
        build.execute(""),
        build.sync(),
    ],
    "extended": [
        build.parse("", SQL),
        build.bind("", "", ["48213"], result_formats=[0]),
        build.describe("P", ""),
        build.execute(""),
        build.sync(),
    ],
    "simple": [build.query(SQL.replace("$1", "48213"))],
}


def load_old(rev: str | None, path: str | None) -> ModuleType:
    if path is None:
        root = Path(__file__).resolve().parent.parent
        text = subprocess.run(
            ["git", "show", f"{rev}:{FRONTEND}"], cwd=root, check=True, capture_output=True
        ).stdout
        handle = tempfile.NamedTemporaryFile("wb", suffix=".py", delete=False)
        handle.write(text)
        handle.close()
        path = handle.name
    spec = importlib.util.spec_from_file_location("frontend_old", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def drain_loop(decoder_class: type, reads: list[bytes], rounds: int) -> Callable[[], None]:
    def run() -> None:
        dec = decoder_class()
        dec.end_startup()
        for _ in range(rounds):
            for data in reads:
                dec.feed(data)
                while dec.next_message() is not None:
                    pass

    return run


def python_calls(run: Callable[[], None]) -> int:
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(count)
    try:
        run()
    finally:
        sys.setprofile(None)
    return calls - 1  # run itself


def decoded(decoder_class: type, data: bytes) -> list[object]:
    dec = decoder_class()
    dec.end_startup()
    dec.feed(data)
    out = []
    while (item := dec.next_message()) is not None:
        out.append(item)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", default="c18caf3", help="git revision of the old decoder")
    parser.add_argument("--old-file", help="path of an old frontend.py instead of --old")
    parser.add_argument("--transactions", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    old = load_old(args.old, args.old_file).FrontendDecoder
    builds = {"old": old, "new": FrontendDecoder}
    print(f"{'workload':<10} {'build':<5} {'µs/message':>11} {'calls/message':>14}")
    for name, messages in WORKLOADS.items():
        read = b"".join(messages)
        if decoded(old, read) != decoded(FrontendDecoder, read):
            raise SystemExit(f"{name}: the decoders disagree")
        count = args.transactions * len(messages)
        best = dict.fromkeys(builds, float("inf"))
        for _ in range(args.repeat):
            for label, cls in builds.items():
                run = drain_loop(cls, [read], args.transactions)
                seconds = timeit.timeit(run, number=1, timer=time.process_time)
                best[label] = min(best[label], seconds / count * 1e6)
        for label, cls in builds.items():
            calls = python_calls(drain_loop(cls, [read], 100)) / (100 * len(messages))
            print(f"{name:<10} {label:<5} {best[label]:>11.3f} {calls:>14.1f}")
        print(f"{name:<10} new ÷ old {best['new'] / best['old']:.2f}")


if __name__ == "__main__":
    main()
