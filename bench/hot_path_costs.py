#!/usr/bin/env python3
"""What the gateway's own work costs per statement, next to the cost of a pglast parse.

    .venv/bin/python bench/hot_path_costs.py

Prints microseconds per call for: a full pglast parse and classification (the baseline
every SQL-aware gateway pays), a fingerprint-cache hit, a cached gate verdict, pickling
one action record for the recorder process, and the recorder process writing it
(events, hash chain, SQLite commit in batches of 500), and what the audit journal adds
on the event loop per statement (its intent and its outcome, each pickled and copied
into the journal's mapped file; the fdatasync runs elsewhere). No network.
"""

from __future__ import annotations

import pickle
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from wardgate.actions import Action, Decision, StatementInfo, Verdict
from wardgate.audit.journal import Intent, Journal
from wardgate.audit.records import ActionRecord, SessionRecord
from wardgate.audit.writer import BatchWriter
from wardgate.config import parse_config
from wardgate.gate import Gate
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.policy import sql as policy_sql
from wardgate.store.db import Store

SHORT = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;"
LONG = (
    "SELECT o.id, o.total, c.name, c.email FROM orders o JOIN customers c ON c.id = o.customer_id "
    + " ".join(f"AND o.note <> 'filler text number {i}'" for i in range(24))
    + " WHERE o.created_at > now() - interval '7 days' ORDER BY o.id LIMIT 100"
)
CONFIG = """
groups: {bench: {}}
principals: {bench: {kind: user, groups: [bench]}}
connections:
  db: {type: postgres, upstream: {database: db, user: app}, roles: {bench: rw}}
roles: {rw: {read: allow, write: allow}}
guardrails: [{name: no-drop, match: {sql: [drop, truncate]}, verdict: block}]
"""


def per_call(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main() -> None:
    rows: list[tuple[str, float]] = []
    for name, text in (("short", SHORT), (f"{len(LONG)}-char", LONG)):
        rows.append(
            (
                f"pglast parse + classify, {name} (baseline)",
                per_call(lambda t=text: policy_sql._parse_and_classify(t), 2000),
            )
        )
        policy_sql.classify_keyed(text)
        rows.append(
            (
                f"fingerprint-cache hit, {name}",
                per_call(lambda t=text: policy_sql._classify_keyed(t), 2000),
            )
        )
    config = parse_config(CONFIG, Path("bench.yaml"))
    gate = Gate(config)
    principal = Principal("bench", PrincipalKind.USER, frozenset({"bench"}))
    action = Action(principal, "db", "postgres", "sql", SHORT)
    gate.check(action)
    rows.append(("gate.check, cached verdict, short", per_call(lambda: gate.check(action), 20000)))
    long_action = Action(principal, "db", "postgres", "sql", LONG)

    def fresh_verdict() -> None:
        # Nothing cached anywhere: fingerprint, parse, classify, decide.
        policy_sql._FINGERPRINT_CACHE.clear()
        policy_sql._LAST[0] = None
        policy_sql._classify_cached.cache_clear()
        Gate(config).check(long_action)

    rows.append((f"gate.check, fresh {len(LONG)}-char statement", per_call(fresh_verdict, 500)))

    verdict = Verdict(
        Decision.ALLOW, "role:rw", "read allowed", (StatementInfo("read", ("select",)),)
    )
    records = [
        ActionRecord("s_1", i, Action(principal, "db", "postgres", "sql", SHORT, (), "s_1"), verdict,
                     time.time(), 0.05, "ok", 1, "SELECT 1")
        for i in range(20000)
    ]  # fmt: skip
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]
    started = time.perf_counter()
    for batch in batches:
        pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL)
    rows.append(
        (
            "pickle one action record (worker side)",
            (time.perf_counter() - started) / len(records) * 1e6,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(f"sqlite:///{tmp}/bench.db")
        writer = BatchWriter(store)
        writer.write([SessionRecord("s_1", "postgres", principal, "db", "127.0.0.1", time.time())])
        started = time.perf_counter()
        for batch in batches:
            writer.write(pickle.loads(pickle.dumps(batch)))
        rows.append(
            (
                "unpickle + write one action record (recorder process, SQLite)",
                (time.perf_counter() - started) / len(records) * 1e6,
            )
        )
        store.dispose()

    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "journal", rotate_bytes=1 << 40)
        journal.open()
        intents = [Intent(r) for r in records]

        def intent_then_write() -> None:
            for intent in intents:
                journal.append(intent)  # before the statement is forwarded: in the kernel

        def outcome_appends() -> None:
            for record in records:
                journal.append_outcome(record)  # the fields its intent lacks

        for label, fn in (
            ("journal: intent, pickled and copied into the mapped file", intent_then_write),
            ("journal: outcome, pickled and copied into the mapped file", outcome_appends),
        ):
            started = time.perf_counter()
            fn()
            rows.append((label, (time.perf_counter() - started) / len(records) * 1e6))
        journal.close()

    width = max(len(r[0]) for r in rows)
    print(f"{'operation':<{width}}  µs per call")
    for label, micros in rows:
        print(f"{label:<{width}}  {micros:10.2f}")


if __name__ == "__main__":
    main()
