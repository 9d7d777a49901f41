#!/usr/bin/env python3
"""Gateway CPU per pgbench transaction, for several builds alternated.

    git archive <commit> src | tar -x -C /tmp/wg-<commit>
    .venv/bin/python bench/cpu_ab.py old=/tmp/wg-<commit>/src this= [--rounds 3]

Each build (NAME=SRC_DIR, run through PYTHONPATH; an empty SRC_DIR is this checkout)
serves `pgbench -S` (1 worker, SQLite store, the config of bench/pgbench_compare.py)
for --duration seconds, round after round. Printed per build: the CPU time the worker
process used per transaction, and the whole gateway's (worker, journal sync process,
recorder process), and the journal sync process alone, as minimum and median over the
rounds, with the median TPS.

CPU time per transaction, unlike TPS, hardly moves with other load on the machine
(the minimum least of all): it finds which commit made the gateway's per-statement
work grow on a machine too busy for a throughput comparison.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """``root`` and every process below it."""
    found, todo = [root], [root]
    while todo:
        out = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True)
        kids = [int(p) for p in out.stdout.split()]
        found += kids
        todo += kids
    return found


def _cpu(pid: int) -> float:
    """User + system CPU seconds of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _is_syncer(pid: int) -> bool:
    try:
        return b"wardgate.audit.journal" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def one(
    src: str | None, mode: str, clients: int, duration: int
) -> tuple[float, float, float, float]:
    """(worker µs/txn, whole gateway µs/txn, journal syncer µs/txn, TPS) of one build."""
    env = dict(os.environ)
    if src:
        os.environ["PYTHONPATH"] = src
    else:
        os.environ.pop("PYTHONPATH", None)
    tmp = Path(tempfile.mkdtemp(prefix="wg-cpu-ab-"))
    try:
        port = pc.free_port()
        proc, token = pc.start_wardgate(tmp, port, 1)
        try:
            pc.pgbench(port, "bench", token, mode, clients, 1)  # warm; starts the recorder
            pids = _tree(proc.pid)
            before = {p: _cpu(p) for p in pids}
            tps, _ = pc.pgbench(port, "bench", token, mode, clients, duration)
            count = tps * duration
            worker = 1e6 * (_cpu(proc.pid) - before[proc.pid]) / count
            gateway = 1e6 * sum(_cpu(p) - before[p] for p in pids) / count
            syncer = 1e6 * sum(_cpu(p) - before[p] for p in pids if _is_syncer(p)) / count
            return worker, gateway, syncer, tps
        finally:
            proc.terminate()
            proc.wait(30)
    finally:
        os.environ.clear()
        os.environ.update(env)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("builds", nargs="+", help="NAME=SRC_DIR (empty: this checkout)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=6)
    ap.add_argument("--mode", default="simple")
    ap.add_argument("--clients", type=int, default=1)
    args = ap.parse_args()
    builds = dict(b.partition("=")[::2] for b in args.builds)
    pc.DB = "wardgate_cpu_ab"
    pc.psql(f"drop database if exists {pc.DB}")
    pc.psql(f"create database {pc.DB}")
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-U", "postgres", pc.DB],
        check=True,
        capture_output=True,
    )
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in builds}
    try:
        for _ in range(args.rounds):
            for name, src in builds.items():
                runs[name].append(one(src or None, args.mode, args.clients, args.duration))
    finally:
        pc.psql(f"drop database if exists {pc.DB}")
    print(f"pgbench -S -M {args.mode} -c {args.clients}, {args.rounds} rounds of {args.duration} s")
    for name, got in runs.items():
        worker, gateway, syncer, tps = (sorted(x) for x in zip(*got, strict=True))
        print(
            f"{name:12} worker µs/txn min {worker[0]:6.1f} median {statistics.median(worker):6.1f}"
            f" | gateway µs/txn min {gateway[0]:6.1f} median {statistics.median(gateway):6.1f}"
            f" | journal syncer µs/txn min {syncer[0]:5.1f} median {statistics.median(syncer):5.1f}"
            f" | TPS median {statistics.median(tps):6.0f}"
        )


if __name__ == "__main__":
    main()
