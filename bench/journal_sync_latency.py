#!/usr/bin/env python3
"""What the journal's disk does: ``fdatasync`` latency, and what a concurrent sync does to
the worker's ``pwrite``s.

    .venv/bin/python bench/journal_sync_latency.py [--dir DIR] [--seconds 5]

A file laid out as the journal lays out its files (16 MiB written with zeros first, so a
sync has only data to write) gets 300-byte ``pwrite``s, about 5 000 a second in bursts of
20 (a worker's intents and outcomes under pgbench), for --seconds, twice: alone, and with
a second process ``fdatasync``ing the file every millisecond (the journal's sync
process). Printed: the wall time per ``pwrite`` (mean, and how many took over 0.5 ms:
the event loop waits that long), and the latency of each ``fdatasync`` (p50 / p90 /
p99), which is what a statement would wait if its result were held until its record is
on disk. Run it on the file system of ``data_dir``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SIZE = 16 * 1024 * 1024
_FRAME = b"x" * 300

_SYNCER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
interval, end, took = float(sys.argv[2]), time.monotonic() + float(sys.argv[3]), []
while time.monotonic() < end:
    began = time.monotonic()
    os.fdatasync(fd)
    spent = time.monotonic() - began
    took.append(spent)
    if spent < interval:
        time.sleep(interval - spent)
took.sort()
p = lambda q: took[min(len(took) - 1, int(len(took) * q))] * 1e3
print(f"{len(took)} fdatasyncs, p50 {p(0.5):.2f} ms, p90 {p(0.9):.2f} ms, p99 {p(0.99):.2f} ms")
"""


def writes(fd: int, seconds: float) -> str:
    total, slow, count, off = 0.0, 0, 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        began = time.perf_counter()
        os.pwrite(fd, _FRAME, off)
        spent = time.perf_counter() - began
        total += spent
        slow += spent > 0.0005
        count += 1
        off = (off + len(_FRAME)) % (_SIZE - len(_FRAME))
        if count % 20 == 0:
            time.sleep(0.004)
    return f"{count} pwrites, {1e6 * total / count:.2f} µs each, {slow} over 0.5 ms"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", default=None, help="where to put the file (data_dir's disk)")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="wg-sync-") as tmp:
        path = Path(tmp) / "journal.wal"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.pwrite(fd, bytes(_SIZE), 0)
        os.fsync(fd)
        print(f"load average {os.getloadavg()[0]:.1f}")
        print("alone:               ", writes(fd, args.seconds))
        syncer = subprocess.Popen(
            [sys.executable, "-c", _SYNCER, str(path), "0.001", str(args.seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.1)
        print("with a sync each ms: ", writes(fd, args.seconds))
        out, _ = syncer.communicate()
        print("the sync process:    ", out.strip())
        os.close(fd)


if __name__ == "__main__":
    main()
