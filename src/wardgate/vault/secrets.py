"""Upstream credentials, encrypted at rest in the store, and resolution of secret references.

Each value is sealed with AES-256-GCM under a key derived from the master key, with a
fresh random 96-bit nonce per write and the secret's name bound in as associated data:
copying one row's ciphertext over another's name makes decryption fail instead of
quietly handing the wrong credential to the wrong connection.

No message raised here ever contains a secret value.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import delete, select

from wardgate.store.db import Store
from wardgate.store.models import SecretRow
from wardgate.vault.keys import VAULT_KEY_INFO, derive_key

NONCE_BYTES = 12
_AD_PREFIX = b"wardgate secret\x00"


class SecretError(Exception):
    """A secret cannot be resolved. The message names the reference, never a value."""


class SecretNotFound(SecretError, KeyError):
    def __str__(self) -> str:
        # KeyError would otherwise repr() its argument.
        return str(self.args[0]) if self.args else "secret not found"


def _associated_data(name: str) -> bytes:
    return _AD_PREFIX + name.encode("utf-8")


class Vault:
    def __init__(self, store: Store, master_key: bytes) -> None:
        self._store = store
        self._aead = AESGCM(derive_key(master_key, VAULT_KEY_INFO))

    def seal(self, name: str, value: str) -> tuple[bytes, bytes]:
        """``value`` encrypted for the secret ``name``: (nonce, ciphertext)."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce, self._aead.encrypt(nonce, value.encode("utf-8"), _associated_data(name))

    def unseal(self, name: str, nonce: bytes, ciphertext: bytes) -> str:
        try:
            plain = self._aead.decrypt(nonce, ciphertext, _associated_data(name))
        except InvalidTag:
            raise SecretError(
                f"secret {name!r} cannot be decrypted: a different master key, "
                "or the stored record was altered"
            ) from None
        return plain.decode("utf-8")

    def set(self, name: str, value: str) -> None:
        if not name:
            raise SecretError("a secret needs a name")
        nonce, ciphertext = self.seal(name, value)
        now = time.time()
        stmt = (
            self._store.insert(SecretRow)
            .values(name=name, nonce=nonce, ciphertext=ciphertext, created_at=now, updated_at=now)
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"nonce": nonce, "ciphertext": ciphertext, "updated_at": now},
            )
        )
        with self._store.session() as session:
            session.execute(stmt)

    def get(self, name: str) -> str:
        with self._store.session(write=False) as session:
            row = session.execute(
                select(SecretRow.nonce, SecretRow.ciphertext).where(SecretRow.name == name)
            ).one_or_none()
        if row is None:
            raise SecretNotFound(
                f"secret {name!r} is not in the vault (add it with `wardgate secret set {name}`)"
            )
        return self.unseal(name, bytes(row.nonce), bytes(row.ciphertext))

    def delete(self, name: str) -> bool:
        with self._store.session() as session:
            result = session.execute(delete(SecretRow).where(SecretRow.name == name))
            return bool(getattr(result, "rowcount", 0))

    def names(self) -> list[str]:
        with self._store.session(write=False) as session:
            return list(session.scalars(select(SecretRow.name).order_by(SecretRow.name)))


def resolve_secret(ref: str, vault: Vault | None, *, base_dir: Path | None = None) -> str:
    """Resolve ``env:NAME``, ``file:PATH`` (relative to ``base_dir``) or ``secret:NAME``."""
    scheme, sep, rest = ref.partition(":")
    if not sep or not rest:
        raise SecretError("a secret reference looks like env:NAME, file:PATH or secret:NAME")
    if scheme == "env":
        value = os.environ.get(rest)
        if value is None:
            raise SecretError(f"environment variable {rest} is not set")
        return value
    if scheme == "file":
        path = Path(rest).expanduser()
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise SecretError(f"secret file {path} is not UTF-8 text") from None
        return text.rstrip("\r\n")
    if scheme == "secret":
        if vault is None:
            raise SecretError(f"secret {rest!r} needs the vault, which is not available here")
        return vault.get(rest)
    raise SecretError(
        f"unknown secret reference scheme {scheme!r}: use env:NAME, file:PATH or secret:NAME"
    )
