from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import update
from typer.testing import CliRunner

from wardgate.actions import Action, Decision, Verdict
from wardgate.audit.recorder import Recorder
from wardgate.audit.records import ActionRecord, SessionEnd, SessionRecord
from wardgate.cli.main import app
from wardgate.identity.principals import Principal, PrincipalKind
from wardgate.identity.tokens import TokenService
from wardgate.store.db import Store
from wardgate.store.models import AuditEvent

CONFIG = """\
store: sqlite:///state/wardgate.db
data_dir: state
groups: {agents: {}, dba: {}}
principals:
  bot: {kind: agent, groups: [agents], sponsor: alice}
  alice: {kind: user, groups: [dba]}
connections:
  orders:
    type: postgres
    upstream: {host: 127.0.0.1, port: 5432, database: shop, user: app, password: secret:orders}
    roles: {agents: reader}
roles:
  reader: {read: allow}
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("WARDGATE_STORE", "WARDGATE_MASTER_KEY", "WARDGATE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "wardgate.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _store(config: Path) -> Store:
    return Store.open(f"sqlite:///{config.parent / 'state' / 'wardgate.db'}")


def _no_traceback(text: str) -> None:
    assert "Traceback" not in text


def test_config_check(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["config", "check", "-c", str(config)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "ok: 1 connections, 2 principals"


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing yet\n"])
def test_config_check_refuses_an_empty_file(runner: CliRunner, tmp_path: Path, text: str) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    result = runner.invoke(app, ["config", "check", "-c", str(empty)])
    assert result.exit_code == 2, result.output
    assert "the configuration is empty" in result.output
    _no_traceback(result.output)


def test_config_check_reports_errors_with_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("principals:\n  bot: {kind: robot}\n")
    result = runner.invoke(app, ["config", "check", "--config", str(bad)])
    assert result.exit_code == 2
    assert f"{bad}:2" in result.stderr and "principals.bot.kind" in result.stderr
    _no_traceback(result.output)
    missing = runner.invoke(app, ["config", "check", "-c", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read" in missing.stderr


def test_config_path_from_environment(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["config", "check"], env={"WARDGATE_CONFIG": str(config)})
    assert result.exit_code == 0, result.output


def test_token_create_prints_the_token_last_and_it_works(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["token", "create", "bot", "--name", "ci", "-c", str(config)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("wg_") and " " not in token
    store = _store(config)
    try:
        service = TokenService(store, b"any pepper")
        token_id = service.check_password("bot", token)
        assert token_id is not None and token_id in result.stdout
    finally:
        store.dispose()

    listed = runner.invoke(app, ["token", "list", "--json", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["principal"], r["name"], r["active"]) for r in rows] == [
        (token_id, "bot", "ci", True)
    ]
    assert token not in listed.stdout
    table = runner.invoke(app, ["token", "list", "--principal", "alice", "-c", str(config)])
    assert table.exit_code == 0 and token_id not in table.stdout

    revoked = runner.invoke(app, ["token", "revoke", token_id, "-c", str(config)])
    assert revoked.exit_code == 0, revoked.output
    again = runner.invoke(app, ["token", "revoke", token_id, "-c", str(config)])
    assert again.exit_code == 2 and "no active token" in again.stderr
    store = _store(config)
    try:
        assert TokenService(store, b"x").check_password("bot", token) is None
    finally:
        store.dispose()


def test_token_for_unknown_principal_is_refused(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(app, ["token", "create", "mallory", "-c", str(config)])
    assert result.exit_code == 2
    assert "unknown principal 'mallory'" in result.stderr
    assert result.stdout == ""
    _no_traceback(result.output)


def test_master_key_file_is_created_private(runner: CliRunner, config: Path) -> None:
    runner.invoke(app, ["token", "create", "bot", "-c", str(config)])
    key = config.parent / "state" / "master.key"
    assert key.exists() and key.stat().st_mode & 0o077 == 0


def test_secrets_never_print_values(
    runner: CliRunner, config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = "Sup3r-secret-value"
    result = runner.invoke(app, ["secret", "set", "orders", "-c", str(config)], input=value + "\n")
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("WG_TEST_SECRET", value + "-env")
    result = runner.invoke(
        app, ["secret", "set", "other", "--from-env", "WG_TEST_SECRET", "-c", str(config)]
    )
    assert result.exit_code == 0, result.output
    listed = runner.invoke(app, ["secret", "list", "-c", str(config)])
    assert listed.stdout.split() == ["orders", "other"]
    for r in (result, listed):
        assert value not in r.output

    from wardgate.config import load_config
    from wardgate.vault.keys import load_master_key
    from wardgate.vault.secrets import Vault

    store = _store(config)
    try:
        vault = Vault(store, load_master_key(load_config(config)))
        assert vault.get("orders") == value  # the trailing newline from stdin is not kept
        assert vault.get("other") == value + "-env"
    finally:
        store.dispose()

    deleted = runner.invoke(app, ["secret", "delete", "other", "-c", str(config)])
    assert deleted.exit_code == 0
    gone = runner.invoke(app, ["secret", "delete", "other", "-c", str(config)])
    assert gone.exit_code == 2 and "no secret" in gone.stderr
    missing_env = runner.invoke(
        app, ["secret", "set", "x", "--from-env", "WG_NOT_SET_ANYWHERE", "-c", str(config)]
    )
    assert missing_env.exit_code == 2 and "WG_NOT_SET_ANYWHERE" in missing_env.stderr
    empty = runner.invoke(app, ["secret", "set", "x", "-c", str(config)], input="")
    assert empty.exit_code == 2


def _record_session(config: Path, session_id: str = "s_1") -> None:
    bot = Principal("bot", PrincipalKind.AGENT, frozenset({"agents"}), "alice")

    async def record(store: Store) -> None:
        rec = Recorder(store)
        await rec.start()
        rec.submit(
            SessionRecord(session_id, "postgres", bot, "orders", "10.1.2.3:555", time.time())
        )
        for seq, (text, decision) in enumerate(
            [
                ("SELECT * FROM orders WHERE id = $1", Decision.ALLOW),
                ("DROP TABLE t", Decision.BLOCK),
            ]
        ):
            action = Action(bot, "orders", "postgres", "query", text, ("42",), session_id)
            verdict = Verdict(decision, "no-drop" if seq else "role:reader", "because")
            status = "blocked" if seq else "ok"
            rec.submit(ActionRecord(session_id, seq, action, verdict, time.time(), 1.25, status, 1))
        rec.submit(SessionEnd(session_id, time.time()))
        await rec.close()

    store = _store(config)
    try:
        asyncio.run(record(store))
    finally:
        store.dispose()


def test_sessions_list_and_show(runner: CliRunner, config: Path) -> None:
    _record_session(config)
    listed = runner.invoke(app, ["sessions", "list", "--json", "-c", str(config)])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["action_count"], r["blocked_count"]) for r in rows] == [("s_1", 2, 1)]
    assert (
        json.loads(
            runner.invoke(
                app, ["sessions", "list", "--json", "--principal", "alice", "-c", str(config)]
            ).stdout
        )
        == []
    )
    table = runner.invoke(app, ["sessions", "list", "--connection", "orders", "-c", str(config)])
    assert table.exit_code == 0 and "s_1" in table.stdout

    shown = runner.invoke(app, ["sessions", "show", "s_1", "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "DROP TABLE t" in shown.stdout and "no-drop" in shown.stdout
    assert '["42"]' in shown.stdout and "blocked" in shown.stdout
    as_json = json.loads(
        runner.invoke(app, ["sessions", "show", "s_1", "--json", "-c", str(config)]).stdout
    )
    assert [a["text"] for a in as_json["actions"]] == [
        "SELECT * FROM orders WHERE id = $1",
        "DROP TABLE t",
    ]
    unknown = runner.invoke(app, ["sessions", "show", "nope", "-c", str(config)])
    assert unknown.exit_code == 2 and "no session" in unknown.stderr


def test_audit_verify_ok_then_broken(runner: CliRunner, config: Path) -> None:
    _record_session(config)
    ok = runner.invoke(app, ["audit", "verify", "-c", str(config)])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.strip() == "ok: 4 events, chain intact"
    store = _store(config)
    try:
        with store.session() as s:
            s.execute(update(AuditEvent).where(AuditEvent.id == 3).values(payload="{}"))
    finally:
        store.dispose()
    broken = runner.invoke(app, ["audit", "verify", "-c", str(config)])
    assert broken.exit_code == 1
    assert broken.stdout.startswith("BROKEN at event 3:")


def test_unreachable_store_is_a_clean_error(runner: CliRunner, config: Path) -> None:
    result = runner.invoke(
        app,
        ["audit", "verify", "-c", str(config)],
        env={"WARDGATE_STORE": "postgresql://postgres:hunter2@127.0.0.1:1/nothing"},
    )
    assert result.exit_code == 2
    assert "cannot open the store" in result.stderr and "hunter2" not in result.output
    _no_traceback(result.output)


def test_installed_entry_point_runs(config: Path) -> None:
    exe = Path(sys.executable).with_name("wardgate")
    proc = subprocess.run(
        [str(exe), "token", "create", "nobody", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "unknown principal" in proc.stderr and "Traceback" not in proc.stderr


def _on_a_terminal(argv: list[str], columns: int) -> str:
    """``argv`` run on a pseudo-terminal ``columns`` wide (not piped): what it printed."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=60)
    os.close(leader)
    return b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("columns", [40, 200])
def test_sessions_list_never_cuts_a_session_id(
    runner: CliRunner, config: Path, monkeypatch: pytest.MonkeyPatch, columns: int
) -> None:
    long_id = "s_" + "0123456789abcdef" * 2 + "tail"
    _record_session(config, long_id)
    monkeypatch.setenv("COLUMNS", str(columns))
    piped = runner.invoke(app, ["sessions", "list", "-c", str(config)])
    assert piped.exit_code == 0, piped.output
    assert long_id in piped.stdout and "…" not in piped.stdout
    wardgate = str(Path(sys.executable).with_name("wardgate"))
    shown = _on_a_terminal([wardgate, "sessions", "list", "-c", str(config)], columns)
    assert long_id in shown.replace("\r\n", "\n"), shown
    assert "…" not in shown
