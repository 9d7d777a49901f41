"""attack14g: the catalogue watch's facts across reloads. Facts are kept per connection
name for the life of the process; a reload that points a name at another database must
not keep judging it with the old database's facts."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import admin_conn, base_config, make_gateway, scratch_database

pytestmark = pytest.mark.usefixtures("pg_server")


def _config(database: str) -> str:
    """base_config plus `rv`, an agent whose writes need a review on `it`."""
    return (
        base_config(database)
        .replace("groups: {agents: {}, ", "groups: {agents: {}, rv_agents: {}, ")
        .replace(
            "  agent: {kind: agent, groups: [agents], sponsor: dev}\n",
            "  agent: {kind: agent, groups: [agents], sponsor: dev}\n"
            "  rv: {kind: agent, groups: [rv_agents], sponsor: dev}\n",
        )
        .replace(
            "roles: {agents: reader, engineers: engineer}\n",
            "roles: {agents: reader, rv_agents: proposer, engineers: engineer}\n"
            "    reviews: {wait: 0s, max_wait: 30s, preview: none}\n",
            1,
        )
        .replace(
            "roles:\n  reader:",
            "reviews: {approvers: [approvers], sponsor_may_approve: false}\n"
            "roles:\n  proposer: {read: allow, write: review, ddl: block, admin: block}\n"
            "  reader:",
        )
    )


@pytest.mark.parametrize("who", ["agent", "rv"])
def test_a_reload_that_points_a_connection_at_another_database_forgets_its_facts(
    tmp_path: Path, who: str
) -> None:
    """`it` first reaches a database without user code; the watch reads it. A reload
    points `it` at a database whose volatile `bump(int)` writes: `(3).bump` is
    `bump(3)`. Before, the kept facts ("read, no user code") judged it as a read for a
    read-only agent (or one whose writes need a review) until the watch's next round (30 s), and it wrote."""
    with scratch_database("wardgate_14g_a_") as clean, scratch_database("wardgate_14g_b_") as other:
        with admin_conn(other) as c:
            c.execute("create table hits (n int)")
            c.execute(
                "create function public.bump(int) returns int language sql volatile as"
                " $$ insert into public.hits values ($1); select $1 $$"
            )
        gw = make_gateway(tmp_path, _config(clean))
        gw.start()
        try:
            with psycopg.connect(gw.dsn(who), autocommit=True) as conn:
                assert conn.execute("select 1 + 1").fetchone() == (2,)  # `it` was read
            gw.reload(_config(other), timeout=10)
            with psycopg.connect(gw.dsn(who), autocommit=True) as conn:
                with pytest.raises(psycopg.errors.Error) as refused:
                    conn.execute("select (3).bump")
                assert "ReadOnlySqlTransaction" not in type(refused.value).__name__, refused.value
                assert conn.execute("select 1 + 1").fetchone() == (2,)  # looked at: runs
            with admin_conn(other) as c:
                assert c.execute("select count(*) from hits").fetchone() == (0,)
        finally:
            gw.stop()


@pytest.mark.parametrize("who", ["agent", "rv"])
def test_a_first_postgres_connection_a_reload_adds_is_watched(tmp_path: Path, who: str) -> None:
    """The gateway starts with no PostgreSQL connection; a reload adds one whose
    volatile `bump(int)` writes. Before, the catalogue watch started only where a
    PostgreSQL connection was configured at start: it never ran, the gate judged the
    added connection as having no user code, and `(3).bump` ran as a read."""
    with scratch_database("wardgate_14g_c_") as other:
        with admin_conn(other) as c:
            c.execute("create table hits (n int)")
            c.execute(
                "create function public.bump(int) returns int language sql volatile as"
                " $$ insert into public.hits values ($1); select $1 $$"
            )
        full = _config(other)
        empty = re.sub(r"connections:\n(?:  .*\n)*", "connections: {}\n", full)
        assert "it:" not in empty and "roles:\n" in empty
        gw = make_gateway(tmp_path, empty)
        gw.start()
        try:
            gw.reload(full, timeout=10)
            with psycopg.connect(gw.dsn(who), autocommit=True) as conn:
                with pytest.raises(psycopg.errors.Error) as refused:
                    conn.execute("select (3).bump")
                assert "ReadOnlySqlTransaction" not in type(refused.value).__name__, refused.value
                assert conn.execute("select 1 + 1").fetchone() == (2,)
            with admin_conn(other) as c:
                assert c.execute("select count(*) from hits").fetchone() == (0,)
        finally:
            gw.stop()
