#!/usr/bin/env python3
"""The relay's own CPU per statement, with no sockets and no database: pgbench's
statements and the server's replies are fed to one PgRelay in this process.

    .venv/bin/python bench/relay_cost.py [--statements 20000] [--mode simple|prepared]
    .venv/bin/python bench/relay_cost.py --profile   # cProfile's top functions too
    .venv/bin/python bench/relay_cost.py --without-journal   # what the audit journal costs

The relay is built as a worker builds it (a real Gate, Recorder with its journal and
recorder process, SQLite store, the config of bench/pgbench_compare.py, results
recorded); only the two sockets are stand-ins that keep what is written. Printed: CPU
microseconds per pgbench transaction spent in the relay (the worker's event loop: the
client's messages judged and forwarded, the server's replies matched and recorded),
best of 5 runs. What pgbench_compare.py measures on top: the socket system calls, the
event loop's wake-ups, and the CPU other processes take from the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from wardgate.audit.journal import Journal
from wardgate.audit.recorder import Recorder
from wardgate.config import parse_config
from wardgate.core.services import Services
from wardgate.gate import Gate
from wardgate.identity.ratelimit import LoginLimiter
from wardgate.identity.tokens import TokenService
from wardgate.policy.mask_rules import MaskingPolicy
from wardgate.postgres.codec import build
from wardgate.postgres.relay import PgRelay
from wardgate.postgres.wire import ClientSide, UpstreamSide
from wardgate.store.cancel import CancelKeys
from wardgate.store.db import Store
from wardgate.vault.secrets import Vault

CONFIG = """
store: sqlite:///{store}
data_dir: {data}
groups: {{bench: {{}}}}
principals: {{bench: {{kind: user, groups: [bench]}}}}
connections:
  db:
    type: postgres
    upstream: {{host: 127.0.0.1, database: db, user: app}}
    roles: {{bench: benchmarker}}
roles:
  benchmarker: {{read: allow, write: allow, ddl: block, admin: block}}
guardrails:
  - {{name: no-drop, match: {{sql: [drop, truncate]}}, verdict: block}}
"""
SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"


class _Transport:
    """What a socket would have sent, dropped: the relay only needs somewhere to write."""

    def __init__(self) -> None:
        self.sent = 0

    def write(self, data: bytes) -> None:
        self.sent += len(data)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None: ...


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def _server_reply(prepared: bool) -> bytes:
    """What PostgreSQL answers one pgbench -S transaction (one int4 column, one row)."""
    row_description = _message(
        b"T",
        struct.pack("!H", 1) + b"abalance\0" + struct.pack("!IhIhih", 16400, 3, 23, 4, -1, 0),
    )
    data_row = _message(b"D", struct.pack("!HI", 1, 4) + b"1234")
    tail = _message(b"C", b"SELECT 1\0") + _message(b"Z", b"I")
    if prepared:  # BindComplete, the Describe's RowDescription, the rows
        return _message(b"2", b"") + row_description + data_row + tail
    return row_description + data_row + tail


def _client_transaction(prepared: bool, aid: int) -> bytes:
    if prepared:
        return (
            build.bind("", "P0_1", (str(aid).encode(),))
            + _message(b"D", b"P\0")
            + build.execute("")
            + build.sync()
        )
    return build.query(SQL.replace("$1", str(aid)))


async def _services(tmp: Path, with_journal: bool = True) -> Services:
    text = CONFIG.format(store=tmp / "store.db", data=tmp / "data")
    config = parse_config(text, tmp / "wardgate.yaml")
    store = Store(config.store_url)
    store.migrate()
    journal = None
    if with_journal:
        journal = Journal(tmp / "journal", sync_process=True, sync_interval=0.001)
        journal.open()
    recorder = Recorder(store, process=True, journal=journal)
    await recorder.start()
    return Services(
        config=config,
        gate=Gate(config),
        store=store,
        recorder=recorder,
        tokens=TokenService(store, b"p" * 32),
        limiter=LoginLimiter(store, 10, 60.0),
        cancel_keys=CancelKeys(store, "bench"),
        vault=Vault(store, b"k" * 32),
        server_tls=None,
        masking_key=b"m" * 32,
        masking=MaskingPolicy(config, b"m" * 32),
    )


def _relay(services: Services) -> PgRelay:
    client = ClientSide(lambda side: None, 1 << 24)
    client.connection_made(_Transport())  # type: ignore[arg-type]
    client.decoder.end_startup()
    upstream = UpstreamSide(1 << 24)
    upstream.connection_made(_Transport())  # type: ignore[arg-type]
    principal = services.config.principal("bench")
    assert principal is not None
    relay = PgRelay(
        services,
        client,
        upstream,
        session_id="s_bench",
        principal=principal,
        connection="db",
        client_addr="127.0.0.1",
    )
    client.relay = upstream.relay = relay
    return relay


async def _run(relay: PgRelay, prepared: bool, count: int) -> float:
    """CPU seconds the relay spent on ``count`` transactions (the recorder's task, which
    runs between them on the same loop, included)."""
    reply = _server_reply(prepared)
    requests = [_client_transaction(prepared, 1 + i % 100_000) for i in range(count)]
    started = time.thread_time()
    for i, request in enumerate(requests):
        relay.on_client_data(request)
        relay.on_upstream_data(reply)
        if i % 64 == 63:
            await asyncio.sleep(0)  # let the recorder's task and timers run, as they would
    return time.thread_time() - started


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--statements", type=int, default=20_000)
    ap.add_argument("--mode", choices=("simple", "prepared"), default="simple")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    ap.add_argument(
        "--without-journal", action="store_true", help="the recorder without its journal (an A/B)"
    )
    args = ap.parse_args()
    prepared = args.mode == "prepared"
    with tempfile.TemporaryDirectory(prefix="wg-relay-cost-") as tmp:
        services = await _services(Path(tmp), not args.without_journal)
        relay = _relay(services)
        if prepared:
            relay.on_client_data(build.parse("P0_1", SQL) + build.sync())
            relay.on_upstream_data(_message(b"1", b"") + _message(b"Z", b"I"))
        await _run(relay, prepared, 2000)  # warm the caches
        best = min([await _run(relay, prepared, args.statements) for _ in range(5)])
        print(
            f"{args.mode}: {best / args.statements * 1e6:.1f} µs of CPU per transaction "
            f"in the relay (best of 5 x {args.statements})"
        )
        if args.profile:
            profile: Any = cProfile.Profile(time.thread_time)
            profile.enable()
            await _run(relay, prepared, args.statements)
            profile.disable()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        await services.recorder.close()


if __name__ == "__main__":
    asyncio.run(main())
