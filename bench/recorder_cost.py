#!/usr/bin/env python3
"""CPU the recorder process spends per recorded action, for two builds in one run.

    .venv/bin/python bench/recorder_cost.py [--base main] [--records 20000] [--batch 200]

Builds: ``base`` (a commit, exported with ``git archive <commit> src`` into a temporary
directory) and this checkout. Each round runs one child process per build, alternated,
with PYTHONPATH set to the build's ``src``. A child does what ``python -m
wardgate.audit.writer`` does: it unpickles batches and hands them to a ``BatchWriter``
on a fresh SQLite store (WAL, the store's own settings). The records are pgbench
``-S -M prepared``'s: one session per client, a one-parameter SELECT with a verdict the
gate returned (the gate's cache hands the same Verdict object to every execution, so a
batch pickles it once), the command tag and the captured result (one DataRow). Per
build: CPU microseconds (user + system of the child, from the first batch to the last
commit) per record, minimum and median over the rounds, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATEMENT = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
CONFIG = """
groups: {bench: {}}
principals: {bench: {kind: user, groups: [bench]}}
connections:
  db: {type: postgres, upstream: {database: db, user: app}, roles: {bench: benchmarker}}
roles: {benchmarker: {read: allow, write: allow, ddl: block, admin: block}}
guardrails: [{name: no-drop, match: {sql: [drop, truncate]}, verdict: block}]
"""


def _data_row(value: bytes) -> bytes:
    body = (1).to_bytes(2, "big") + len(value).to_bytes(4, "big") + value
    return b"D" + (4 + len(body)).to_bytes(4, "big") + body


def _batches(records: int, batch: int, clients: int) -> list[bytes]:
    """The pickled frames the worker would send: session starts, actions, session ends."""
    from wardgate.actions import Action
    from wardgate.audit.records import ActionRecord, SessionEnd, SessionRecord
    from wardgate.audit.responses import ResponseTap, SessionResults
    from wardgate.config import parse_config
    from wardgate.gate import Gate
    from wardgate.identity.principals import Principal, PrincipalKind

    rng = random.Random(7)
    gate = Gate(parse_config(CONFIG, Path("bench.yaml")))
    principal = Principal("bench", PrincipalKind.USER, frozenset({"bench"}))
    sessions = [f"s_{rng.getrandbits(64):016x}" for _ in range(clients)]
    now = time.time()
    out: list[object] = [
        SessionRecord(sid, "postgres", principal, "db", f"127.0.0.1:{40000 + i}", now, "pgbench")
        for i, sid in enumerate(sessions)
    ]
    budgets = [SessionResults(100, 64 * 1024, 1 << 40) for _ in sessions]
    for n in range(records):
        i = n % clients
        aid = str(rng.randrange(1, 100_001))
        action = Action(principal, "db", "postgres", "sql", STATEMENT, (aid,), sessions[i])
        tap = ResponseTap(budgets[i], "UTF8")
        tap.feed(_data_row(str(rng.randrange(-5000, 5000)).encode()))
        out.append(
            ActionRecord(
                sessions[i], n // clients + 1, action, gate.check(action), now + n * 1e-4,
                0.05 + rng.random() * 0.2, "ok", 1, "SELECT", result=tap.summary(),
            )
        )  # fmt: skip
    out += [SessionEnd(sid, now + records * 1e-4, "closed") for sid in sessions]
    return [
        pickle.dumps(out[i : i + batch], protocol=pickle.HIGHEST_PROTOCOL)
        for i in range(0, len(out), batch)
    ]


def child(records: int, batch: int, clients: int) -> None:
    from wardgate.audit.chain import verify_chain
    from wardgate.audit.writer import BatchWriter
    from wardgate.store.db import Store

    frames = _batches(records, batch, clients)
    with tempfile.TemporaryDirectory(prefix="wg-rec-cost-") as tmp:
        store = Store.open(f"sqlite:///{tmp}/store.db")
        writer = BatchWriter(store)
        writer.write(pickle.loads(frames[0]))  # session starts; connects and warms up
        before = resource.getrusage(resource.RUSAGE_SELF)
        wall = time.perf_counter()
        for frame in frames[1:]:
            writer.write(pickle.loads(frame))
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        result = verify_chain(store)
        store.dispose()
    if not result.ok:
        raise SystemExit(f"chain broken: {result.reason}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    json.dump({"cpu_us": cpu / records * 1e6, "wall_us": wall / records * 1e6}, sys.stdout)


def _export(commit: str, into: Path) -> Path:
    archive = into / "src.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def _run(src: Path, args: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, __file__, "--child", "--records", str(args.records)]
    cmd += ["--batch", str(args.batch), "--clients", str(args.clients)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="main", help="commit to compare with")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200, help="records per batch")
    parser.add_argument("--clients", type=int, default=8, help="sessions, interleaved")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.records, args.batch, args.clients)
        return
    with tempfile.TemporaryDirectory(prefix="wg-rec-base-") as tmp:
        builds = {args.base: _export(args.base, Path(tmp)), "this": ROOT / "src"}
        cpu: dict[str, list[float]] = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name, src in builds.items():
                cpu[name].append(_run(src, args)["cpu_us"])
    print(
        f"{args.records} actions of {args.clients} sessions, batches of {args.batch}, "
        f"{args.rounds} rounds; CPU µs per record, min / median"
    )
    for name, values in cpu.items():
        print(f"  {name:>12}: {min(values):6.1f} / {statistics.median(values):6.1f}")
    ratio = statistics.median(cpu["this"]) / statistics.median(cpu[args.base])
    print(f"  this / {args.base} (medians): {ratio:.2f}")


if __name__ == "__main__":
    main()
