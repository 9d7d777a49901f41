#!/usr/bin/env python3
"""Where wardgate's CPU goes per pgbench transaction, process by process: each worker,
its recorder process (`wardgate.audit.writer`) and its journal's sync process
(`wardgate.audit.journal`), from /proc before and after one pgbench run.

    .venv/bin/python bench/process_cpu.py [--mode prepared] [--clients 8]
        [--duration 8] [--workers 2]

Prints user and system µs per transaction (of all transactions, whichever worker ran
them) and involuntary context switches per transaction (a worker preempted by
pgbench or PostgreSQL on a machine whose cores they share). Uses pgbench_compare's
database, configuration and token login; the database is dropped after.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import pgbench_compare as pc  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _processes(root: int) -> dict[int, tuple[str, float, float, int]]:
    """pid -> (command, user s, system s, involuntary switches) of root and descendants."""
    out: dict[int, tuple[str, float, float, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        switches = next(
            int(line.split()[1])
            for line in status.splitlines()
            if line.startswith("nonvoluntary_ctxt_switches")
        )
        out[pid] = (command, int(fields[11]) / _TICK, int(fields[12]) / _TICK, switches)
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
        todo += [int(p) for p in children.stdout.split()]
    return out


def _role(command: str) -> str:
    if "wardgate.audit.writer" in command:
        return "recorder process"
    if "wardgate.audit.journal" in command:
        return "journal sync process"
    return "worker" if " serve " in command else command[-40:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("simple", "prepared"), default="prepared")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    pc.psql(f"drop database if exists {pc.DB}")
    pc.psql(f"create database {pc.DB}")
    try:
        subprocess.run(
            [
                "pgbench",
                "-i",
                "-q",
                "-s",
                "10",
                "-h",
                str(pc.PG["host"]),
                "-U",
                str(pc.PG["user"]),
                pc.DB,
            ],
            check=True,
            capture_output=True,
        )
        tmp = Path(tempfile.mkdtemp(prefix="wardgate-process-cpu-"))
        port = pc.free_port()
        gate, token = pc.start_wardgate(tmp, port, args.workers)
        try:
            pc.pgbench(port, "bench", token, args.mode, args.clients, 2)  # every process up
            before = _processes(gate.pid)
            tps, _ = pc.pgbench(port, "bench", token, args.mode, args.clients, args.duration)
            after = _processes(gate.pid)
        finally:
            gate.terminate()
            gate.wait(10)
    finally:
        pc.psql(f"drop database if exists {pc.DB}")
    count = tps * args.duration
    print(
        f"pgbench -S -M {args.mode} -c {args.clients}, {args.duration}s, "
        f"{args.workers} workers: {tps:.0f} TPS"
    )
    print(f"{'process':<22} {'user µs':>8} {'sys µs':>8} {'preempted':>10}  (per transaction)")
    total = 0.0
    for pid, (command, user, system, switches) in sorted(after.items()):
        if pid not in before:
            continue
        _, user0, system0, switches0 = before[pid]
        u, s = (user - user0) / count * 1e6, (system - system0) / count * 1e6
        if u + s == 0:
            continue  # the supervisor
        total += u + s
        print(f"{_role(command):<22} {u:8.1f} {s:8.1f} {(switches - switches0) / count:10.2f}")
    print(f"{'all':<22} {total:17.1f}")


if __name__ == "__main__":
    main()
