"""`wardgate secret rotate-master-key`: every secret re-encrypted under the new key in one
transaction, token lookups and pseudonyms unchanged, a wrong current key changes nothing."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.cli.test_cli import CONFIG
from typer.testing import CliRunner

from wardgate.cli.main import app
from wardgate.identity.tokens import TokenService
from wardgate.store.db import Store
from wardgate.store.models import SecretRow
from wardgate.vault.keyring import Keyring
from wardgate.vault.keys import MASKING_KEY_INFO, decode_key, derive_key
from wardgate.vault.secrets import SecretError, Vault


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("WARDGATE_STORE", "WARDGATE_MASTER_KEY", "WARDGATE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "wardgate.yaml"
    path.write_text(CONFIG)
    return path


def run(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=env, input=input)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def store_of(config: Path) -> Store:
    return Store.open(f"sqlite:///{config.parent / 'state' / 'wardgate.db'}")


def ciphertexts(config: Path) -> dict[str, bytes]:
    with store_of(config) as store, store.session(write=False) as session:
        return {r.name: bytes(r.ciphertext) for r in session.scalars(select(SecretRow))}


def test_rotation_reencrypts_secrets_and_keeps_tokens_and_pseudonyms(
    config: Path, tmp_path: Path
) -> None:
    c = str(config)
    for name, value in (("orders", "s3cret-1"), ("billing/api", "tok en 2")):
        assert run("secret", "set", name, "-c", c, input=value)[0] == 0
    code, out = run("token", "create", "bot", "-c", c)
    assert code == 0
    token = out.strip().splitlines()[-1]
    key_file = config.parent / "state" / "master.key"
    old = decode_key(key_file.read_bytes(), "old")
    before = ciphertexts(config)

    new_file = tmp_path / "new.key"
    code, out = run(
        "secret", "rotate-master-key", "--generate", "--new-key-file", str(new_file), "-c", c
    )
    assert code == 0, out
    assert "re-encrypted 2 secrets" in out and "installed the new key" in out
    assert new_file.stat().st_mode & 0o077 == 0
    new = decode_key(new_file.read_bytes(), "new")
    assert key_file.read_bytes() == new_file.read_bytes()  # the embedded gateway's key
    assert key_file.stat().st_mode & 0o077 == 0

    after = ciphertexts(config)
    assert after.keys() == before.keys()
    assert all(after[n] != before[n] for n in after)
    with store_of(config) as store:
        assert Vault(store, new).get("orders") == "s3cret-1"
        assert Vault(store, new).get("billing/api") == "tok en 2"
        with pytest.raises(SecretError, match="different master key"):
            Vault(store, old).get("orders")
        keyring = Keyring(store, new)
        # Tokens made before still find their row; pseudonyms keep their key.
        info = TokenService(store, keyring.token_pepper()).check_bearer(token)
        assert info is not None and info.principal == "bot"
        assert keyring.masking_key() == derive_key(old, MASKING_KEY_INFO)
    code, out = run("secret", "list", "-c", c)
    assert code == 0 and out.split() == ["billing/api", "orders"]

    # A second rotation carries the same keys on.
    newer_file = tmp_path / "newer.key"
    assert (
        run(
            "secret", "rotate-master-key", "--generate", "--new-key-file", str(newer_file), "-c", c
        )[0]
        == 0
    )
    newer = decode_key(newer_file.read_bytes(), "newer")
    with store_of(config) as store:
        keyring = Keyring(store, newer)
        assert TokenService(store, keyring.token_pepper()).check_bearer(token) is not None
        assert keyring.masking_key() == derive_key(old, MASKING_KEY_INFO)
        assert Vault(store, newer).get("orders") == "s3cret-1"


def test_a_wrong_current_key_changes_nothing(config: Path, tmp_path: Path) -> None:
    c = str(config)
    assert run("secret", "set", "orders", "-c", c, input="s3cret")[0] == 0
    before = ciphertexts(config)
    wrong = base64.b64encode(os.urandom(32)).decode()
    new_file = tmp_path / "new.key"
    code, out = run(
        "secret", "rotate-master-key", "--generate", "--new-key-file", str(new_file), "-c", c,
        env={"WARDGATE_MASTER_KEY": wrong},
    )  # fmt: skip
    assert code == 2
    assert "does not open with the current master key" in out and "Nothing was changed" in out
    assert ciphertexts(config) == before
    assert wrong not in out


def test_rotation_with_an_env_key_says_what_to_do_next(config: Path, tmp_path: Path) -> None:
    c = str(config)
    old = base64.b64encode(os.urandom(32)).decode()
    env = {"WARDGATE_MASTER_KEY": old}
    assert run("secret", "set", "orders", "-c", c, env=env, input="s3cret")[0] == 0
    new_file = tmp_path / "new.key"
    new_file.write_text(old + "\n")
    code, out = run(
        "secret", "rotate-master-key", "--new-key-file", str(new_file), "-c", c, env=env
    )
    assert code == 2 and "is the current one" in out
    new_file.unlink()
    code, out = run(
        "secret", "rotate-master-key", "--generate", "--new-key-file", str(new_file), "-c", c,
        env=env,
    )  # fmt: skip
    assert code == 0, out
    assert "restart them" in out and "installed" not in out
    assert not (config.parent / "state" / "master.key").exists()
    assert old not in out and new_file.read_text().strip() not in out
    code, out = run(
        "secret",
        "rotate-master-key",
        "--generate",
        "--new-key-file",
        str(new_file),
        "-c",
        c,
        env=env,
    )
    assert code == 2 and "exists" in out  # --generate never overwrites a key


def test_the_cli_does_not_load_prometheus_client() -> None:
    """`wardgate serve` must choose the metrics mode before prometheus_client is imported
    (it fixes where values live at import): the CLI module itself must not import it."""
    code = "import sys, wardgate.cli.main; print('prometheus_client' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_healthcheck_says_why_not_ready(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Probe(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            ready = self.path == "/healthz"
            body = json.dumps({"status": "ok"} if ready else {"problems": ["draining: bye"]})
            self.send_response(200 if ready else 503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    config = tmp_path / "wardgate.yaml"
    config.write_text(f"listen: {{api: '0.0.0.0:{server.server_port}'}}\n")
    monkeypatch.delenv("WARDGATE_LISTEN_API", raising=False)
    try:
        code, out = run("healthcheck", "-c", str(config))
        assert code == 1 and "not ready: draining: bye" in out
        code, out = run("healthcheck", "--live", "-c", str(config))
        assert (
            code == 0 and f"127.0.0.1:{server.server_port}/healthz" in out
        )  # wildcard -> loopback
    finally:
        server.shutdown()
        server.server_close()
    code, out = run("healthcheck", "-c", str(config))  # nothing listens now
    assert code == 1 and "no answer from" in out
