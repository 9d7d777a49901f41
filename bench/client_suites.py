#!/usr/bin/env python3
"""Run a client library's own test suite directly and through wardgate; print the
per-test differences.

    .venv/bin/python bench/client_suites.py --suite psycopg --source /tmp/psycopg-src \\
        --python /tmp/suite-venv/bin/python --dsn "host=127.0.0.1 user=postgres dbname=psycopg_test" \\
        [--out result.json] [tests/test_cursor.py ...]

It fetches nothing: ``--source`` is a folder holding the suite (for psycopg, the
repository's ``tests/`` folder; docs/compatibility.md says how to get it) and
``--python`` an interpreter where the client and the suite's test dependencies are
installed. The suite runs twice with pytest: against ``--dsn`` directly, then through
a wardgate this script starts, configured to let everything through (one principal
whose role allows read, write, ddl and admin; no guardrails; the upstream is the
DSN's server, database and user). Each run writes a JUnit XML report; the script
compares the outcome of every test and prints those that differ, then the totals.

Suites (``--suite``): ``psycopg`` (its ``--test-dsn`` option, the pure-Python libpq
wrapper unless ``--impl`` says otherwise), ``sqlalchemy`` (its ``--dburi`` option,
the psycopg dialect) and ``asyncpg`` (the repository's ``tests/`` folder; the server is
given by the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD and PGDATABASE, taken
from the DSN). Everything stays on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pgbench_compare import free_port, serve_with_token  # noqa: E402

PRINCIPAL = "suite"


def connection_name(target: dict[str, str]) -> str:
    # The database name clients use is the gateway's connection name: named like the
    # upstream database, current_database() matches what the client asked for.
    return target.get("dbname", "postgres")


# Databases a suite connects to besides the DSN's (asyncpg's pool tests use "postgres";
# its introspection tests create "asyncpg_intro_test"): the gateway gets a connection
# for each, named like it, to the same server and user.
EXTRA_DATABASES = {"asyncpg": ["postgres", "asyncpg_intro_test"]}


def gateway_config(
    tmp: Path, port: int, target: dict[str, str], extra: list[str] | None = None
) -> Path:
    up = {
        "host": target.get("host", "127.0.0.1"),
        "port": int(target.get("port", "5432")),
        "database": target.get("dbname", "postgres"),
        "user": target.get("user", "postgres"),
        "tls": "disable",
        "privileged": True,  # test suites need a superuser; no warning at start
    }
    connections = {connection_name(target): up}
    for name in extra or []:
        connections.setdefault(name, {**up, "database": name})
    entries = "".join(
        f"  {name}:\n    type: postgres\n    upstream: {json.dumps(upstream)}\n"
        "    roles: {everyone: everything}\n"
        for name, upstream in connections.items()
    )
    config = tmp / "wardgate.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        store: sqlite:///{tmp / "store.db"}
        data_dir: {tmp / "data"}
        listen: {{postgres: 127.0.0.1:{port}, api: null}}
        groups: {{everyone: {{}}}}
        principals: {{{PRINCIPAL}: {{kind: user, groups: [everyone]}}}}
        roles:
          everything: {{read: allow, write: allow, ddl: allow, admin: allow}}
        limits: {{login_failures: 1000}}
        """)
        + "connections:\n"
        + entries
    )
    return config


def start_gateway(
    tmp: Path, target: dict[str, str], extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = gateway_config(tmp, port, target, extra)
    proc, token = serve_with_token(config, tmp, PRINCIPAL, port)
    dsn = make_conninfo(
        host="127.0.0.1",
        port=str(port),
        user=PRINCIPAL,
        password=token,
        dbname=connection_name(target),
        sslmode="disable",
    )
    return proc, dsn


def suite_command(
    suite: str,
    python: str,
    dsn: str,
    tests: list[str],
    report: Path,
    timeout: int = 0,
    markers: str = "",
) -> list[str]:
    # The suite's own conftest may use pytest's cache: keep it beside the report.
    cache = f"cache_dir={report.with_suffix('.cache')}"
    common = [python, "-m", "pytest", *tests, "-q", "-o", cache, "--junitxml", str(report)]
    if timeout:
        # pytest-timeout (installed beside the suite): one hung test must not stop the run.
        common += ["--timeout", str(timeout)]
    if markers:
        common += ["-m", markers]
    if suite == "psycopg":
        # pytest-randomly, when installed, would order the two runs differently.
        return [*common, "-p", "no:randomly", "--test-dsn", dsn]
    if suite == "sqlalchemy":
        d = conninfo_to_dict(dsn)
        password = f":{d['password']}" if d.get("password") else ""
        uri = (
            f"postgresql+psycopg://{d.get('user', '')}{password}@{d.get('host', '127.0.0.1')}"
            f":{d.get('port', 5432)}/{d.get('dbname', '')}"
        )
        return [*common, "-p", "no:randomly", "--dburi", uri]
    if suite == "asyncpg":
        # asyncpg's suite has no DSN option: with PGHOST set it uses the running server
        # the libpq variables name (suite_env) instead of starting its own cluster.
        return [*common, "-p", "no:randomly"]
    raise SystemExit(f"unknown suite {suite!r}")


def suite_env(suite: str, dsn: str, impl: str) -> dict[str, str]:
    env = {**os.environ, "PSYCOPG_IMPL": impl}
    if suite == "asyncpg":
        d = conninfo_to_dict(dsn)
        names = {"host": "PGHOST", "port": "PGPORT", "user": "PGUSER", "dbname": "PGDATABASE"}
        names |= {"password": "PGPASSWORD", "sslmode": "PGSSLMODE"}
        for key, var in names.items():
            env.pop(var, None)
            if d.get(key) is not None:
                env[var] = str(d[key])
        env.setdefault("PGPORT", "5432")
    return env


def run_suite(
    suite: str,
    source: Path,
    python: str,
    dsn: str,
    tests: list[str],
    report: Path,
    impl: str,
    timeout: int = 0,
    markers: str = "",
) -> dict[str, str]:
    env = suite_env(suite, dsn, impl)
    started = time.monotonic()
    proc = subprocess.run(
        suite_command(suite, python, dsn, tests, report, timeout, markers),
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
    )
    took = time.monotonic() - started
    report.with_suffix(".out").write_text(proc.stdout + proc.stderr)
    tail = "\n".join(proc.stdout.strip().splitlines()[-1:])
    print(f"  {took:.0f} s: {tail}", flush=True)
    if not report.exists():
        raise SystemExit(
            f"the suite produced no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return outcomes(report)


def outcomes(report: Path) -> dict[str, str]:
    """Test id -> passed | failed | error | skipped, from a JUnit XML report."""
    out: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                status = "failed" if child.tag == "failure" else "error"
                out[name + "#message"] = (child.get("message") or "")[:300]
            elif child.tag == "skipped":
                status = "skipped"
        out[name] = status
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--suite", choices=["psycopg", "sqlalchemy", "asyncpg"], default="psycopg")
    ap.add_argument("--source", type=Path, required=True, help="folder the suite runs from")
    ap.add_argument("--python", default=sys.executable, help="interpreter with the client")
    ap.add_argument("--dsn", required=True, help="libpq DSN of the database, direct")
    ap.add_argument("--impl", default="python", help="PSYCOPG_IMPL: python | binary | c")
    ap.add_argument(
        "--timeout", type=int, default=0, help="per-test timeout in seconds (pytest-timeout)"
    )
    ap.add_argument(
        "-m", "--markers", default="", help="pytest -m expression (psycopg: 'not slow')"
    )
    ap.add_argument("--out", type=Path, help="write both runs' outcomes here (JSON)")
    ap.add_argument("tests", nargs="*", help="test files or ids (default: the whole suite)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="wardgate-suites-"))
    print(f"work folder: {tmp}", flush=True)
    target = conninfo_to_dict(args.dsn)
    print(f"direct: {args.suite} against {args.dsn}", flush=True)
    direct = run_suite(
        args.suite,
        args.source,
        args.python,
        args.dsn,
        args.tests,
        tmp / "direct.xml",
        args.impl,
        args.timeout,
        args.markers,
    )
    gate, gateway_dsn = start_gateway(
        tmp, {k: str(v) for k, v in target.items()}, EXTRA_DATABASES.get(args.suite)
    )
    try:
        print("through wardgate (allow everything)", flush=True)
        through = run_suite(
            args.suite,
            args.source,
            args.python,
            gateway_dsn,
            args.tests,
            tmp / "gateway.xml",
            args.impl,
            args.timeout,
            args.markers,
        )
    finally:
        gate.terminate()
        gate.wait(30)
    print(f"gateway log: {tmp / 'wardgate.log'}")

    names = sorted(k for k in {*direct, *through} if "#" not in k)
    differ = [n for n in names if direct.get(n) != through.get(n)]
    for name in differ:
        print(f"{direct.get(name, 'absent'):>7} -> {through.get(name, 'absent'):<7} {name}")
        message = through.get(name + "#message")
        if message:
            print(f"          {message.splitlines()[0] if message else ''}")
    count_d = Counter(v for k, v in direct.items() if "#" not in k)
    count_t = Counter(v for k, v in through.items() if "#" not in k)
    for label, counts in (("direct", count_d), ("wardgate", count_t)):
        print(f"{label:<9} " + "  ".join(f"{k} {counts[k]}" for k in sorted(counts)))
    worse = [n for n in differ if direct.get(n) == "passed"]
    print(f"{len(worse)} tests pass directly but not through wardgate; {len(differ)} differ in all")
    if args.out:
        args.out.write_text(json.dumps({"direct": direct, "wardgate": through}, indent=1))


if __name__ == "__main__":
    main()
