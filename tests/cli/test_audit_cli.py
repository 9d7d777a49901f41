"""`wardgate audit keygen | checkpoint | verify --checkpoint`: a rewrite-and-rehash of
the SQLite store, done the way someone with the database file would, is caught."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.store.test_checkpoint import rewrite_and_rehash
from typer.testing import CliRunner

from wardgate.audit.chain import NewEvent, append
from wardgate.audit.sink import Sink, stream_new
from wardgate.cli.main import app
from wardgate.store.db import Store


def _config(tmp_path: Path, key: Path | None) -> Path:
    path = tmp_path / "wardgate.yaml"
    audit = f"audit:\n  checkpoint: {{key: {key}, interval: 1m}}\n" if key else ""
    path.write_text(f"store: sqlite:///state/wardgate.db\ndata_dir: state\n{audit}")
    return path


def _append(config: Path, n: int) -> None:
    store = Store.open(f"sqlite:///{config.parent / 'state' / 'wardgate.db'}")
    try:
        append(
            store,
            [
                NewEvent(1_700_000_000.0 + i, "action", "s1", "bot", "orders", {"text": f"q{i}"})
                for i in range(n)
            ],
        )
    finally:
        store.dispose()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("WARDGATE_STORE", "WARDGATE_MASTER_KEY", "WARDGATE_CONFIG"):
        monkeypatch.delenv(var, raising=False)


def test_keygen_checkpoint_verify_and_a_rehashed_rewrite(tmp_path: Path) -> None:
    runner = CliRunner()
    key = tmp_path / "keys" / "checkpoint.key"
    key.parent.mkdir()
    made = runner.invoke(app, ["audit", "keygen", "--out", str(key)])
    assert made.exit_code == 0, made.output
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    pub = Path(f"{key}.pub")
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    # Never overwrites a key.
    assert runner.invoke(app, ["audit", "keygen", "--out", str(key)]).exit_code == 2

    config = _config(tmp_path, key)
    _append(config, 6)
    cp_file = tmp_path / "checkpoint.json"
    exported = runner.invoke(
        app, ["audit", "checkpoint", "--now", "-o", str(cp_file), "-c", str(config)]
    )
    assert exported.exit_code == 0, exported.output
    cp = json.loads(cp_file.read_text())
    assert cp["seq"] == 6 and len(cp["head_hash"]) == 64 and cp["signature"] and cp["key_id"]
    assert cp["time"].endswith("+00:00")
    # Plain stdout export is the same checkpoint.
    again = runner.invoke(app, ["audit", "checkpoint", "-c", str(config)])
    assert json.loads(again.stdout) == cp

    verify = ["audit", "verify", "--checkpoint", str(cp_file), "--public-key", str(pub)]
    ok = runner.invoke(app, [*verify, "-c", str(config)])
    assert ok.exit_code == 0, ok.output
    assert "ok: 6 events" in ok.stdout and "match the checkpoint" in ok.stdout

    _append(config, 2)  # events after the checkpoint are not its business
    store = Store.open(f"sqlite:///{config.parent / 'state' / 'wardgate.db'}")
    copy = tmp_path / "audit.jsonl"
    try:
        stream_new(store, Sink(copy))  # what audit.sink.file holds by now
        rewrite_and_rehash(store, 3, "drop table x")
    finally:
        store.dispose()
    plain = runner.invoke(app, ["audit", "verify", "-c", str(config)])
    assert plain.exit_code == 0  # the unsigned chain cannot tell
    caught = runner.invoke(app, [*verify, "-c", str(config)])
    assert caught.exit_code == 1, caught.output
    assert "BROKEN at event 1" in caught.stdout
    assert "event 6 does not match the checkpoint" in caught.stdout
    assert "events 1..6" in caught.stdout
    # The copy outside the store names the exact event, and every re-hashed one after it.
    named = runner.invoke(app, ["audit", "verify", "--sink", str(copy), "-c", str(config)])
    assert named.exit_code == 1, named.output
    assert named.stdout.splitlines()[0] == (
        "DIFFERS from the sink: event 3 (action, session s1): the store's content differs "
        "from the copy in the sink"
    )
    assert "BROKEN: 6 stored events differ" in named.stdout


def test_checkpoint_errors_are_sentences(tmp_path: Path) -> None:
    runner = CliRunner()
    config = _config(tmp_path, None)
    _append(config, 1)
    none = runner.invoke(app, ["audit", "checkpoint", "-c", str(config)])
    assert none.exit_code == 2 and "no signed checkpoint" in none.stderr
    unset = runner.invoke(app, ["audit", "checkpoint", "--now", "-c", str(config)])
    assert unset.exit_code == 2 and "audit.checkpoint.key is not set" in unset.stderr
    half = runner.invoke(app, ["audit", "verify", "--checkpoint", "x.json", "-c", str(config)])
    assert half.exit_code == 2 and "--checkpoint needs --public-key" in half.stderr
    bad_key = tmp_path / "bad.key"
    bad_key.write_text("not a key\n")
    broken = runner.invoke(
        app, ["audit", "checkpoint", "--now", "-c", str(_config(tmp_path, bad_key))]
    )
    assert broken.exit_code == 2 and "not an Ed25519 private key" in broken.stderr
    assert "Traceback" not in broken.output
