#!/usr/bin/env python3
"""The gateway's CPU time per statement (user + system, of the `wardgate serve` process
and its children, from /proc), masked against unmasked, for bench/masking_pgbench.py's
workloads: wall-clock TPS moves with whatever else the machine runs, CPU time much less.

    .venv/bin/python bench/masking_cpu.py [--statements 2000] [--rules columns]
        [--rounds 2] [--rewrite] [--server]

Each round runs pgbench (-M extended, or --protocol simple) for ``--statements`` transactions as the unmasked
and as the masked principal, warm then cold, through one gateway. ``--rewrite`` also
times the column rewriter alone in this process (``rewrite()`` for a statement with new
literals each time, as pgbench -M simple sends, and a remembered one). ``--server``
also counts the CPU of the PostgreSQL backends serving the benchmark's database (read
from /proc every 20 ms while pgbench runs: the server must run on this machine; what a
backend spends after the last reading before it exits is missed), where the rewritten
statement computes the masked columns. Uses (and keeps, unless --drop)
masking_pgbench's million-row database.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import masking_pgbench as mb  # noqa: E402
from pgbench_compare import PG, free_port, psql  # noqa: E402


def process_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` and its live children."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return 0.0
    return total + sum(process_cpu(int(c)) for c in children)


def backend_pids() -> list[int]:
    """The backends connected to the benchmark's database."""
    out = subprocess.run(
        ["psql", "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], "-Atc",
         "select pid from pg_stat_activity where backend_type = 'client backend'"
         f" and datname = '{mb.DB}'"],
        capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return [int(pid) for pid in out]


def backends(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each of ``pids`` still running."""
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return found


def pgbench(
    port: int,
    user: str,
    password: str,
    transactions: int,
    script: Path,
    protocol: str,
    server: bool = False,
) -> float:
    """Runs pgbench; with ``server``, returns the CPU seconds the database's backends
    spent meanwhile (those there before from their reading then, new ones from 0)."""
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    cmd = [
        "pgbench", "-n", "-f", str(script), "-M", protocol, "-c", "1", "-t",
        str(transactions), "-h", "127.0.0.1", "-p", str(port), "-U", user, mb.DB,
    ]  # fmt: skip
    pids = backend_pids() if server else []
    before = backends(pids)
    last = dict(before)
    with subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as run:
        tick = 0
        while server and run.poll() is None:
            if tick % 15 == 0:  # the list of backends every 0.3 s, their CPU every 20 ms
                pids = sorted(set(pids) | set(backend_pids()))
            last.update(backends(pids))
            tick += 1
            time.sleep(0.02)
        stdout, stderr = run.communicate()
    if run.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{stdout}\n{stderr}")
    last.update(backends(pids))
    return sum(cpu - before.get(pid, 0.0) for pid, cpu in last.items())


def rewrite_costs() -> None:
    from wardgate.postgres.mask_catalog import MaskCatalogs
    from wardgate.postgres.mask_path import SessionPaths
    from wardgate.postgres.mask_rewrite import ColumnRule, MaskCatalog, Table, rewrite

    columns = ("id", "integer"), ("name", "text"), ("email", "text"), ("phone", "text")
    table = Table("public", "people", "r", (*columns, ("city", "text"), ("amount", "numeric")))
    catalog = MaskCatalog.of([table], functions_installed=True)
    rules = (
        ColumnRule("columns", "*.people.email", "partial"),
        ColumnRule("columns", "*.people.phone", "partial"),
    )
    paths = (("postgres", "public"),)
    select = "select id, name, email, phone, city, amount from people where id between {} and {}"
    catalogs = MaskCatalogs()
    catalogs._cache["bench"] = (float("inf"), catalog)
    session = SessionPaths('"$user", public', "postgres")
    cases = {
        "rewrite(), new literals (pgbench -M simple)": lambda i: rewrite(
            select.format(i, i + 99), catalog, rules, paths
        ),
        "rewrite(), no masked column, new literals": lambda i: rewrite(
            f"select id, name, city from people where id between {i} and {i + 99}",
            catalog,
            rules,
            paths,
        ),
        "the relay's call, remembered ($1, -M extended)": lambda i: catalogs.rewrite(
            "bench", select.format("$1", "$1 + 99"), rules, session
        ),
        "the relay's call, new literals (by its shape)": lambda i: catalogs.rewrite(
            "bench", select.format(i, i + 99), rules, session
        ),
    }
    for label, run in cases.items():
        n = 2000
        start = time.process_time()
        for i in range(n):
            run(i)
        print(f"{label:<48} {1e6 * (time.process_time() - start) / n:8.1f} µs CPU")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--statements", type=int, default=2000)
    ap.add_argument("--rules", choices=("both", "content", "columns"), default="columns")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rewrite", action="store_true")
    ap.add_argument("--protocol", choices=("extended", "simple"), default="extended")
    ap.add_argument("--drop", action="store_true", help="drop the database afterwards")
    ap.add_argument("--server", action="store_true", help="also PostgreSQL's backends' CPU")
    args = ap.parse_args()
    if args.rewrite:
        rewrite_costs()
    exists = subprocess.run(
        ["psql", "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], "-Atc",
         f"select 1 from pg_database where datname = '{mb.DB}'"],
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    if not exists:
        mb.prepare_database()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        proc, tokens = mb.start_wardgate(tmp, port, args.rules)
        try:
            print(f"\ngateway CPU per statement, rules: {args.rules}, -M {args.protocol}")
            for mode, text in (("warm", mb.SCRIPT), ("cold", mb.SCRIPT_COLD)):
                script = tmp / f"{mode}.sql"
                script.write_text(text)
                mb.check_masked(port, tokens["masked"], text)
                for _ in range(args.rounds):
                    for who in ("clear", "masked"):
                        pgbench(port, who, tokens[who], 50, script, args.protocol)  # warm up
                        before = process_cpu(proc.pid)
                        server = pgbench(
                            port, who, tokens[who], args.statements, script, args.protocol,
                            args.server,
                        )  # fmt: skip
                        used = process_cpu(proc.pid) - before
                        label = "unmasked" if who == "clear" else "masked"
                        line = f"{mode}  {label:<9} {1e6 * used / args.statements:8.0f} µs CPU"
                        if args.server:
                            line += f", PostgreSQL {1e6 * server / args.statements:6.0f} µs"
                        print(line)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if args.drop:
                psql(f"drop database if exists {mb.DB}")


if __name__ == "__main__":
    main()
