#!/usr/bin/env python3
"""pgbench -S through wardgate, beside PostgreSQL directly and PgBouncer, in one run.

    .venv/bin/python bench/pgbench_compare.py [--duration 10] [--workers 2] [--scale 10]
    .venv/bin/python bench/pgbench_compare.py --results [--rounds 3]

``--results``: the cost of recording responses instead. A 100-row query workload
(``select * from pgbench_accounts`` over 100 consecutive ids) through two gateways,
one recording results (the defaults: 100 rows / 64 KiB per action) and one with
``results: {record: false}``, run in alternation ``--rounds`` times.

Prints TPS and mean latency per (target, protocol, clients) and the ratios
wardgate/direct and wardgate/PgBouncer. Everything runs on this machine, on
loopback: the local PostgreSQL (127.0.0.1:5432, user postgres, trust), a
PgBouncer in session mode (Debian package, installed if missing) and a wardgate
with the gate and the recorder on (SQLite store, as in the quick start).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WARDGATE = str(Path(sys.executable).with_name("wardgate"))
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
DB = "wardgate_bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(
        ["psql", "-h", PG["host"], "-p", str(PG["port"]), "-U", PG["user"], "-d", db, "-qAtc", sql],
        check=True,
    )


def ensure_pgbouncer() -> str:
    path = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(path):
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "pgbouncer"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    return path


def start_pgbouncer(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    binary = ensure_pgbouncer()
    (tmp / "users.txt").write_text('"postgres" ""\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text(
        textwrap.dedent(f"""\
        [databases]
        {DB} = host={PG["host"]} port={PG["port"]} dbname={DB}
        [pgbouncer]
        listen_addr = 127.0.0.1
        listen_port = {port}
        unix_socket_dir =
        auth_type = trust
        auth_file = {tmp / "users.txt"}
        pool_mode = session
        max_client_conn = 200
        default_pool_size = 20
        logfile = {tmp / "pgbouncer.log"}
        """)
    )
    shutil.chown(tmp, "postgres")
    for f in tmp.iterdir():
        shutil.chown(f, "postgres")
    cmd = [binary, str(ini)]
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def serve_with_token(
    config: Path, tmp: Path, principal: str, port: int
) -> tuple[subprocess.Popen[bytes], str]:
    """A token for ``principal``, then ``wardgate serve -c config`` (its log in
    tmp/wardgate.log), once its PostgreSQL port answers; no WARDGATE_* variable of the
    caller's environment leaks into it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    env["WARDGATE_LOG_LEVEL"] = "WARNING"
    out = subprocess.run(
        [WARDGATE, "token", "create", principal, "-c", str(config)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    token = out.strip().splitlines()[-1]
    with open(tmp / "wardgate.log", "wb") as log:
        proc = subprocess.Popen(
            [WARDGATE, "serve", "-c", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    wait_port(port, proc)
    return proc, token


def start_wardgate(
    tmp: Path, port: int, workers: int, results: str = "", extra: str = ""
) -> tuple[subprocess.Popen[bytes], str]:
    tmp.mkdir(parents=True, exist_ok=True)
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
            roles: {{bench: benchmarker}}
            {results}
        roles:
          benchmarker: {{read: allow, write: allow, ddl: block, admin: block}}
        guardrails:
          - {{name: no-drop, match: {{sql: [drop, truncate]}}, verdict: block}}
        """)
        + extra
    )
    return serve_with_token(config, tmp, "bench", port)


def pgbench(
    port: int,
    user: str,
    password: str,
    mode: str,
    clients: int,
    duration: int,
    script: Path | None = None,
) -> tuple[float, float]:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": "disable"}
    cmd = [
        "pgbench",
        "-n",
        *(["-f", str(script)] if script is not None else ["-S"]),
        "-M",
        mode,
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(duration),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        user,
        DB,
    ]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"pgbench failed on port {port}:\n{out.stdout}\n{out.stderr}")
    tps = float(re.search(r"tps = ([\d.]+)", out.stdout).group(1))  # type: ignore[union-attr]
    lat = float(re.search(r"latency average = ([\d.]+) ms", out.stdout).group(1))  # type: ignore[union-attr]
    return tps, lat


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--workers", type=int, default=2, help="wardgate worker processes")
    ap.add_argument("--scale", type=int, default=10, help="pgbench scale factor")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--database", default=DB, help="the scratch database (dropped after)")
    ap.add_argument("--results", action="store_true", help="measure response recording")
    ap.add_argument("--rounds", type=int, default=3, help="--results: on/off alternations")
    args = ap.parse_args()
    globals()["DB"] = args.database

    psql(f"drop database if exists {DB}")
    psql(f"create database {DB}")
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", str(args.scale), "-h", PG["host"], "-U", PG["user"], DB],
        check=True,
        capture_output=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="wardgate-bench-"))
    if args.results:
        try:
            results_cost(tmp, args)
        finally:
            psql(f"drop database if exists {DB}")
            shutil.rmtree(tmp, ignore_errors=True)
        return
    tmp.chmod(0o755)  # PgBouncer runs as the postgres user and reads its folder
    bouncer_port, gate_port = free_port(), free_port()
    (tmp / "bouncer").mkdir()
    bouncer = start_pgbouncer(tmp / "bouncer", bouncer_port)
    gate, token = start_wardgate(tmp, gate_port, args.workers)
    targets = {
        "direct": (PG["port"], PG["user"], ""),
        "pgbouncer": (bouncer_port, "postgres", ""),
        "wardgate": (gate_port, "bench", token),
    }
    results: dict[tuple[str, str, int], tuple[float, float]] = {}
    try:
        for mode in ("simple", "prepared"):
            for clients in [int(c) for c in args.clients.split(",")]:
                for name, (port, user, password) in targets.items():
                    results[(name, mode, clients)] = pgbench(
                        port, user, password, mode, clients, args.duration
                    )
    finally:
        gate.terminate()
        bouncer.terminate()
        gate.wait(10)
        bouncer.wait(10)
        psql(f"drop database if exists {DB}")
    print(
        f"\npgbench -S, {args.duration}s per run, scale {args.scale}, wardgate workers={args.workers}, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        f"{'mode':9} {'clients':>7} {'target':10} {'tps':>10} {'latency ms':>11} {'÷direct':>8} {'÷pgbouncer':>11}"
    )
    for (name, mode, clients), (tps, lat) in results.items():
        direct = results[("direct", mode, clients)][0]
        bouncer_tps = results[("pgbouncer", mode, clients)][0]
        print(
            f"{mode:9} {clients:>7} {name:10} {tps:>10.0f} {lat:>11.3f} {tps / direct:>8.2f} {tps / bouncer_tps:>11.2f}"
        )
    shutil.rmtree(tmp, ignore_errors=True)


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root`` and every live descendant
    (wardgate's supervisor, workers and recorder processes). Per query this is far
    steadier than TPS on a machine that other work shares."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
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
    total = 0.0
    for pid in cpu:
        p = pid
        while p not in (0, 1) and p != root:
            p = parents.get(p, 0)
        if p == root:
            total += cpu[pid]
    return total


def results_cost(tmp: Path, args: argparse.Namespace) -> None:
    """TPS of a 100-row query, response recording on vs off, in alternation."""
    script = tmp / "rows100.sql"
    script.write_text(
        f"\\set a random(1, {100_000 * args.scale - 100})\n"
        "select * from pgbench_accounts where aid between :a and :a + 99;\n"
    )
    gates = {}
    for name, results in (("on", ""), ("off", "results: {record: false}")):
        port = free_port()
        proc, token = start_wardgate(tmp / name, port, args.workers, results)
        gates[name] = (proc, port, token)
    clients = [int(c) for c in args.clients.split(",")]
    tps: dict[tuple[str, int], list[float]] = {}
    cpu_ms: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(args.rounds):
            for c in clients:
                for name, (proc, port, token) in gates.items():
                    before = tree_cpu(proc.pid)
                    got, _lat = pgbench(port, "bench", token, "simple", c, args.duration, script)
                    used = tree_cpu(proc.pid) - before
                    tps.setdefault((name, c), []).append(got)
                    cpu_ms.setdefault((name, c), []).append(used * 1000 / (got * args.duration))
    finally:
        for proc, _port, _token in gates.values():
            proc.terminate()
            proc.wait(10)
    print(
        f"\n100-row queries, {args.duration}s x {args.rounds} rounds, scale {args.scale}, "
        f"wardgate workers={args.workers}, {os.cpu_count()} CPUs\n"
    )
    print(
        f"{'clients':>7} {'recording':>9} {'tps (median)':>13} {'tps runs':>24} "
        f"{'gateway CPU ms/query (median)':>30} {'cost':>7}"
    )

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    for c in clients:
        off = median(cpu_ms[("off", c)])
        for name in ("off", "on"):
            per_query = median(cpu_ms[(name, c)])
            cost = f"{(per_query / off - 1) * 100:+6.1f}%" if name == "on" else ""
            shown = ", ".join(f"{r:.0f}" for r in tps[(name, c)])
            print(
                f"{c:>7} {name:>9} {median(tps[(name, c)]):>13.0f} {shown:>24} "
                f"{per_query:>30.3f} {cost:>7}"
            )
    print("\ncost: the gateway's CPU per query (workers and recorder processes), on vs off")


if __name__ == "__main__":
    main()
