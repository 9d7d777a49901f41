#!/usr/bin/env python3
"""The cost of masking: pgbench fetching a 100-row, 6-column result through wardgate,
once as a principal whose rows are masked (2 of the 6 columns hold emails and phone
numbers) and once as one whose rows are not, in one run, plus PostgreSQL directly.

    .venv/bin/python bench/masking_pgbench.py [--duration 10] [--clients 1,4]

Prints TPS per target and the ratio masked / unmasked (target: >= 0.5).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgbench_compare import PG, WARDGATE, free_port, psql, wait_port  # noqa: E402

DB = "wardgate_mask_bench"
SCRIPT = "select id, name, email, phone, city, amount from people;\n"
# Every query returns rows never seen before (a fresh email per row): no memory helps.
SCRIPT_COLD = (
    "\\set r random(1, 1000000000)\n"
    "select id, name, 'p' || id || '.' || :r || '@example.com' as email, phone, city, amount"
    " from people;\n"
)


def prepare_database() -> None:
    psql(f"drop database if exists {DB}")
    psql(f"create database {DB}")
    psql(
        "create table people (id int primary key, name text, email text, phone text,"
        " city text, amount numeric(10,2));"
        " insert into people select i, 'Person ' || i, 'person' || i || '@example.com',"
        " '+1 202 555 0' || lpad((i % 1000)::text, 3, '0'), 'City ' || (i % 17), i * 1.25"
        " from generate_series(1, 100) i",
        db=DB,
    )


def start_wardgate(tmp: Path, port: int) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    config = tmp / "wardgate.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        store: sqlite:///{tmp / "store.db"}
        data_dir: {tmp / "data"}
        workers: 1
        listen: {{postgres: 127.0.0.1:{port}, api: null}}
        groups: {{bench: {{}}}}
        principals:
          masked: {{kind: agent, groups: [bench], sponsor: clear}}
          clear: {{kind: user, groups: [bench]}}
        connections:
          {DB}:
            type: postgres
            upstream: {{host: {PG["host"]}, port: {PG["port"]}, database: {DB}, user: {PG["user"]}, tls: disable}}
            roles: {{bench: reader}}
        roles: {{reader: {{read: allow}}}}
        masking:
          rules:
            - {{name: agents, principal_kinds: [agent], entities: [all], strategy: partial}}
        """)
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    env["WARDGATE_LOG_LEVEL"] = "WARNING"
    tokens = {}
    for principal in ("masked", "clear"):
        out = subprocess.run(
            [WARDGATE, "token", "create", principal, "-c", str(config)],
            env=env, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        tokens[principal] = out.strip().splitlines()[-1]
    proc = subprocess.Popen(
        [WARDGATE, "serve", "-c", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "wardgate.log", "wb"),  # noqa: SIM115
    )
    wait_port(port, proc)
    return proc, tokens


def pgbench(
    port: int, user: str, password: str, clients: int, duration: int, script: Path
) -> float:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    cmd = [
        "pgbench", "-n", "-f", str(script), "-M", "extended", "-c", str(clients),
        "-j", str(min(clients, 2)), "-T", str(duration), "-h", "127.0.0.1", "-p", str(port),
        "-U", user, DB,
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed:\n{out.stdout}\n{out.stderr}")
    for line in out.stdout.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise SystemExit(f"no tps in pgbench output:\n{out.stdout}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument(
        "--cold", action="store_true", help="rows differ in every query (no memoised masking)"
    )
    args = ap.parse_args()
    prepare_database()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        script = tmp / "select100.sql"
        script.write_text(SCRIPT_COLD if args.cold else SCRIPT)
        port = free_port()
        proc, tokens = start_wardgate(tmp, port)
        try:
            rows = "fresh rows each query" if args.cold else "the same rows each query"
            print(f"\n100 rows x 6 columns (2 masked), {rows}, {args.duration}s per run\n")
            print(f"{'clients':>7} {'target':<18} {'tps':>9} {'÷unmasked':>10}")
            for clients in (int(c) for c in args.clients.split(",")):
                direct = pgbench(PG["port"], PG["user"], "", clients, args.duration, script)
                clear = pgbench(port, "clear", tokens["clear"], clients, args.duration, script)
                masked = pgbench(port, "masked", tokens["masked"], clients, args.duration, script)
                for name, tps in (
                    ("direct", direct),
                    ("wardgate unmasked", clear),
                    ("wardgate masked", masked),
                ):
                    print(f"{clients:>7} {name:<18} {tps:>9.0f} {tps / clear:>10.2f}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            psql(f"drop database if exists {DB}")


if __name__ == "__main__":
    main()
