"""Every supported PostgreSQL version (14 to 17), each a real server: the catalogue files
the classifier trusts hold for each of them, and syntax a newer grammar reads specially
but an older server reads as a call of a user-definable function is judged as such a
call through the real gateway, proven by the server's state."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT, missing
from tests.integration.conftest import Gateway, make_gateway
from tests.integration.pg_versions import WHEELS, Server, Unavailable, start
from wardgate.policy.functions import BUILTIN_READ_ONLY, READ_ONLY_VOLATILE
from wardgate.policy.settings import catalogue

pytestmark = pytest.mark.integration
OTHER_MAJORS = [m for m in sorted(WHEELS) if m != 15]  # 15 is the machine's own server


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, str]]:
    """major -> DSN of a superuser on that server (15: the local one)."""
    started: list[Server] = []
    dsns = {15: f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"}
    try:
        for major in OTHER_MAJORS:
            try:
                server = start(major)
            except Unavailable as exc:
                missing(f"PostgreSQL {major}: {exc}")
                raise
            started.append(server)
            dsns[major] = server.dsn
        yield dsns
    finally:
        for server in started:
            server.stop()


def _setup(dsn: str, database: str) -> str:
    """A fresh database with a write log and a writing function named json_scalar, as an
    attacker with an approved CREATE FUNCTION (or the application) could leave behind."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'drop database if exists "{database}"')
        conn.execute(f'create database "{database}"')
    db_dsn = dsn.rsplit("/", 1)[0] + "/" + database
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("create table write_log (what text)")
        conn.execute(
            "create function public.json_scalar(int) returns int language sql as "
            "$$ insert into write_log values ('json_scalar ran'); select 1 $$"
        )
        conn.execute("grant all on write_log to public")
    return db_dsn


def _writes(db_dsn: str) -> int:
    with psycopg.connect(db_dsn) as conn:
        row = conn.execute("select count(*) from write_log").fetchone()
    return int(row[0]) if row else -1


@pytest.fixture(scope="module")
def versions_gw(
    servers: dict[int, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Gateway, dict[int, str]]]:
    db_dsns = {major: _setup(dsn, "wardgate_versions") for major, dsn in servers.items()}
    connections = "".join(
        f"""
  v{major}:
    type: postgres
    upstream: {{host: 127.0.0.1, port: {dsn.rsplit(":", 1)[1].split("/")[0]}, database: wardgate_versions, user: postgres, tls: disable, privileged: true}}
    roles: {{agents: reader, engineers: engineer}}"""
        for major, dsn in servers.items()
    )
    text = f"""
groups: {{agents: {{}}, engineers: {{}}}}
principals:
  agent: {{kind: agent, groups: [agents], sponsor: dev}}
  dev: {{kind: user, groups: [engineers]}}
connections:{connections}
roles:
  reader: {{read: allow, write: block, ddl: block, admin: block}}
  engineer: {{read: allow, write: allow, ddl: allow, admin: block}}
"""
    gw = make_gateway(tmp_path_factory.mktemp("versions") / "gw", text)
    gw.start()
    yield gw, db_dsns
    gw.stop()
    for major, dsn in servers.items():
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("drop database if exists wardgate_versions (force)")
        del major


@pytest.mark.parametrize("major", [14, 15, 16, 17])
def test_user_definable_syntax_is_judged_as_a_call_on_every_version(
    versions_gw: tuple[Gateway, dict[int, str]], major: int
) -> None:
    gw, db_dsns = versions_gw
    with psycopg.connect(gw.dsn("agent", f"v{major}"), autocommit=True) as conn:
        assert conn.execute("select lower('A'), version()").fetchone()[0] == "a"  # type: ignore[index]
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="unknown_function"):
            conn.execute("select json_scalar(1)")
        assert conn.execute("select 1").fetchone() == (1,)
    assert _writes(db_dsns[major]) == 0
    # A human allowed to write runs it: on 14, 15 and 16 it is the user's function.
    with psycopg.connect(gw.dsn("dev", f"v{major}"), autocommit=True) as conn:
        conn.execute("select json_scalar(1)")
    assert _writes(db_dsns[major]) == (0 if major >= 17 else 1)


@pytest.mark.parametrize("major", [14, 15, 16, 17])
def test_the_catalogue_files_hold_for_every_version(servers: dict[int, str], major: int) -> None:
    """Every function the classifier trusts as a read-only built-in is one on this server
    (STABLE or IMMUTABLE, in pg_catalog or information_schema); every setting the server
    has is in pg_settings.txt with its context."""
    with psycopg.connect(servers[major]) as conn:
        volatile = {
            r[0]
            for r in conn.execute(
                "select distinct lower(proname) from pg_proc where pronamespace in "
                "('pg_catalog'::regnamespace, 'information_schema'::regnamespace) "
                "and provolatile = 'v'"
            )
        }
        builtin = {
            r[0]
            for r in conn.execute(
                "select distinct lower(proname) from pg_proc where pronamespace in "
                "('pg_catalog'::regnamespace, 'information_schema'::regnamespace)"
            )
        }
        settings = {
            r[0]: r[1] for r in conn.execute("select lower(name), context from pg_settings")
        }
    trusted = BUILTIN_READ_ONLY - READ_ONLY_VOLATILE
    assert trusted <= builtin, sorted(trusted - builtin)[:20]
    # The hand-checked VOLATILE read-only list names real built-ins of this version
    # (or ones it lacks, which the server then refuses).
    assert READ_ONLY_VOLATILE & volatile, "the hand list should name volatile built-ins"
    known = catalogue()
    assert set(settings) <= set(known), sorted(set(settings) - set(known))
    order = [
        "user",
        "superuser",
        "backend",
        "superuser-backend",
        "sighup",
        "postmaster",
        "internal",
    ]
    for name, context in settings.items():
        assert order.index(known[name].context) >= order.index(context), name


def test_the_pinned_builds_are_the_versions_declared() -> None:
    from wardgate.postgres.versions import SUPPORTED_MAJORS

    assert sorted(WHEELS) == list(SUPPORTED_MAJORS)
    assert Path(__file__).with_name("pg_versions.py").exists()
