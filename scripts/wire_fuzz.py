"""Fuzz a running gateway's PostgreSQL and SSH listeners end to end with a million
generated inputs each (tests/integration/test_wire_fuzz.py without its CI time budget);
SSH authentication requests past a real key exchange count as a third listener.

    .venv/bin/python scripts/wire_fuzz.py [--inputs 1000000] [--seed N] [--workers 16]
        [--listener postgres|ssh|ssh-auth|all] [--progress 10000]

Needs the PostgreSQL server and OpenSSH server the integration tests use. Prints how
many inputs each listener took and the seed; exits non-zero when an invariant broke (an
unhandled exception in the gateway's log, the gateway gone, a control client failing,
memory past the margin). A million inputs per listener take hours on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The tests of tests/integration/test_wire_fuzz.py each --listener runs.
_SELECT = {
    "postgres": "postgres_listener",
    "ssh": "ssh_listener",
    "ssh-auth": "ssh_authentication",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per listener")
    parser.add_argument("--seed", type=int, default=time.time_ns() % 2**32)
    parser.add_argument("--workers", type=int, default=16, help="connections at a time")
    parser.add_argument(
        "--listener", choices=(*_SELECT, "all"), default="all",
        help="ssh: before authentication; ssh-auth: authentication requests",
    )  # fmt: skip
    parser.add_argument("--progress", type=int, default=10_000, help="a line every N inputs")
    args = parser.parse_args()
    env = {
        **os.environ,
        "WARDGATE_WIRE_FUZZ_INPUTS": str(args.inputs),
        "WARDGATE_WIRE_FUZZ_SECONDS": str(10**9),  # the count decides, not the clock
        "WARDGATE_WIRE_FUZZ_SEED": str(args.seed),
        "WARDGATE_WIRE_FUZZ_WORKERS": str(args.workers),
        "WARDGATE_WIRE_FUZZ_PROGRESS": str(args.progress),
    }
    command = [
        str(Path(sys.executable)), "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s",
        "-o", "timeout=0", str(ROOT / "tests/integration/test_wire_fuzz.py"),
    ]  # fmt: skip
    if args.listener != "all":
        command += ["-k", _SELECT[args.listener]]
    print(f"seed {args.seed}, {args.inputs} inputs per listener", flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
