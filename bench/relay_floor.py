#!/usr/bin/env python3
"""The floor of a Python relay on this machine: pgbench through a bare uvloop relay
(bytes in, bytes out, nothing judged or recorded) beside the same pgbench through
wardgate (one worker) and directly.

    .venv/bin/python bench/relay_floor.py [--duration 5] [--clients 1,8] [--rounds 2]

Printed per mode and client count: TPS, and the CPU time per transaction of the relay
process (user and system) and of wardgate's worker. What separates the two relays is
wardgate's own work per statement, not Python or the event loop: the bare relay makes
the same system calls per transaction (a read and a write each way).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_ab  # noqa: E402
import pgbench_compare as pc  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def _times(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


class _Side(asyncio.Protocol):
    def __init__(self) -> None:
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.early = bytearray()  # what the client sent before the upstream answered

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early += data
        else:
            peer.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def serve_bare_relay(listen: int, target: int) -> None:
    """Run the bare relay (in a child process: `--serve PORT`)."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def client() -> _Side:
            side = _Side()

            async def dial() -> None:
                upstream = _Side()
                upstream.peer = side
                await loop.create_connection(lambda: upstream, PG_HOST, target)
                side.peer = upstream
                if side.early and upstream.transport is not None:
                    upstream.transport.write(bytes(side.early))

            loop.create_task(dial())
            return side

        server = await loop.create_server(client, "127.0.0.1", listen)
        await server.serve_forever()

    uvloop.install()
    asyncio.run(main())


PG_HOST = str(pc.PG["host"])


def _run(
    port: int, user: str, password: str, mode: str, clients: int, secs: int, pid: int
) -> tuple[float, float, float]:
    pc.pgbench(port, user, password, mode, clients, 1)  # warm
    u0, s0 = _times(pid)
    tps, _ = pc.pgbench(port, user, password, mode, clients, secs)
    u1, s1 = _times(pid)
    n = tps * secs
    return tps, (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5)
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_bare_relay(args.serve, int(str(pc.PG["port"])))
        return
    pc.psql(f"drop database if exists {pc.DB}")
    pc.psql(f"create database {pc.DB}")
    subprocess.run(
        ["pgbench", "-i", "-q", "-s", "10", "-h", PG_HOST, "-U", str(pc.PG["user"]), pc.DB],
        check=True,
        capture_output=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="wg-relay-floor-"))
    bare_port = pc.free_port()
    bare = subprocess.Popen([sys.executable, __file__, "--serve", str(bare_port)])
    gate_port = pc.free_port()
    gate, token = pc.start_wardgate(tmp, gate_port, 1)
    try:
        pc.wait_port(bare_port, bare)
        pc.pgbench(gate_port, "bench", token, "simple", 1, 1)  # starts the recorder
        worker = max(cpu_ab._tree(gate.pid), key=lambda p: sum(_times(p)))
        print(f"pgbench -S, {args.duration} s per run, {args.rounds} rounds, {os.cpu_count()} CPUs")
        print("mode      clients | target     TPS   user µs/txn  sys µs/txn")
        for mode in ("simple", "prepared"):
            for clients in (int(c) for c in args.clients.split(",")):
                for _ in range(args.rounds):
                    for name, port, user, password, pid in (
                        ("bare relay", bare_port, str(pc.PG["user"]), "", bare.pid),
                        ("wardgate", gate_port, "bench", token, worker),
                    ):
                        tps, user_us, sys_us = _run(
                            port, user, password, mode, clients, args.duration, pid
                        )
                        print(
                            f"{mode:9} {clients:7} | {name:10} {tps:7.0f} "
                            f"{user_us:12.1f} {sys_us:11.1f}"
                        )
    finally:
        gate.terminate()
        bare.terminate()
        gate.wait()
        bare.wait()
        pc.psql(f"drop database if exists {pc.DB}")


if __name__ == "__main__":
    main()
