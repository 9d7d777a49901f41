"""psql, the reference client, through the real gateway to the real server."""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import Gateway, admin_conn, require_tool


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def psql(
    gateway: Gateway,
    *args: str,
    principal: str = "dev",
    sslmode: str = "disable",
    check: bool = True,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    exe = require_tool("psql")
    env = {
        **os.environ,
        "PGPASSWORD": gateway.token(principal),
        "PGSSLMODE": sslmode,
        "PGCONNECT_TIMEOUT": "10",
    }
    for var in ("PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGAPPNAME", "PGSSLROOTCERT"):
        env.pop(var, None)
    cmd = [
        exe,
        "-X",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-p",
        str(gateway.port),
        "-U",
        principal,
        "-d",
        "it",
        *args,
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, cwd=cwd)
    if check and result.returncode != 0:
        raise AssertionError(
            f"psql {' '.join(args)} exited {result.returncode}:\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def table_exists(it_database: str, table: str) -> bool:
    with admin_conn(it_database) as conn:
        row = conn.execute("select to_regclass(%s) is not null", (table,)).fetchone()
        assert row is not None
        return bool(row[0])


def test_multi_statement_command(gateway: Gateway, it_database: str) -> None:
    t = unique("psql_multi")
    out = psql(
        gateway,
        "-At",
        "-c",
        f"create table {t} (id int primary key, name text); "
        f"insert into {t} values (1, 'one'), (2, 'two'); "
        f"select count(*) || ':' || string_agg(name, ',' order by id) from {t}",
    ).stdout
    assert "2:one,two" in out.splitlines()
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select count(*) from {t}").fetchone() == (2,)


def test_describe_commands(gateway: Gateway) -> None:
    t = unique("psql_desc")
    psql(gateway, "-c", f"create table {t} (id bigint primary key, label text not null)")
    listing = psql(gateway, "-c", r"\d").stdout
    assert t in listing
    tables = psql(gateway, "-c", r"\dt").stdout
    assert t in tables and "table" in tables
    detail = psql(gateway, "-c", rf"\d {t}").stdout
    assert f'Table "public.{t}"' in detail
    assert "bigint" in detail and "label" in detail and "not null" in detail
    assert f"{t}_pkey" in detail
    # Read-only principals can describe too: the catalogue queries are reads.
    assert t in psql(gateway, "-c", rf"\d {t}", principal="agent").stdout


def test_copy_from_and_to_file(gateway: Gateway, tmp_path: Path) -> None:
    t = unique("psql_copy")
    psql(gateway, "-c", f"create table {t} (id int, name text, note text)")
    null = "\\N"
    rows = [
        f"{i}\tname {i}\t{null if i % 7 == 0 else 'note ' + 'é' * (i % 5)}" for i in range(1, 2001)
    ]
    src = tmp_path / "in.tsv"
    src.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = psql(gateway, "-c", rf"\copy {t} from '{src}'").stdout
    assert "COPY 2000" in out
    dst = tmp_path / "out.tsv"
    out = psql(gateway, "-c", rf"\copy (select * from {t} order by id) to '{dst}'").stdout
    assert "COPY 2000" in out
    assert dst.read_text(encoding="utf-8") == src.read_text(encoding="utf-8")
    # The plain-table form too.
    dst2 = tmp_path / "out2.tsv"
    psql(gateway, "-c", rf"\copy {t} to '{dst2}'")
    assert sorted(dst2.read_text(encoding="utf-8").splitlines()) == sorted(rows)


def test_copy_from_file_blocked_for_reader(
    gateway: Gateway, tmp_path: Path, it_database: str
) -> None:
    t = unique("psql_copyro")
    psql(gateway, "-c", f"create table {t} (id int)")
    src = tmp_path / "in.tsv"
    src.write_text("1\n2\n3\n")
    result = psql(gateway, "-c", rf"\copy {t} from '{src}'", principal="agent", check=False)
    assert result.returncode != 0
    assert "wardgate: blocked by role:reader" in result.stderr
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select count(*) from {t}").fetchone() == (0,)


def test_blocked_statement_stops_script(gateway: Gateway, it_database: str) -> None:
    t = unique("psql_block")
    psql(gateway, "-c", f"create table {t} (id int)")
    result = psql(
        gateway,
        "-c",
        f"insert into {t} values (1)",
        "-c",
        f"drop table {t}",
        "-c",
        f"insert into {t} values (2)",
        check=False,
    )
    assert result.returncode != 0, result.stdout
    assert "wardgate: blocked by guardrail:no-drop" in result.stderr
    assert "Destructive DDL is blocked" in result.stderr
    assert table_exists(it_database, t)
    with admin_conn(it_database) as conn:
        # ON_ERROR_STOP: the command after the blocked one never ran.
        assert conn.execute(f"select array_agg(id) from {t}").fetchone() == ([1],)


def test_blocked_part_of_multi_statement_runs_nothing(gateway: Gateway, it_database: str) -> None:
    t = unique("psql_blockmulti")
    psql(gateway, "-c", f"create table {t} (id int)")
    result = psql(
        gateway, "-c", f"insert into {t} values (1); delete from {t}; select 1", check=False
    )
    assert result.returncode != 0
    assert "wardgate: blocked by guardrail:delete-needs-where" in result.stderr
    with admin_conn(it_database) as conn:
        assert conn.execute(f"select count(*) from {t}").fetchone() == (0,)


def test_script_file_with_transaction(gateway: Gateway, tmp_path: Path, it_database: str) -> None:
    t = unique("psql_script")
    script = tmp_path / "script.sql"
    script.write_text(
        f"create table {t} (id int);\n"
        "begin;\n"
        f"insert into {t} select generate_series(1, 10);\n"
        f"update {t} set id = id * 10 where id > 5;\n"
        "commit;\n"
        f"select sum(id) from {t};\n"
    )
    out = psql(gateway, "-At", "-f", str(script)).stdout
    assert out.strip().splitlines()[-1] == str(sum(range(1, 6)) + 10 * sum(range(6, 11)))


@pytest.mark.parametrize("sslmode", ["require", "prefer"])
def test_tls(gateway: Gateway, sslmode: str) -> None:
    out = psql(
        gateway,
        "-At",
        "-c",
        "select 'tls ok'",
        "-c",
        r"\conninfo",
        sslmode=sslmode,
    ).stdout
    assert "tls ok" in out
    assert "SSL connection" in out, out
