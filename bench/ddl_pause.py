#!/usr/bin/env python3
"""How long DDL through the gateway pauses the other sessions on its database.

    .venv/bin/python bench/ddl_pause.py [NAME=SRC_DIR ...] [--rounds 3] [--statements 20]

After DDL through the gateway, the database's other sessions wait until every worker's
catalogue watch has read the catalogue again (docs/operations.md, "DDL and migrations
through the gateway"). For each build (NAME=SRC_DIR, run through PYTHONPATH; an empty
SRC_DIR is this checkout; default: this checkout only), the script starts a gateway on
a fresh target database (tests/integration/pg_diff.py, 1 worker), then `--statements`
times: `mig` runs `CREATE TABLE`, and `rv`, on another session, runs `select 1` right
after its answer. Builds alternate, `--rounds` rounds each. Prints, per build, the
median and maximum milliseconds of the DDL statement and of the `select 1` after it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration.attack14 import attack_config  # noqa: E402
from tests.integration.conftest import make_gateway  # noqa: E402
from tests.integration.pg_diff import Target, Wire, make_target  # noqa: E402

from wardgate.postgres.codec import build  # noqa: E402


def one_round(
    target: Target, src: str, statements: int, tag: str
) -> tuple[list[float], list[float]]:
    if src:
        os.environ["PYTHONPATH"] = src
    else:
        os.environ.pop("PYTHONPATH", None)
    gw = make_gateway(Path(tempfile.mkdtemp(prefix="ddl-pause-")), attack_config(target))
    gw.start()
    ddl: list[float] = []
    after: list[float] = []
    try:
        mig, rv = Wire(gw, "mig"), Wire(gw, "rv")
        for _ in range(100):  # the first look at start
            if not rv.run(build.query("select 1"), ready=1).errors():
                break
            time.sleep(0.1)
        for i in range(statements):
            began = time.perf_counter()
            made = mig.run(build.query(f"create table public.pause_{tag}_{i} (i int)"), ready=1)
            answered = time.perf_counter()
            assert not made.errors(), made.text()
            reply = rv.run(build.query("select 1"), ready=1)
            done = time.perf_counter()
            assert not reply.errors(), reply.text()
            ddl.append((answered - began) * 1000)
            after.append((done - answered) * 1000)
        mig.close()
        rv.close()
    finally:
        gw.stop()
    return ddl, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("builds", nargs="*", default=["this="], help="NAME=SRC_DIR")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--statements", type=int, default=20)
    args = parser.parse_args()
    builds = [b.partition("=")[::2] for b in args.builds]
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in builds}
    targets = make_target()
    target = next(targets)
    try:
        for r in range(args.rounds):
            for name, src in builds:
                ddl, after = one_round(target, src, args.statements, f"{name}{r}")
                results[name][0].extend(ddl)
                results[name][1].extend(after)
                print(f"round {r + 1} {name}: next select median {statistics.median(after):.1f} ms")
    finally:
        next(targets, None)
    for name, (ddl, after) in results.items():
        print(
            f"{name}: DDL {statistics.median(ddl):.1f} ms median, {max(ddl):.1f} max; "
            f"the other session's next select {statistics.median(after):.1f} ms median, "
            f"{max(after):.1f} max ({len(after)} statements)"
        )


if __name__ == "__main__":
    main()
