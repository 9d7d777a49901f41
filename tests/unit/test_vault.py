from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from wardgate.config import Config
from wardgate.store.db import Store
from wardgate.store.models import SecretRow
from wardgate.vault.keys import MasterKeyError, load_master_key, token_pepper
from wardgate.vault.secrets import SecretError, SecretNotFound, Vault, resolve_secret

KEY = bytes(range(32))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.open(f"sqlite:///{tmp_path / 'wardgate.db'}")
    yield s
    s.dispose()


@pytest.fixture(autouse=True)
def _no_master_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WARDGATE_MASTER_KEY", raising=False)


def _config(tmp_path: Path, **fields: object) -> Config:
    return Config.model_validate({"base_dir": str(tmp_path), **fields})


# -- Vault ------------------------------------------------------------------------------


def test_set_get_overwrite_list_delete(store: Store) -> None:
    vault = Vault(store, KEY)
    vault.set("orders/pg", "p@ss wörd")
    vault.set("billing", "other")
    assert vault.get("orders/pg") == "p@ss wörd"
    vault.set("orders/pg", "rotated")
    assert vault.get("orders/pg") == "rotated"
    assert vault.names() == ["billing", "orders/pg"]
    assert vault.delete("billing") is True
    assert vault.delete("billing") is False
    assert vault.names() == ["orders/pg"]


def test_missing_secret_is_a_key_error_naming_the_secret(store: Store) -> None:
    with pytest.raises(SecretNotFound) as info:
        Vault(store, KEY).get("nope")
    assert isinstance(info.value, KeyError)
    assert "nope" in str(info.value) and "wardgate secret set" in str(info.value)


def test_ciphertext_is_not_plaintext_and_each_write_has_a_fresh_nonce(store: Store) -> None:
    vault = Vault(store, KEY)
    vault.set("a", "correct horse battery staple")
    with store.session(write=False) as s:
        first = s.execute(select(SecretRow.nonce, SecretRow.ciphertext)).one()
    vault.set("a", "correct horse battery staple")
    with store.session(write=False) as s:
        second = s.execute(select(SecretRow.nonce, SecretRow.ciphertext)).one()
    assert b"correct horse" not in bytes(first.ciphertext)
    assert len(first.nonce) == 12
    assert first.nonce != second.nonce and first.ciphertext != second.ciphertext


def test_ciphertext_swapped_between_names_does_not_decrypt(store: Store) -> None:
    vault = Vault(store, KEY)
    vault.set("prod", "prod-password-123")
    vault.set("staging", "staging-password-456")
    with store.session() as s:
        prod = s.get(SecretRow, "prod")
        assert prod is not None
        s.execute(
            update(SecretRow)
            .where(SecretRow.name == "staging")
            .values(nonce=prod.nonce, ciphertext=prod.ciphertext)
        )
    assert vault.get("prod") == "prod-password-123"
    with pytest.raises(SecretError) as info:
        vault.get("staging")
    assert "prod-password" not in str(info.value) and "staging-password" not in str(info.value)


def test_wrong_master_key_fails_cleanly(store: Store) -> None:
    Vault(store, KEY).set("x", "value-xyz")
    with pytest.raises(SecretError) as info:
        Vault(store, bytes(32)).get("x")
    assert "master key" in str(info.value) and "value-xyz" not in str(info.value)


# -- resolve_secret ---------------------------------------------------------------------


def test_resolve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WG_TEST_PW", "from-env")
    assert resolve_secret("env:WG_TEST_PW", None) == "from-env"
    monkeypatch.delenv("WG_TEST_PW")
    with pytest.raises(SecretError, match="WG_TEST_PW"):
        resolve_secret("env:WG_TEST_PW", None)


def test_resolve_file_strips_the_trailing_newline(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret  \n")
    assert resolve_secret(f"file:{tmp_path / 'pw'}", None) == "s3cret  "
    assert resolve_secret("file:pw", None, base_dir=tmp_path) == "s3cret  "
    with pytest.raises(SecretError, match="cannot read"):
        resolve_secret("file:missing", None, base_dir=tmp_path)


def test_resolve_vault_secret(store: Store) -> None:
    vault = Vault(store, KEY)
    vault.set("pg", "vaulted")
    assert resolve_secret("secret:pg", vault) == "vaulted"
    with pytest.raises(SecretNotFound):
        resolve_secret("secret:other", vault)
    with pytest.raises(SecretError, match="vault"):
        resolve_secret("secret:pg", None)
    with pytest.raises(SecretError, match="scheme"):
        resolve_secret("literal:pg", vault)


# -- master key -------------------------------------------------------------------------


def test_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    config = _config(tmp_path, data_dir="data")
    key = load_master_key(config)
    path = tmp_path / "data" / "master.key"
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_master_key(config) == key
    assert token_pepper(key) != key and len(token_pepper(key)) == 32


def test_group_readable_key_file_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path)
    load_master_key(config)
    path = tmp_path / ".wardgate" / "master.key"
    os.chmod(path, 0o640)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(config)


def test_key_from_environment_base64_and_base64url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = bytes([0xFB, 0xFF] * 16)  # encodes differently in base64 and base64url
    config = _config(tmp_path)
    for text in (
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        monkeypatch.setenv("WARDGATE_MASTER_KEY", text)
        assert load_master_key(config) == raw
    assert not (tmp_path / ".wardgate").exists()
    monkeypatch.setenv("WARDGATE_MASTER_KEY", base64.b64encode(b"short").decode())
    with pytest.raises(MasterKeyError, match="32 bytes"):
        load_master_key(config)


def test_key_from_config_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = os.urandom(32)
    (tmp_path / "k").write_text(base64.b64encode(raw).decode() + "\n")
    assert load_master_key(_config(tmp_path, master_key="file:k")) == raw
    monkeypatch.setenv("WG_KEY", base64.urlsafe_b64encode(raw).decode())
    assert load_master_key(_config(tmp_path, master_key="env:WG_KEY")) == raw
    monkeypatch.setenv("WG_KEY", "not base64 at all!")
    with pytest.raises(MasterKeyError) as info:
        load_master_key(_config(tmp_path, master_key="env:WG_KEY"))
    assert "not base64 at all" not in str(info.value)
    with pytest.raises(MasterKeyError, match="WG_MISSING"):
        load_master_key(_config(tmp_path, master_key="env:WG_MISSING"))
