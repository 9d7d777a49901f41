"""``wardgate masking discover`` against a real PostgreSQL fixture schema: it samples at
most --rows rows per table in a read-only transaction, proposes the columns that hold
sensitive values with their evidence, leaves out columns marked ``sensitive: false`` and
columns already under a rule, and --apply writes a rule the gateway then enforces."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.integration.conftest import (
    Gateway,
    admin_conn,
    base_config,
    make_gateway,
    scratch_database,
)
from wardgate.config import load_config

RULES = """
masking:
  rules:
    - name: cards
      columns: ["public.customers.card"]
      strategy: redact
    - name: reviewed-harmless
      columns: ["customers.legacy_contact"]
      sensitive: false
"""


@pytest.fixture(scope="module")
def shop(pg_server: None) -> Iterator[str]:
    with scratch_database("wardgate_discover_") as name:
        with admin_conn(name) as conn:
            conn.execute(
                "create table customers (id int primary key, email text, phone varchar(40),"
                " card text, iban text, note text, order_no text, status text,"
                " legacy_contact text, created date, score bigint)"
            )
            conn.execute(
                "insert into customers select i,"
                " 'person' || i || '@example.com',"
                " '+44 20 7' || lpad((100 + i)::text, 3, '0') || ' 4' || lpad(i::text, 3, '0'),"
                " '4111 1111 1111 1111',"
                " 'DE89 3704 0044 0532 0130 00',"
                " case when i % 3 = 0 then 'call back, mail p' || i || '@example.org' else 'no contact' end,"
                " 'ORD-2024-' || lpad(i::text, 6, '0'),"
                " (array['new', 'paid', 'shipped'])[1 + i % 3],"
                " 'old' || i || '@example.net', date '2024-01-01' + i, i * 17"
                " from generate_series(1, 300) i"
            )
            conn.execute("create schema crm")
            conn.execute("create table crm.leads (id int, contact text)")
            conn.execute("insert into crm.leads values (1, 'lead@example.com'), (2, NULL)")
        yield name


@pytest.fixture
def gw(shop: str, tmp_path: Path) -> Gateway:
    return make_gateway(tmp_path, base_config(shop) + RULES)


def _discover(gw: Gateway, *args: str) -> dict[str, Any]:
    out = gw.cli("masking", "discover", "it", "--rows", "50", *args).stdout
    data = yaml.safe_load(out)
    assert isinstance(data, dict), out
    return data


def test_discover_proposes_sensitive_columns_with_evidence(gw: Gateway) -> None:
    result = gw.cli("masking", "discover", "it", "--rows", "50")
    data = yaml.safe_load(result.stdout)
    evidence = {c["column"]: c for c in data["discovery"]["columns"]}
    assert set(evidence) == {
        "public.customers.email",
        "public.customers.phone",
        "public.customers.iban",
        "public.customers.note",
        "crm.leads.contact",
    }
    assert evidence["public.customers.email"]["entity"] == "email"
    assert evidence["public.customers.email"]["share"] == 1.0
    assert evidence["public.customers.email"]["sampled"] == 50  # bounded by --rows
    assert evidence["public.customers.phone"]["entity"] == "phone"
    assert evidence["public.customers.iban"]["entity"] == "iban"
    assert evidence["public.customers.note"]["entity"] == "email"
    assert 0.2 < evidence["public.customers.note"]["share"] < 0.5
    assert evidence["crm.leads.contact"]["sampled"] == 1  # NULLs are not values
    (rule,) = data["masking"]["rules"]
    assert rule["name"] == "discovered-it" and rule["connections"] == ["it"]
    assert sorted(rule["columns"]) == sorted(evidence)
    # Silenced and already-covered columns are reported, not proposed.
    assert "silenced by sensitive: false (customers.legacy_contact)" in result.stdout
    assert "already masked by column rule public.customers.card" in result.stdout
    assert "order_no" not in result.stdout and "status" not in result.stdout


def test_discover_leaves_the_target_as_it_was(gw: Gateway, shop: str) -> None:
    with admin_conn(shop) as conn:
        conn.execute("create table audit_probe (v text)")
        conn.execute("insert into audit_probe values ('probe@example.com')")
    try:
        data = _discover(gw, "--statement-timeout", "2")
        assert "public.audit_probe.v" in {c["column"] for c in data["discovery"]["columns"]}
        with admin_conn(shop) as conn:
            rows = conn.execute("select v from audit_probe").fetchall()
            assert rows == [("probe@example.com",)]
            log = conn.execute(
                "select count(*) from pg_stat_activity where application_name = 'wardgate-masking-discover'"
            ).fetchone()
            assert log == (0,)  # the session ended
    finally:
        with admin_conn(shop) as conn:
            conn.execute("drop table audit_probe")


def test_a_table_a_migration_holds_is_reported_not_waited_for(gw: Gateway, shop: str) -> None:
    """crm.leads is held in ACCESS EXCLUSIVE (a migration outside the gateway): discovery
    gives up on it within its lock wait, not its statement timeout, says so in the
    proposal and on stderr, and samples the rest, each table in a transaction of its
    own (so no lock of an earlier table is held while it waits)."""
    with admin_conn(shop) as migration:
        migration.execute("begin")
        migration.execute("lock table crm.leads in access exclusive mode")
        started = time.monotonic()
        result = gw.cli("masking", "discover", "it", "--rows", "50", "--statement-timeout", "5")
        took = time.monotonic() - started
        migration.execute("rollback")
    said = "not sampled: crm.leads: another session holds a lock on it (a migration?)"
    assert f"# {said}" in result.stdout and said in result.stderr, result.stdout
    columns = {c["column"] for c in yaml.safe_load(result.stdout)["discovery"]["columns"]}
    assert "public.customers.email" in columns and "crm.leads.contact" not in columns
    assert took < 4.5, took  # the CLI's own start included; the lock wait is 0.5 s


def test_out_writes_the_proposal_to_a_file(gw: Gateway, tmp_path: Path) -> None:
    target = tmp_path / "proposal.yaml"
    result = gw.cli("masking", "discover", "it", "--rows", "20", "--out", str(target))
    assert result.stdout == ""
    assert "public.customers.email" in target.read_text()


def test_apply_writes_a_rule_the_gateway_enforces(gw: Gateway) -> None:
    before = gw.config_path.read_text()
    gw.cli("masking", "discover", "it", "--rows", "50", "--apply", "--strategy", "redact")
    after = gw.config_path.read_text()
    assert after.startswith(before.rstrip("\n"))  # the file is kept, the rule appended
    config = load_config(gw.config_path)
    rule = next(r for r in config.masking.rules if r.name == "discovered-it")
    assert "public.customers.email" in rule.columns and rule.strategy == "redact"
    assert rule.principal_kinds == ["agent"]
    # A second run finds those columns covered and proposes nothing new.
    again = gw.cli("masking", "discover", "it", "--rows", "50")
    assert "no new sensitive column found" in again.stdout
    assert "already masked by column rule public.customers.email" in again.stdout
    # And applying again is a no-op, not a second rule.
    gw.cli("masking", "discover", "it", "--apply")
    assert gw.config_path.read_text() == after
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            email, iban = conn.execute("select email, iban from customers where id = 1").fetchone()
        with psycopg.connect(gw.dsn("reviewer"), autocommit=True) as conn:
            (clear,) = conn.execute("select email from customers where id = 1").fetchone()
    finally:
        gw.stop()
    # Column rules run in the query (redact: NULL of the column's type).
    assert email != "person1@example.com" and (iban is None or "DE89" not in iban)
    assert clear == "person1@example.com"


def test_unknown_connection_is_a_clear_error(gw: Gateway) -> None:
    result = gw.cli("masking", "discover", "nope", check=False)
    assert result.returncode == 2 and "unknown connection 'nope'" in result.stderr


def test_sensitive_false_needs_columns_only(tmp_path: Path, shop: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        base_config(shop)
        + "masking:\n  rules:\n    - {name: x, entities: [email], sensitive: false}\n"
    )
    with pytest.raises(Exception, match="sensitive: false names columns only"):
        load_config(path)
