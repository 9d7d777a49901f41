#!/usr/bin/env python3
"""kill -9 of wardgate under pgbench -S, then a restart: are all statements recorded?

    .venv/bin/python bench/crash_records.py [--runs 5] [--clients 8] [--after 4]

Each run starts a wardgate (1 worker, SQLite store, as bench/pgbench_compare.py),
runs `pgbench -S` with 8 clients, sends SIGKILL to the gateway (its recorder process
too) after `--after` seconds, restarts it (which replays the journal) and compares the
transactions pgbench reports as processed with the action records of pgbench's
SELECTs in the store (`ok`, plus `interrupted` for those whose result the gateway never
saw). Prints one line per run; "lost" must be 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pgbench_compare as pc  # noqa: E402


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the gateway and its children (the recorder process) at once."""
    children = subprocess.run(
        ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
    ).stdout.split()
    for pid in [proc.pid, *map(int, children)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()


def one_run(clients: int, after: float) -> tuple[int, int, int]:
    with tempfile.TemporaryDirectory(prefix="wg-crash-") as tmpdir:
        tmp = Path(tmpdir)
        port = pc.free_port()
        gw, token = pc.start_wardgate(tmp, port, 1)
        env = {**os.environ, "PGPASSWORD": token, "PGSSLMODE": "disable"}
        bench = subprocess.Popen(
            ["pgbench", "-n", "-S", "-c", str(clients), "-j", "2", "-T", "30"]
            + ["-h", "127.0.0.1", "-p", str(port), "-U", "bench", pc.DB],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        time.sleep(after)
        _kill_tree(gw)
        out, _ = bench.communicate(timeout=60)
        match = re.search(r"number of transactions actually processed: (\d+)", out)
        processed = int(match.group(1)) if match else 0
        gw, _ = pc.start_wardgate(tmp, port, 1)  # replays the journal
        try:
            with contextlib.closing(sqlite3.connect(tmp / "store.db")) as db:
                rows = db.execute(
                    "select json_extract(payload, '$.status'), count(*) from audit_events "
                    "where type = 'action' and json_extract(payload, '$.text') like "
                    "'SELECT abalance FROM pgbench_accounts%' group by 1"
                ).fetchall()
        finally:
            gw.terminate()
            gw.wait(30)
        by_status = dict(rows)
        return processed, by_status.get("ok", 0), by_status.get("interrupted", 0)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--after", type=float, default=4.0, help="seconds before the kill")
    args = ap.parse_args()
    pc.DB = "wardgate_crash_bench"  # not pgbench_compare's database
    pc.psql(f"drop database if exists {pc.DB}")
    pc.psql(f"create database {pc.DB}")
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "1", "-h", "127.0.0.1", "-U", "postgres", pc.DB],
        check=True,
        capture_output=True,
    )
    for run in range(1, args.runs + 1):
        processed, ok, interrupted = one_run(args.clients, args.after)
        lost = max(0, processed - ok - interrupted)
        print(
            f"run {run}: pgbench processed {processed}, recorded ok {ok}, "
            f"interrupted {interrupted}, lost {lost}",
            flush=True,
        )


if __name__ == "__main__":
    main()
