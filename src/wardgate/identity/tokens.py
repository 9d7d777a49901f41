"""wardgate tokens: what clients present instead of the real database password.

A token is only ever shown once, by ``wardgate token create``. The store keeps the SCRAM
keys derived from it (StoredKey, ServerKey) and nothing else, so a stolen store does not
yield a usable token and the proxy can run SCRAM-SHA-256 against the client.

SCRAM announces the salt before the client has proven which token it holds, so all tokens
of one principal share a per-principal salt, and the proxy tries the client's proof
against each non-revoked key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, select, update
from sqlalchemy.orm import Session

from wardgate.identity.scram import ScramKeys, ScramVerifierSet, derive_keys
from wardgate.store.db import Store
from wardgate.store.models import PrincipalSalt, TokenRow

TOKEN_PREFIX = "wg_"
# PBKDF2 iterations of the SCRAM keys of new principals' tokens. Key stretching makes
# guessing a *human* password slower; a wardgate token is 32 random bytes, which no
# number of guesses reaches, stored key or not. 4096 (RFC 7677's SHOULD, written for
# passwords) cost every login about 1.5 ms of the client's CPU, the largest single part
# of connection setup through the gateway (docs/performance.md); PostgreSQL 16 made its
# own count settable (scram_iterations) for the same reason.
ITERATIONS = 256
SALT_BYTES = 16
# last_used_at is written at most this often per token and process: a login then costs
# no store write, and "last used" stays accurate to about a minute.
TOUCH_INTERVAL = 60.0
# How long a gateway process reuses a principal's SCRAM keys read from the store at a
# login (TokenService.cached_verifiers) before reading them again: the bound on how
# long a token revoked by another process (the CLI, another worker) still logs in
# here, and on how long logins go on here from what was read while the store has
# become unreachable. A token created since is found at once (a proof no cached key
# matches is checked again against the store). docs/configuration.md, "Tokens".
VERIFIER_CACHE_SECONDS = 2.0
_VERIFIER_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    id: str
    token: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    id: str
    principal: str
    name: str
    created_at: float
    revoked_at: float | None
    last_used_at: float | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


# Built once: constructing a select() costs more than running it on SQLite.
_VERIFIERS = (
    select(
        PrincipalSalt.salt,
        PrincipalSalt.iterations,
        TokenRow.id,
        TokenRow.stored_key,
        TokenRow.server_key,
    )
    .select_from(PrincipalSalt)
    .outerjoin(
        TokenRow,
        and_(TokenRow.principal == PrincipalSalt.principal, TokenRow.revoked_at.is_(None)),
    )
    .where(PrincipalSalt.principal == bindparam("principal"))
    .order_by(TokenRow.created_at, TokenRow.id)
)


def _new_token_id() -> str:
    # 40 random bits in lowercase base32: short enough to type, unique enough for a
    # table of tokens (a collision only makes create() retry).
    return "tok_" + base64.b32encode(secrets.token_bytes(5)).decode("ascii").lower()


def _new_token() -> str:
    # urlsafe base64 ([A-Za-z0-9_-]) needs no escaping in a postgresql:// URL or a
    # .pgpass line and is unchanged by SASLprep.
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenService:
    def __init__(self, store: Store, pepper: bytes) -> None:
        self._store = store
        self._pepper = pepper
        self._touched: dict[str, float] = {}
        # principal -> (monotonic time read from the store, its keys): see
        # VERIFIER_CACHE_SECONDS. Filled from threads; single dict operations only.
        self._verifier_cache: dict[str, tuple[float, ScramVerifierSet]] = {}

    def create(self, principal: str, name: str = "") -> IssuedToken:
        token = _new_token()
        now = time.time()
        for _attempt in range(5):
            token_id = _new_token_id()
            with self._store.session() as session:
                salt, iterations = self._salt_for_update(session, principal)
                if session.get(TokenRow, token_id) is not None:
                    continue
                keys = derive_keys(token, salt, iterations, token_id)
                session.add(
                    TokenRow(
                        id=token_id,
                        principal=principal,
                        name=name,
                        stored_key=keys.stored_key,
                        server_key=keys.server_key,
                        created_at=now,
                        lookup=self._lookup(token),
                    )
                )
            self._verifier_cache.pop(principal, None)
            return IssuedToken(token_id, token)
        raise RuntimeError("could not allocate a unique token id")  # pragma: no cover

    def _salt_for_update(self, session: Session, principal: str) -> tuple[bytes, int]:
        # Insert-if-absent, then read: two processes creating a principal's first token
        # at once must end up with one salt (the loser's insert is a no-op).
        stmt = (
            self._store.insert(PrincipalSalt)
            .values(
                principal=principal, salt=secrets.token_bytes(SALT_BYTES), iterations=ITERATIONS
            )
            .on_conflict_do_nothing(index_elements=["principal"])
        )
        session.execute(stmt)
        row = session.execute(
            select(PrincipalSalt.salt, PrincipalSalt.iterations).where(
                PrincipalSalt.principal == principal
            )
        ).one()
        if int(row.iterations) != ITERATIONS and not self._has_live_token(session, principal):
            # A principal from before the count changed, with no token left: renew its
            # salt, so that it looks like every other principal (and unknown names) again.
            salt = secrets.token_bytes(SALT_BYTES)
            session.execute(
                update(PrincipalSalt)
                .where(PrincipalSalt.principal == principal)
                .values(salt=salt, iterations=ITERATIONS)
            )
            return salt, ITERATIONS
        return bytes(row.salt), int(row.iterations)

    @staticmethod
    def _has_live_token(session: Session, principal: str) -> bool:
        return (
            session.execute(
                select(TokenRow.id)
                .where(TokenRow.principal == principal, TokenRow.revoked_at.is_(None))
                .limit(1)
            ).first()
            is not None
        )

    def revoke(self, token_id: str) -> bool:
        with self._store.session() as session:
            result = session.execute(
                update(TokenRow)
                .where(TokenRow.id == token_id, TokenRow.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            revoked = bool(getattr(result, "rowcount", 0))
        # Revoked through this process (the API): no login here on cached keys after it.
        self._verifier_cache.clear()
        return revoked

    def list(self, principal: str | None = None) -> list[TokenInfo]:
        stmt = select(TokenRow).order_by(TokenRow.principal, TokenRow.created_at, TokenRow.id)
        if principal is not None:
            stmt = stmt.where(TokenRow.principal == principal)
        with self._store.session(write=False) as session:
            return [
                TokenInfo(r.id, r.principal, r.name, r.created_at, r.revoked_at, r.last_used_at)
                for r in session.scalars(stmt)
            ]

    def get(self, token_id: str) -> TokenInfo | None:
        with self._store.session(write=False) as session:
            r = session.get(TokenRow, token_id)
            if r is None:
                return None
            return TokenInfo(r.id, r.principal, r.name, r.created_at, r.revoked_at, r.last_used_at)

    def _lookup(self, token: str) -> str:
        mac = hmac.new(self._pepper, b"wardgate bearer\x00" + token.encode(), hashlib.sha256)
        return mac.hexdigest()

    def check_bearer(self, token: str) -> TokenInfo | None:
        """The active token an HTTP client presents (``Authorization: Bearer``), or None.

        Found by its HMAC, then proven like a password against its SCRAM keys, so a
        store whose lookup column was tampered with cannot make one token pass for another.
        """
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        with self._store.session(write=False) as session:
            row = session.scalars(
                select(TokenRow).where(
                    TokenRow.lookup == self._lookup(token), TokenRow.revoked_at.is_(None)
                )
            ).one_or_none()
            if row is None:
                return None
            info = TokenInfo(
                row.id, row.principal, row.name, row.created_at, row.revoked_at, row.last_used_at
            )
        if self.check_password(info.principal, token) != info.id:
            return None
        return info

    def fake_salt(self, principal: str) -> bytes:
        """The salt shown for a principal without tokens: stable across calls and gateway
        processes (same pepper), so probing cannot tell "unknown" from "known"."""
        mac = hmac.new(self._pepper, b"wardgate fake salt\x00" + principal.encode(), hashlib.sha256)
        return mac.digest()[:SALT_BYTES]

    def verifiers(self, principal: str) -> ScramVerifierSet:
        """The principal's salt, count and non-revoked keys, read from the store (and
        kept for ``cached_verifiers``)."""
        read_at = time.monotonic()
        with self._store.connection(write=False) as conn:  # every login: Core, not ORM
            # One statement: the salt row, joined with each live key (none: one row of
            # NULL keys; unknown principal: no row).
            rows = conn.execute(_VERIFIERS, {"principal": principal}).all()
        if not rows:
            verifiers = ScramVerifierSet(self.fake_salt(principal), ITERATIONS, ())
        else:
            keys = tuple(
                ScramKeys(r.id, bytes(r.stored_key), bytes(r.server_key))
                for r in rows
                if r.id is not None
            )
            verifiers = ScramVerifierSet(bytes(rows[0].salt), int(rows[0].iterations), keys)
        if not verifiers.keys:
            # Not kept: the salt of a principal without tokens is made up (or that of
            # its revoked ones), and its first token, created by another process, comes
            # with a salt of its own that a client handed the kept one could never
            # prove (attack20). Such logins fail anyway, so they read the store each time.
            self._verifier_cache.pop(principal, None)
            return verifiers
        if len(self._verifier_cache) >= _VERIFIER_CACHE_MAX:
            self._verifier_cache.clear()
        self._verifier_cache[principal] = (read_at, verifiers)
        return verifiers

    def cached_verifiers(self, principal: str) -> ScramVerifierSet | None:
        """What ``verifiers`` read for ``principal`` less than VERIFIER_CACHE_SECONDS
        ago, or None: no store access, so the event loop may call it."""
        kept = self.kept_verifiers(principal)
        return None if kept is None else kept[1]

    def kept_verifiers(self, principal: str) -> tuple[float, ScramVerifierSet] | None:
        """``cached_verifiers`` with the monotonic time its store read began (one dict
        read: the two cannot come from different reads)."""
        entry = self._verifier_cache.get(principal)
        if entry is None or time.monotonic() - entry[0] >= VERIFIER_CACHE_SECONDS:
            return None
        return entry

    def check_password(self, principal: str, token: str) -> str | None:
        """Verify a cleartext token (PasswordMessage over TLS); returns the token id."""
        verifier = self.verifiers(principal)
        # Derive even when there is nothing to compare against, so that an unknown
        # principal costs the same PBKDF2 work as a known one.
        candidate = derive_keys(token, verifier.salt, verifier.iterations)
        found: str | None = None
        for keys in verifier.keys:
            # No early exit: every key is compared, whatever matches first.
            if hmac.compare_digest(candidate.stored_key, keys.stored_key) and found is None:
                found = keys.key_id
        return found

    def touch_due(self, token_id: str) -> bool:
        """Whether a login with ``token_id`` should write last_used_at now (see
        TOUCH_INTERVAL); answering True counts as the write."""
        now = time.monotonic()
        last = self._touched.get(token_id)
        if last is not None and now - last < TOUCH_INTERVAL:
            return False
        self._touched[token_id] = now
        return True

    def touch(self, token_id: str) -> None:
        with self._store.session() as session:
            session.execute(
                update(TokenRow).where(TokenRow.id == token_id).values(last_used_at=time.time())
            )
