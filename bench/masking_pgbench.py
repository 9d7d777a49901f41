#!/usr/bin/env python3
"""The cost of masking: pgbench fetching a 100-row, 6-column result through wardgate,
as a principal whose rows are masked (2 of the 6 columns hold emails and phone numbers)
and as one whose rows are not, through the same gateway process, plus PostgreSQL
directly.

    .venv/bin/python bench/masking_pgbench.py [--duration 10] [--clients 1,4]
        [--modes warm,cold] [--rules both|content|columns]

Two workloads (--modes):
  warm  the same 100 rows every query (what an agent re-reading a table does; the
        gateway's memory of masked values and rows helps);
  cold  fresh rows every query: 100 rows at a random place in a million-row table, so
        no memory helps and every value pays detection (or, with column rewriting,
        the database's per-row expression).
Rules (--rules): `content` (detectors on every text value), `columns` (column rules on
people.email and people.phone), `both` (the default: what a deployment would have).
Before timing, one masked query checks that no clear email or phone number comes back.
Prints TPS per target and the ratio masked / unmasked (target: >= 0.5 cold).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgbench_compare import PG, WARDGATE, free_port, psql, wait_port  # noqa: E402

DB = "wardgate_mask_bench"
TABLE_ROWS = 1_000_000
SCRIPT = "select id, name, email, phone, city, amount from people where id <= 100;\n"
# Every query reads 100 rows at a random place in a million: values seen before are rare,
# so no memory helps. They come from the table's columns, so column rules (and a
# rewriter that masks columns inside the query) apply to them as to any table read.
SCRIPT_COLD = (
    f"\\set r random(1, {TABLE_ROWS - 99})\n"
    "select id, name, email, phone, city, amount from people"
    " where id between :r and :r + 99;\n"
)
RULES = {
    "content": "    - {{name: content, principal_kinds: [agent], entities: [all], strategy: partial}}\n",
    "columns": (
        "    - {{name: columns, principal_kinds: [agent], columns: [people.email, people.phone],"
        " strategy: partial}}\n"
    ),
}


def prepare_database() -> None:
    psql(f"drop database if exists {DB}")
    psql(f"create database {DB}")
    psql(
        "create table people (id int primary key, name text, email text, phone text,"
        " city text, amount numeric(10,2));"
        " insert into people select i, 'Person ' || i, 'person' || i || '@example.com',"
        " '+44 20 7' || lpad((i % 1000)::text, 3, '0') || ' '"
        " || lpad((i / 1000 % 10000)::text, 4, '0'),"
        f" 'City ' || (i % 17), i * 1.25 from generate_series(1, {TABLE_ROWS}) i;"
        " analyze people",
        db=DB,
    )


def start_wardgate(
    tmp: Path, port: int, rules: str
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
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
        """)
        + "".join(
            RULES[r] for r in (("content", "columns") if rules == "both" else (rules,))
        ).format()
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


def check_masked(port: int, password: str, script: str) -> None:
    """One masked query before timing: no clear email or phone number may come back."""
    sql = script.split("\n", 1)[1] if script.startswith("\\set") else script
    sql = sql.replace(":r", "123457")
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "masked", "-d", DB, "-qAtc", sql],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    clear = re.findall(r"person[0-9]+@example\.com|\+44 20 7[0-9]{3} [0-9]{4}", out)
    if clear or out.count("\n") < 100:
        raise SystemExit(f"masking is not in effect for the masked principal: {clear[:3]}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--modes", default="warm,cold")
    ap.add_argument("--rules", choices=("both", "content", "columns"), default="both")
    ap.add_argument("--no-direct", action="store_true", help="skip PostgreSQL directly")
    args = ap.parse_args()
    prepare_database()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        proc, tokens = start_wardgate(tmp, port, args.rules)
        try:
            print(
                f"\n100 rows x 6 columns (email, phone masked), rules: {args.rules},"
                f" {args.duration}s per run\n"
            )
            print(f"{'mode':<5} {'clients':>7} {'target':<18} {'tps':>9} {'÷unmasked':>10}")
            for mode in args.modes.split(","):
                text = SCRIPT_COLD if mode == "cold" else SCRIPT
                script = tmp / f"{mode}.sql"
                script.write_text(text)
                check_masked(port, tokens["masked"], text)
                for clients in (int(c) for c in args.clients.split(",")):
                    runs = []
                    if not args.no_direct:
                        runs.append(("direct", PG["port"], PG["user"], ""))
                    runs += [
                        ("wardgate unmasked", port, "clear", tokens["clear"]),
                        ("wardgate masked", port, "masked", tokens["masked"]),
                    ]
                    tps = {
                        name: pgbench(p, user, pw, clients, args.duration, script)
                        for name, p, user, pw in runs
                    }
                    for name, value in tps.items():
                        ratio = value / tps["wardgate unmasked"]
                        print(f"{mode:<5} {clients:>7} {name:<18} {value:>9.0f} {ratio:>10.2f}")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            psql(f"drop database if exists {DB}")


if __name__ == "__main__":
    main()
