#!/usr/bin/env python3
"""Connection setup: open and close N connections directly and through wardgate.

    .venv/bin/python bench/connect_bench.py [--count 1000] [--workers 1]

Each way, one psycopg connection at a time: connect, then close (nothing else is sent),
in interleaved rounds of 100.
Directly the server uses its own authentication (trust on the test server, as
configured); through the gateway the client authenticates with a wardgate token over
SCRAM-SHA-256, and the gateway dials the server, checks its settings, registers the
cancel key and records the session. Prints the mean and p50/p99 per connection each way
and the ratio gateway/direct. Everything runs on this machine over loopback: the local
PostgreSQL (127.0.0.1:5432, user postgres) and a wardgate this script starts (SQLite
store, as in the quick start).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgbench_compare import PG, free_port, psql, serve_with_token  # noqa: E402

DB = "wardgate_connect_bench"
ROUND = 100  # connections each way per round


def start_wardgate(tmp: Path, port: int, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "wardgate.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        store: sqlite:///{tmp / "store.db"}
        data_dir: {tmp / "data"}
        workers: {workers}
        listen: {{postgres: 127.0.0.1:{port}, api: null}}
        groups: {{bench: {{}}}}
        principals: {{bench: {{kind: user, groups: [bench]}}}}
        connections:
          {DB}:
            type: postgres
            upstream: {{host: {PG["host"]}, port: {PG["port"]}, database: {DB}, user: {PG["user"]}, tls: disable}}
            roles: {{bench: reader}}
        roles:
          reader: {{read: allow, write: block, ddl: block, admin: block}}
        """)
    )
    proc, token = serve_with_token(config, tmp, "bench", port)
    return proc, token


def process_cpu(root: int) -> dict[str, float]:
    """CPU seconds so far of ``root`` and each live descendant, keyed by role: the
    gateway worker(s), the recorder process, the journal's syncer."""
    import os

    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    roles: dict[str, float] = {}
    for pid, seconds in cpu.items():
        p = pid
        while p not in (0, 1) and p != root:
            p = parents.get(p, 0)
        if p != root:
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wardgate.audit.writer" in argv:
            role = "recorder"
        elif b"wardgate.audit.journal" in argv:
            role = "syncer"
        else:
            role = "worker"  # the serving process(es), and the supervisor if any
        roles[role] = roles.get(role, 0.0) + seconds
    return roles


def run(count: int, cpu: list[float], **kwargs: object) -> list[float]:
    """Connect and close ``count`` times; adds this process's CPU seconds (the client's
    side: libpq, SCRAM's PBKDF2) to ``cpu[0]``."""
    psycopg.connect(**kwargs).close()  # warm-up: caches, the first dial
    times = []
    started = time.process_time()
    for _ in range(count):
        start = time.perf_counter()
        psycopg.connect(**kwargs).close()
        times.append(time.perf_counter() - start)
    cpu[0] += time.process_time() - started
    return times


def median(times: list[float]) -> float:
    return statistics.median(times)


def report(name: str, times: list[float]) -> float:
    ms = sorted(t * 1000 for t in times)
    mean = statistics.fmean(ms)
    p50, p99 = ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:<10} mean {mean:6.2f} ms   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    return mean


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=1000, help="connections each way")
    ap.add_argument("--workers", type=int, default=1, help="wardgate worker processes")
    args = ap.parse_args()

    psql(f"drop database if exists {DB}")
    psql(f"create database {DB}")
    tmp = Path(tempfile.mkdtemp(prefix="wardgate-connect-bench-"))
    port = free_port()
    gate, token = start_wardgate(tmp, port, args.workers)
    direct_kwargs = {"host": PG["host"], "port": PG["port"], "user": PG["user"], "dbname": DB}
    gateway_kwargs = {
        "host": "127.0.0.1",
        "port": port,
        "user": "bench",
        "password": token,
        "dbname": DB,
        "sslmode": "disable",
    }
    direct: list[float] = []
    gateway: list[float] = []
    client_cpu = {"direct": [0.0], "wardgate": [0.0]}
    gateway_cpu: dict[str, float] = {}
    try:
        # Interleaved rounds, so that load from elsewhere on a shared machine falls on
        # both ways alike.
        rounds = max(1, args.count // ROUND)
        for i in range(rounds):
            n = args.count // rounds + (1 if i < args.count % rounds else 0)
            direct += run(n, client_cpu["direct"], **direct_kwargs)
            before = process_cpu(gate.pid)
            gateway += run(n, client_cpu["wardgate"], **gateway_kwargs)
            after = process_cpu(gate.pid)
            for role, seconds in after.items():
                gateway_cpu[role] = gateway_cpu.get(role, 0.0) + seconds - before.get(role, 0.0)
    finally:
        gate.terminate()
        gate.wait(15)
        psql(f"drop database if exists {DB}")
    d = report("direct", direct)
    g = report("wardgate", gateway)
    print(
        f"ratio wardgate/direct: {g / d:.2f} (mean), {median(gateway) / median(direct):.2f} (p50)"
    )
    # CPU is steadier than time on a shared machine: where the extra milliseconds go.
    n = len(gateway)
    print(
        f"CPU per connection: client direct {client_cpu['direct'][0] / len(direct) * 1e3:.2f} ms, "
        f"client via wardgate {client_cpu['wardgate'][0] / n * 1e3:.2f} ms, "
        f"wardgate (all its processes) {sum(gateway_cpu.values()) / n * 1e3:.2f} ms"
    )
    print(
        "  of which: "
        + ", ".join(f"{role} {s / n * 1e3:.2f} ms" for role, s in sorted(gateway_cpu.items()))
    )


if __name__ == "__main__":
    main()
