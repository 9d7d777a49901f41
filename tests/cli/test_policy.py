"""`wardgate policy check/test/replay/reload`, run as the installed command.

Replay and reload run against a real gateway in front of the real PostgreSQL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest
from tests.integration import conftest as integration
from tests.integration.conftest import Gateway, base_config, make_gateway

# The real PostgreSQL the integration tests use (skipped without it, failed under CI).
pg_server = integration.pg_server
it_database = integration.it_database

WARDGATE = str(Path(sys.executable).with_name("wardgate"))

# base_config's roles, and the edits that make them stricter or looser.
ENGINEER = "engineer: {read: allow, write: allow, ddl: allow"
ENGINEER_NO_WRITE = "engineer: {read: allow, write: block, ddl: allow"
READER = "reader: {read: allow, write: block, ddl: block"
READER_WITH_DDL = "reader: {read: allow, write: block, ddl: allow"
OBSERVED_ROLES = "    roles: {agents: reader, engineers: engineer}\n"  # connection it
AGENT_PRINCIPAL = "  agent: {kind: agent, groups: [agents], sponsor: dev}\n"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WARDGATE_")}
    return {**env, **extra}


def wardgate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [WARDGATE, *args],
        env=env if env is not None else _clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def _no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in result.stdout + result.stderr


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "wardgate.yaml"
    path.write_text(base_config("shop"))
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


# -- check ----------------------------------------------------------------------------


def test_check_prints_verdict_rules_and_statements(config: Path) -> None:
    blocked = wardgate(
        "policy", "check", "-c", str(config), "--connection", "it", "--principal", "agent",
        "DROP TABLE orders",
    )  # fmt: skip
    assert blocked.returncode == 0, blocked.stderr  # a query, whatever the verdict
    out = blocked.stdout
    assert out.splitlines()[0] == "verdict    block"
    assert "guardrail:no-drop" in out and "Destructive DDL is blocked" in out
    assert "statement 1: ddl (drop)" in out and "writes     orders" in out

    allowed = wardgate(
        "policy", "check", "-c", str(config), "--connection", "it", "--principal", "dev",
        "SELECT o.id, lower(o.note) FROM shop.orders o",
    )  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.splitlines()[:2] == ["verdict    allow", "rule       role:engineer"]
    assert "reads      shop.orders" in allowed.stdout
    assert "functions  lower" in allowed.stdout


def test_check_json(config: Path) -> None:
    result = wardgate(
        "policy", "check", "-c", str(config), "--connection", "it", "--principal", "dev",
        "--json", "SELECT 1 FROM a; DELETE FROM b",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["decision"] == "block"
    assert data["rule"] == "guardrail:delete-needs-where"
    assert "guardrail:delete-needs-where" in data["rules"]
    assert data["enforced"] is True and data["reason"]
    assert [(s["class"], s["tables_read"], s["tables_written"]) for s in data["statements"]] == [
        ("read", ["a"], []),
        ("write", [], ["b"]),
    ]
    assert "delete" in data["statements"][1]["kinds"]


def test_check_names_unknown_principal_or_connection_and_lists_known(config: Path) -> None:
    bad_principal = wardgate(
        "policy", "check", "-c", str(config), "--connection", "it", "--principal", "bob",
        "SELECT 1",
    )  # fmt: skip
    assert bad_principal.returncode == 2
    assert "unknown principal 'bob'" in bad_principal.stderr
    assert "agent, dev, outsider, reviewer" in bad_principal.stderr
    bad_connection = wardgate(
        "policy", "check", "-c", str(config), "--connection", "prod", "--principal", "dev",
        "SELECT 1",
    )  # fmt: skip
    assert bad_connection.returncode == 2
    assert "unknown connection 'prod'" in bad_connection.stderr
    assert "down, it" in bad_connection.stderr
    broken = config.parent / "broken.yaml"
    broken.write_text("roles:\n  reader: {read: maybe}\n")
    bad_config = wardgate(
        "policy", "check", "-c", str(broken), "--connection", "it", "--principal", "dev", "x"
    )
    assert bad_config.returncode == 2 and f"{broken}:2" in bad_config.stderr
    for result in (bad_principal, bad_connection, bad_config):
        assert result.stdout == ""
        _no_traceback(result)


# -- test -----------------------------------------------------------------------------

PASSING_CASES = """\
- name: agents read
  connection: it
  principal: agent
  sql: SELECT * FROM orders
  expect: allow
- {connection: it, principal: agent, sql: DROP TABLE orders, expect: block, rule: "guardrail:no-drop"}
- {connection: it, principal: dev, sql: "DELETE FROM orders WHERE id = 1", expect: allow}
"""


def test_policy_test_all_pass(config: Path) -> None:
    cases = _write(config.parent / "cases.yaml", PASSING_CASES)
    result = wardgate("policy", "test", "-c", str(config), str(cases))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == "3 passed, 0 failed\n"


def test_the_worked_example_cases_pass() -> None:
    """docs/policy.md points at examples/readonly-agent-cases.yaml as the example to
    run in CI next to its config: it must pass."""
    examples = Path(__file__).resolve().parents[2] / "examples"
    result = wardgate(
        "policy",
        "test",
        "-c",
        str(examples / "readonly-agent.yaml"),
        str(examples / "readonly-agent-cases.yaml"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.endswith(" passed, 0 failed\n"), result.stdout


def test_policy_test_reports_each_failing_case(config: Path) -> None:
    cases = _write(
        config.parent / "cases.yaml",
        PASSING_CASES
        + """\
- name: agents may not write
  connection: it
  principal: agent
  sql: |
    INSERT INTO orders (id, note)
    VALUES (1, 'a note long enough that the statement has to be shortened in the report')
  expect: allow
- {connection: it, principal: dev, sql: CREATE TABLE t (a int), expect: allow, rule: "guardrail:x"}
""",
    )
    result = wardgate("policy", "test", "-c", str(config), str(cases))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "3 passed, 2 failed"
    assert len(lines) == 3
    first, second = lines[:2]
    assert first.startswith(f"{cases}:8: FAIL case 4 'agents may not write': agent on it: ")
    assert "INSERT INTO orders (id, note) VALUES" in first and "..." in first
    assert "shortened in the report" not in first
    assert "expected allow, got block by role:reader" in first and "write statements" in first
    assert second.startswith(f"{cases}:15: FAIL case 5: dev on it: CREATE TABLE t (a int)")
    assert "expected allow by guardrail:x, got allow by role:engineer" in second


def test_policy_test_malformed_cases_file(config: Path) -> None:
    cases = _write(
        config.parent / "cases.yaml",
        """\
        - connection: it
          principal: agnet
          sql: SELECT 1
          expected: allow
        - {connection: it, principal: dev, sql: SELECT 1, expect: deny}
        - just a string
        """,
    )
    result = wardgate("policy", "test", "-c", str(config), str(cases))
    assert result.returncode == 2
    assert result.stdout == ""  # no case ran
    err = result.stderr
    assert f"{cases}:2: case 1: unknown principal 'agnet'" in err
    assert f"{cases}:4: case 1: unknown key 'expected'" in err
    assert f"{cases}:1: case 1: missing expect" in err
    assert f"{cases}:5: case 2: expect must be one of allow, review, block, got 'deny'" in err
    assert f"{cases}:6: case 3: expected a mapping" in err
    _no_traceback(result)

    not_a_list = _write(config.parent / "map.yaml", "connection: it\n")
    result = wardgate("policy", "test", "-c", str(config), str(not_a_list))
    assert result.returncode == 2 and f"{not_a_list}: expected a YAML list" in result.stderr
    broken = _write(config.parent / "broken.yaml", "- {connection: it\n")
    result = wardgate("policy", "test", "-c", str(config), str(broken))
    assert result.returncode == 2 and f"{broken}:2: invalid YAML" in result.stderr
    missing = wardgate("policy", "test", "-c", str(config), str(config.parent / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read the cases file" in missing.stderr


# -- replay ---------------------------------------------------------------------------


def _record_traffic(gw: Gateway) -> None:
    """Five actions: three allowed for dev, one allowed and one blocked for the agent."""
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("CREATE TEMP TABLE replay_agent (a int)")
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE replay_dev (a int)")
            conn.execute("INSERT INTO replay_dev VALUES (1)")
            assert conn.execute("SELECT count(*) FROM replay_dev").fetchone() == (1,)
    finally:
        gw.stop()  # the recorder writes its last batch before the process ends


def test_replay_reports_newly_blocked_and_newly_allowed(it_database: str, tmp_path: Path) -> None:
    gw = make_gateway(tmp_path / "gw", base_config(it_database))
    _record_traffic(gw)
    original = gw.config_path.read_text()
    strict = tmp_path / "strict.yaml"
    strict.write_text(original.replace(ENGINEER, ENGINEER_NO_WRITE).replace(AGENT_PRINCIPAL, ""))
    loose = tmp_path / "loose.yaml"
    loose.write_text(original.replace(READER, READER_WITH_DDL))
    assert strict.read_text() != original and loose.read_text() != original

    # The gateway's store comes from WARDGATE_STORE, as for every other command.
    result = wardgate("policy", "replay", "-c", str(strict), env=gw.env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.splitlines()[-1] == (
        "checked 5 actions: 2 newly blocked, 0 newly allowed, 3 unchanged"
    )
    assert "newly blocked (2):" in out
    assert (
        "dev on it  allow by role:engineer -> block by role:engineer  INSERT INTO replay_dev"
        in (out)
    )
    assert "agent on it  allow by role:reader -> block by unknown-principal  SELECT 1" in out
    assert f"principal 'agent' is not in {strict}" in out

    result = wardgate("policy", "replay", "-c", str(loose), "--json", env=gw.env)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["checked"], data["newly_blocked"], data["unchanged"]) == (5, [], 4)
    [changed] = data["newly_allowed"]
    assert changed["principal"] == "agent" and changed["connection"] == "it"
    assert changed["text"] == "CREATE TEMP TABLE replay_agent (a int)"
    assert changed["old"]["decision"] == "block" and changed["old"]["rule"] == "role:reader"
    assert changed["new"]["decision"] == "allow" and changed["new"]["rule"] == "role:reader"

    # --store instead of the environment; --since and --limit narrow the window.
    store = ["--store", gw.env["WARDGATE_STORE"]]
    recent = wardgate("policy", "replay", "-c", str(loose), *store, "--since", "1h")
    assert recent.stdout.splitlines()[-1].startswith("checked 5 actions:"), recent.stderr
    future = wardgate("policy", "replay", "-c", str(loose), *store, "--since", "2999-01-01")
    assert future.stdout == "checked 0 actions: 0 newly blocked, 0 newly allowed, 0 unchanged\n"
    newest = wardgate("policy", "replay", "-c", str(strict), *store, "--limit", "2")
    assert newest.stdout.splitlines()[-1] == (
        "checked 2 actions: 1 newly blocked, 0 newly allowed, 1 unchanged"
    )
    assert "only the newest 2 actions" in newest.stdout

    no_store = wardgate("policy", "replay", "-c", str(loose))  # its own store does not exist
    assert no_store.returncode == 2 and "no store at" in no_store.stderr
    bad_since = wardgate("policy", "replay", "-c", str(loose), *store, "--since", "yesterday")
    assert bad_since.returncode == 2 and "--since 'yesterday'" in bad_since.stderr
    _no_traceback(bad_since)


def test_replay_compares_outcomes_observed_actions_ran(it_database: str, tmp_path: Path) -> None:
    enforcing = base_config(it_database)
    observing = enforcing.replace(OBSERVED_ROLES, OBSERVED_ROLES + "    mode: observe\n", 1)
    assert "mode: observe" in observing
    gw = make_gateway(tmp_path / "gw", observing)
    gw.start()
    try:
        with psycopg.connect(gw.dsn("agent"), autocommit=True) as conn:
            conn.execute("SELECT 1")
            try:  # judged block, observed: it runs (PostgreSQL may still refuse it)
                conn.execute("CREATE TEMP TABLE observed_t (a int)")
            except psycopg.errors.ReadOnlySqlTransaction:
                pass
    finally:
        gw.stop()
    same = wardgate("policy", "replay", "-c", str(gw.config_path), env=gw.env)
    assert same.stdout == "checked 2 actions: 0 newly blocked, 0 newly allowed, 2 unchanged\n", (
        same.stderr
    )
    enforced = tmp_path / "enforced.yaml"
    enforced.write_text(enforcing)
    result = wardgate("policy", "replay", "-c", str(enforced), env=gw.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "checked 2 actions: 1 newly blocked, 0 newly allowed, 1 unchanged"
    )
    assert (
        "agent on it  block by role:reader (observed) -> block by role:reader  "
        "CREATE TEMP TABLE observed_t (a int)"
    ) in result.stdout


# -- reload ---------------------------------------------------------------------------


def _wait_for_log(gw: Gateway, text: str, count: int = 1, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while gw.log.count(text) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not {count} times in the gateway log:\n{gw.log}")
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [1, 2])
def test_reload_applies_to_open_sessions_and_refuses_a_broken_file(
    it_database: str, tmp_path: Path, workers: int
) -> None:
    good = f"workers: {workers}\n" + base_config(it_database)
    gw = make_gateway(tmp_path, good)
    pidfile = tmp_path / ".wardgate" / "wardgate.pid"
    gw.start()
    try:
        assert gw.proc is not None
        assert pidfile.read_text().strip() == str(gw.proc.pid)
        with psycopg.connect(gw.dsn("dev"), autocommit=True) as conn:
            conn.execute("CREATE TEMP TABLE reload_t (a int)")
            conn.execute("INSERT INTO reload_t VALUES (1)")

            # Engineers lose write; the open session is refused its next INSERT.
            gw.config_path.write_text(good.replace(ENGINEER, ENGINEER_NO_WRITE))
            reloaded = gw.cli("policy", "reload")
            assert f"sent SIGHUP to wardgate (pid {gw.proc.pid})" in reloaded.stdout
            _wait_for_log(gw, "config reloaded", count=workers)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO reload_t VALUES (2)")
            assert conn.execute("SELECT count(*) FROM reload_t").fetchone() == (1,)

            # A broken file is refused before any signal; the stricter policy stays.
            gw.config_path.write_text(good.replace(ENGINEER, "engineer: {read: maybe"))
            refused = gw.cli("policy", "reload", check=False)
            assert refused.returncode == 1
            assert (
                f"{gw.config_path}:" in refused.stderr and "roles.engineer.read" in refused.stderr
            )
            assert "not reloaded" in refused.stderr and refused.stdout == ""
            _no_traceback(refused)
            time.sleep(0.5)
            assert "config reload refused" not in gw.log  # never signalled
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("INSERT INTO reload_t VALUES (3)")
            assert conn.execute("SELECT count(*) FROM reload_t").fetchone() == (1,)
    finally:
        gw.stop()
    assert not pidfile.exists()
    gw.config_path.write_text(good)
    stopped = gw.cli("policy", "reload", check=False)
    assert stopped.returncode == 2 and "no gateway is running" in stopped.stderr
    _no_traceback(stopped)


def test_reload_never_signals_a_stranger_behind_a_stale_pidfile(config: Path) -> None:
    pidfile = config.parent / ".wardgate" / "wardgate.pid"
    pidfile.parent.mkdir()
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        pidfile.write_text(f"{stranger.pid}\n")
        result = wardgate("policy", "reload", "-c", str(config))
        assert result.returncode == 2
        assert f"pid {stranger.pid}" in result.stderr and "not a wardgate process" in result.stderr
        time.sleep(0.2)
        assert stranger.poll() is None  # SIGHUP would have ended it
    finally:
        stranger.kill()
        stranger.wait()
    result = wardgate("policy", "reload", "-c", str(config))  # now an exited pid
    assert result.returncode == 2
    assert f"pid {stranger.pid} from {pidfile} has exited" in result.stderr
    pidfile.write_text("garbage\n")
    result = wardgate("policy", "reload", "-c", str(config))
    assert result.returncode == 2 and "does not hold a process id" in result.stderr
