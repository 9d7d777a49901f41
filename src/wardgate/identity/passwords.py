"""Local users' passwords: argon2id hashes in the store, set by ``wardgate user add``.

Only humans (principals of kind ``user``) have one; the web UI is the only place a
password is accepted. Checking an unknown user costs the same argon2 work as a known
one, so timing does not tell which names exist.
"""

from __future__ import annotations

import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select

from wardgate.store.db import Store
from wardgate.store.models import UserPassword

MIN_LENGTH = 12
MAX_LENGTH = 1024


class PasswordPolicyError(ValueError):
    pass


class UserPasswords:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._hasher = PasswordHasher()  # argon2id, the library's RFC 9106 defaults
        # Verified against when the user has no password: same cost, never matches.
        self._dummy = self._hasher.hash("wardgate: no such user")

    def set(self, principal: str, password: str) -> None:
        if len(password) < MIN_LENGTH:
            raise PasswordPolicyError(f"a password needs at least {MIN_LENGTH} characters")
        if len(password) > MAX_LENGTH:
            raise PasswordPolicyError(f"a password has at most {MAX_LENGTH} characters")
        hashed = self._hasher.hash(password)
        stmt = (
            self._store.insert(UserPassword)
            .values(principal=principal, hash=hashed, updated_at=time.time())
            .on_conflict_do_update(
                index_elements=["principal"], set_={"hash": hashed, "updated_at": time.time()}
            )
        )
        with self._store.session() as session:
            session.execute(stmt)

    def remove(self, principal: str) -> bool:
        with self._store.session() as session:
            result = session.execute(
                delete(UserPassword).where(UserPassword.principal == principal)
            )
            return bool(getattr(result, "rowcount", 0))

    def users(self) -> list[tuple[str, float]]:
        with self._store.session(write=False) as session:
            rows = session.execute(
                select(UserPassword.principal, UserPassword.updated_at).order_by(
                    UserPassword.principal
                )
            ).all()
        return [(r.principal, r.updated_at) for r in rows]

    def verify(self, principal: str, password: str) -> bool:
        if len(password) > MAX_LENGTH:
            return False
        with self._store.session(write=False) as session:
            stored = session.scalar(
                select(UserPassword.hash).where(UserPassword.principal == principal)
            )
        try:
            ok = self._hasher.verify(stored or self._dummy, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
        if stored is None:
            return False
        if ok and self._hasher.check_needs_rehash(stored):
            self.set(principal, password)
        return ok
