#!/usr/bin/env python3
"""How much of a flood before the session exists does the gateway keep in memory?

    .venv/bin/python bench/flood_memory.py [--connections 64] [--push-mb 1024]

Starts a wardgate (1 worker, SQLite store) whose connection `slow` dials a server on
loopback that accepts TCP and never answers. Then, at once, `--connections` clients
each send a StartupMessage and push junk (up to --push-mb MB each) before
authenticating, and one authenticated client pushes junk while its upstream dial
hangs. Prints the gateway's RSS (VmRSS of its process) before, at its peak and after,
and how much the clients managed to push. With limits.startup_buffer_bytes each is
stopped after 256 KiB and refused (08P01).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.integration.pg_cluster import RawClient  # noqa: E402

from wardgate.identity.scram import ScramClient  # noqa: E402
from wardgate.postgres.codec import build  # noqa: E402

WARDGATE = str(Path(sys.executable).with_name("wardgate"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def push(client: RawClient, limit: int, pushed: list[int]) -> None:
    sock = client.sock
    sock.settimeout(2.0)
    junk = b"\x00" * (1 << 20)
    total = 0
    try:
        while total < limit:
            total += sock.send(junk)
    except OSError:
        pass
    pushed.append(total)
    client.close()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--push-mb", type=int, default=1024)
    args = ap.parse_args()
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    with tempfile.TemporaryDirectory(prefix="wg-flood-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_port()
        config = tmp / "wardgate.yaml"
        config.write_text(
            f"""\
store: sqlite:///{tmp / "store.db"}
data_dir: {tmp / "data"}
listen: {{postgres: 127.0.0.1:{port}, api: null}}
groups: {{bench: {{}}}}
principals: {{bench: {{kind: user, groups: [bench]}}}}
connections:
  slow:
    type: postgres
    upstream: {{host: 127.0.0.1, port: {silent.getsockname()[1]}, database: x, user: x, tls: disable}}
    roles: {{bench: reader}}
roles:
  reader: {{read: allow, write: block, ddl: block, admin: block}}
limits: {{login_failures: 100000, connect_timeout: 30s, startup_timeout: 40s}}
"""
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
        env["WARDGATE_LOG_LEVEL"] = "WARNING"
        token = (
            subprocess.run(
                [WARDGATE, "token", "create", "bench", "-c", str(config)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        gw = subprocess.Popen([WARDGATE, "serve", "-c", str(config)], env=env)
        try:
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            time.sleep(1.0)
            before = rss(gw.pid)
            limit = args.push_mb << 20
            pushed: list[int] = []
            threads = []
            # The authenticated client first: its dial hangs while it pushes.
            auth = RawClient(port)
            auth.send(build.startup_message({"user": "bench", "database": "slow"}))
            assert auth.read_message().auth_code == 10
            scram = ScramClient(token)
            auth.send(build.sasl_initial_response(ScramClient.mechanism, scram.client_first()))
            msg = auth.read_message()
            auth.send(build.sasl_response(scram.handle_server_first(msg.body[4:])))
            assert auth.read_message().auth_code == 12
            threads.append(threading.Thread(target=push, args=(auth, limit, pushed)))
            for _ in range(args.connections):
                client = RawClient(port)
                client.send(build.startup_message({"user": "bench", "database": "slow"}))
                threads.append(threading.Thread(target=push, args=(client, limit, pushed)))
            peak = before
            for t in threads:
                t.start()
            while any(t.is_alive() for t in threads):
                peak = max(peak, rss(gw.pid))
                time.sleep(0.05)
            time.sleep(1.0)
            after = rss(gw.pid)
            mb = 1 << 20
            print(
                f"{len(threads)} clients pushed {sum(pushed) / mb:.1f} MB in all "
                f"(at most {max(pushed) / mb:.1f} MB one); gateway RSS before "
                f"{before / mb:.0f} MB, peak {peak / mb:.0f} MB, after {after / mb:.0f} MB"
            )
        finally:
            gw.terminate()
            gw.wait(30)
            silent.close()


if __name__ == "__main__":
    main()
