"""SSH public keys of principals: what the SSH gateway accepts instead of a token."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import delete, select

from wardgate.store.db import Store
from wardgate.store.models import PrincipalKey


class KeyError_(ValueError):
    """The text is not an SSH public key, or the key is already registered."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    fingerprint: str
    principal: str
    public_key: str
    comment: str
    created_at: float


def parse_public_key(text: str) -> tuple[str, str, str]:
    """(OpenSSH one-line key without comment, SHA256 fingerprint, comment)."""
    from wardgate.sshlib import USER_KEY_TYPES, asyncssh

    line = text.strip()
    key_type = line.split(None, 1)[0] if line else ""
    if key_type == "ssh-dss":
        raise KeyError_("DSA keys (ssh-dss) are not accepted; register an ed25519 key instead")
    if key_type not in USER_KEY_TYPES:
        raise KeyError_(
            f"not an SSH public key of a supported type (got {key_type[:40]!r}; "
            "expected one of " + ", ".join(sorted(USER_KEY_TYPES)) + ")"
        )
    try:
        key = asyncssh.import_public_key(line)
    except (asyncssh.KeyImportError, ValueError) as exc:
        raise KeyError_(f"not an SSH public key: {exc}") from None
    comment = line.split(None, 2)[2] if len(line.split(None, 2)) == 3 else ""
    exported = key.export_public_key("openssh").decode().split()
    return " ".join(exported[:2]), key.get_fingerprint("sha256"), comment


class SshKeys:
    def __init__(self, store: Store) -> None:
        self._store = store

    def add(self, principal: str, text: str) -> KeyInfo:
        public_key, fingerprint, comment = parse_public_key(text)
        with self._store.session() as session:
            existing = session.get(PrincipalKey, fingerprint)
            if existing is not None:
                raise KeyError_(f"this key is already registered for {existing.principal!r}")
            row = PrincipalKey(
                fingerprint=fingerprint,
                principal=principal,
                public_key=public_key,
                comment=comment[:200],
                created_at=time.time(),
            )
            session.add(row)
        return KeyInfo(fingerprint, principal, public_key, comment, row.created_at)

    def remove(self, fingerprint: str) -> bool:
        with self._store.session() as session:
            result = session.execute(
                delete(PrincipalKey).where(PrincipalKey.fingerprint == fingerprint)
            )
            return bool(getattr(result, "rowcount", 0))

    def list(self, principal: str | None = None) -> list[KeyInfo]:
        stmt = select(PrincipalKey).order_by(PrincipalKey.principal, PrincipalKey.created_at)
        if principal is not None:
            stmt = stmt.where(PrincipalKey.principal == principal)
        with self._store.session(write=False) as session:
            return [
                KeyInfo(r.fingerprint, r.principal, r.public_key, r.comment, r.created_at)
                for r in session.scalars(stmt)
            ]

    def principal_for(self, fingerprint: str) -> str | None:
        with self._store.session(write=False) as session:
            row = session.get(PrincipalKey, fingerprint)
            return None if row is None else row.principal
