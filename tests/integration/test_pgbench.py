"""pgbench through the real gateway: initialisation, then select-only runs with the
simple and prepared protocols, and a short read-write run with the extended protocol.

`pgbench -i` drops and truncates its tables and runs VACUUM, which the shared gateway's
guardrails and roles block, so this module starts its own gateway in front of a
dedicated database, with an `owner` principal allowed everything and no guardrails.
The benchmark itself runs as `dev` (role engineer: no admin, so `-n`: no VACUUM).
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PG_HOST, PG_PORT, PG_USER
from tests.integration.conftest import Gateway, admin_conn, make_gateway, require_tool


def bench_config(database: str) -> str:
    return textwrap.dedent(
        f"""\
        groups: {{owners: {{}}, engineers: {{}}}}
        principals:
          owner: {{kind: user, groups: [owners]}}
          dev: {{kind: user, groups: [engineers]}}
        connections:
          bench:
            type: postgres
            upstream: {{host: {PG_HOST}, port: {PG_PORT}, database: {database}, user: {PG_USER}, tls: disable}}
            roles: {{owners: full, engineers: engineer}}
        roles:
          full: {{read: allow, write: allow, ddl: allow, admin: allow}}
          engineer: {{read: allow, write: allow, ddl: allow, admin: block}}
        limits: {{max_message_bytes: 4194304}}
        """
    )


@pytest.fixture(scope="module")
def bench_gateway(pg_server: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    require_tool("pgbench")
    database = f"wardgate_pgbench_{uuid.uuid4().hex[:8]}"
    with admin_conn() as conn:
        conn.execute(f'create database "{database}"')
    gw = make_gateway(tmp_path_factory.mktemp("pgbench"), bench_config(database))
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()
        with admin_conn() as conn:
            conn.execute(
                "select pg_terminate_backend(pid) from pg_stat_activity where datname = %s",
                (database,),
            )
            conn.execute(f'drop database if exists "{database}"')


def pgbench(
    gateway: Gateway, principal: str, *args: str, sslmode: str = "disable", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PGPASSWORD": gateway.token(principal),
        "PGSSLMODE": sslmode,  # libpq's default ("prefer") would hide which one was used
        "PGCONNECT_TIMEOUT": "10",
    }
    for var in ("PGSERVICE", "PGOPTIONS", "PGAPPNAME", "PGDATABASE", "PGUSER"):
        env.pop(var, None)
    cmd = [
        require_tool("pgbench"),
        "-h",
        "127.0.0.1",
        "-p",
        str(gateway.port),
        "-U",
        principal,
        *args,
        "bench",
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def check_run(result: subprocess.CompletedProcess[str], what: str) -> float:
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"pgbench {what} exited {result.returncode}:\n{out}"
    failed = re.search(r"number of failed transactions: (\d+)", out)
    assert failed is not None, f"pgbench {what}: no failure count in:\n{out}"
    assert int(failed.group(1)) == 0, f"pgbench {what} had failed transactions:\n{out}"
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    assert processed is not None and int(processed.group(1)) > 0, out
    tps = re.search(r"tps = ([0-9.]+)", out)
    assert tps is not None and float(tps.group(1)) > 0, out
    return float(tps.group(1))


@pytest.fixture(scope="module")
def initialised(bench_gateway: Gateway) -> Gateway:
    # The default steps: drop, create tables, client-side generate (TRUNCATE + COPY),
    # vacuum, primary keys.
    result = pgbench(bench_gateway, "owner", "-i", "-s", "1", "-q")
    out = result.stdout + result.stderr
    assert result.returncode == 0, f"pgbench -i exited {result.returncode}:\n{out}"
    assert "done in" in out, out
    return bench_gateway


def _database_of(gateway: Gateway) -> str:
    text = Path(gateway.config_path).read_text()
    match = re.search(r"database: (wardgate_pgbench_\w+)", text)
    assert match is not None
    return match.group(1)


def test_init_created_the_tables(initialised: Gateway) -> None:
    with admin_conn(_database_of(initialised)) as conn:
        counts = conn.execute(
            "select (select count(*) from pgbench_accounts), (select count(*) from pgbench_branches),"
            " (select count(*) from pgbench_tellers),"
            " (select count(*) from pg_indexes where tablename like 'pgbench_%%' and indexname like '%%_pkey')"
        ).fetchone()
    assert counts == (100_000, 1, 10, 3)


def test_init_is_blocked_for_engineers(initialised: Gateway) -> None:
    # dev has no admin rights: VACUUM is refused (pgbench reports it and stops).
    result = pgbench(initialised, "dev", "-i", "-I", "v")
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "wardgate: blocked by role:engineer" in out, out


@pytest.mark.parametrize(("protocol", "sslmode"), [("simple", "disable"), ("prepared", "require")])
def test_select_only(initialised: Gateway, protocol: str, sslmode: str) -> None:
    result = pgbench(
        initialised,
        "dev",
        "-n",
        "-S",
        "-M",
        protocol,
        "-c",
        "4",
        "-j",
        "2",
        "-T",
        "5",
        sslmode=sslmode,
    )
    tps = check_run(result, f"-S -M {protocol}")
    print(f"pgbench -S -M {protocol} sslmode={sslmode}: {tps:.0f} tps")


def test_read_write_extended(initialised: Gateway) -> None:
    # The TPC-B-like script: BEGIN, UPDATE ... WHERE (x3), SELECT, INSERT, END.
    result = pgbench(initialised, "dev", "-n", "-M", "extended", "-c", "4", "-t", "100")
    check_run(result, "tpcb-like -M extended")
    assert "number of transactions actually processed: 400/400" in result.stdout
    with admin_conn(_database_of(initialised)) as conn:
        assert conn.execute("select count(*) from pgbench_history").fetchone() == (400,)
