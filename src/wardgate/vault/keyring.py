"""Keys that must outlive a master key, and rotating the master key.

Most keys derived from the master key protect something it can re-protect: the vault's
secrets are simply re-encrypted under a new master key. Two derived keys are different:
their outputs are *stored* or *shown*, and cannot be recomputed without the original
input. The token pepper keys the HMAC that finds a bearer token's row (the token itself
is never kept), and the masking key makes the pseudonyms already in recordings and in
people's spreadsheets. Changing either would sign out every HTTP/MCP/SSH token and
rename every pseudonym. So the first rotation moves them into the ``keyring`` table,
sealed (AES-256-GCM, purpose bound as associated data) under the new master key; from
then on they are read from there and carried over by each rotation.

``rotate_master_key`` does everything in one store transaction: a wrong current key, an
unreadable secret or a failed check leaves the store as it was.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select

from wardgate.store.db import Store
from wardgate.store.models import KeyringRow, SecretRow
from wardgate.vault.keys import MASKING_KEY_INFO, TOKEN_PEPPER_INFO, derive_key
from wardgate.vault.secrets import NONCE_BYTES, SecretError, Vault

KEYRING_KEY_INFO = b"wardgate keyring aes-256-gcm v1"
# purpose -> how the first master key derived it
CARRIED = {"token-pepper": TOKEN_PEPPER_INFO, "masking": MASKING_KEY_INFO}


class KeyringError(Exception):
    """The keyring or a rotation cannot proceed. Never contains key bytes."""


def _aead(master_key: bytes) -> AESGCM:
    return AESGCM(derive_key(master_key, KEYRING_KEY_INFO))


def _ad(purpose: str) -> bytes:
    return b"wardgate keyring\x00" + purpose.encode()


class Keyring:
    """The carried keys, as the gateway and the CLI read them."""

    def __init__(self, store: Store, master_key: bytes) -> None:
        self._store = store
        self._master = master_key

    def token_pepper(self) -> bytes:
        return self.key("token-pepper")

    def masking_key(self) -> bytes:
        return self.key("masking")

    def key(self, purpose: str) -> bytes:
        with self._store.session(write=False) as session:
            row = session.get(KeyringRow, purpose)
            sealed = None if row is None else (bytes(row.nonce), bytes(row.ciphertext))
        return _current(purpose, sealed, self._master)


def _current(purpose: str, sealed: tuple[bytes, bytes] | None, master_key: bytes) -> bytes:
    if sealed is None:  # never rotated: still derived from this (first) master key
        return derive_key(master_key, CARRIED[purpose])
    try:
        return _aead(master_key).decrypt(sealed[0], sealed[1], _ad(purpose))
    except InvalidTag:
        raise KeyringError(
            f"the keyring entry {purpose!r} does not open with this master key: the gateway "
            "runs with another key than the last `wardgate secret rotate-master-key` set"
        ) from None


@dataclass(frozen=True)
class Rotation:
    secrets: int
    carried: tuple[str, ...]


def rotate_master_key(store: Store, current: bytes, new: bytes) -> Rotation:
    """Re-encrypt every vault secret and the carried keys from ``current`` to ``new``, in
    one transaction, checking each value opens under ``new`` before committing."""
    if current == new:
        raise KeyringError("the new master key is the current one: nothing to rotate")
    old_vault, new_vault = Vault(store, current), Vault(store, new)
    new_aead = _aead(new)
    now = time.time()
    with store.session() as session:
        secrets_q = select(SecretRow).order_by(SecretRow.name)
        keys_q = select(KeyringRow)
        if store.dialect == "postgresql":
            # Nobody sets a secret under the old key between our read and our write.
            secrets_q, keys_q = secrets_q.with_for_update(), keys_q.with_for_update()
        rows = list(session.scalars(secrets_q))
        for row in rows:
            try:
                value = old_vault.unseal(row.name, bytes(row.nonce), bytes(row.ciphertext))
            except SecretError:
                raise KeyringError(
                    f"secret {row.name!r} does not open with the current master key: is it the "
                    "key the gateways run with? Nothing was changed"
                ) from None
            row.nonce, row.ciphertext = new_vault.seal(row.name, value)
            row.updated_at = now
            if new_vault.unseal(row.name, row.nonce, row.ciphertext) != value:
                raise KeyringError(f"secret {row.name!r} did not survive re-encryption")
        stored = {row.purpose: row for row in session.scalars(keys_q)}
        for purpose in CARRIED:
            entry = stored.get(purpose)
            sealed = None if entry is None else (bytes(entry.nonce), bytes(entry.ciphertext))
            key = _current(purpose, sealed, current)
            nonce = os.urandom(NONCE_BYTES)
            ciphertext = new_aead.encrypt(nonce, key, _ad(purpose))
            if _current(purpose, (nonce, ciphertext), new) != key:
                raise KeyringError(f"keyring entry {purpose!r} did not survive re-encryption")
            if entry is None:
                session.add(
                    KeyringRow(purpose=purpose, nonce=nonce, ciphertext=ciphertext, updated_at=now)
                )
            else:
                entry.nonce, entry.ciphertext, entry.updated_at = nonce, ciphertext, now
    return Rotation(len(rows), tuple(CARRIED))
