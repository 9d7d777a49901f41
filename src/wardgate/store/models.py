"""Tables of the gateway store. Timestamps are float seconds since the epoch (UTC) everywhere:
the recorder gets them from ``time.time()`` and the hash chain hashes them as JSON numbers,
so one representation avoids any timezone or rounding mismatch between SQLite and PostgreSQL.

The schema itself is created by the Alembic migrations in ``store/migrations``; these
models must match them (``tests/store`` checks that a migrated store has no drift).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Double, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-assigns INTEGER PRIMARY KEY; PostgreSQL wants 64 bits for a log.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class AuditEvent(Base):
    """One link of the tamper-evident chain. ``id`` is assigned by the appender while it
    holds the chain lock (not by the database) because the hash covers it."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    ts: Mapped[float] = mapped_column(Double)
    type: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String, index=True)
    principal: Mapped[str] = mapped_column(String, index=True)
    connection: Mapped[str] = mapped_column(String)
    payload: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """Exactly one row (id=1): the newest link. Appenders lock it to serialise, and
    ``verify_chain`` compares it with the last event to detect a truncated tail."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    last_id: Mapped[int] = mapped_column(BigId)
    last_hash: Mapped[str] = mapped_column(String(64))


class SessionRow(Base):
    """Summary index of recorded sessions, rebuilt from nothing but the chain if needed."""

    __tablename__ = "sessions"
    __table_args__ = (Index("ix_sessions_gateway_status", "gateway", "status"),)

    id: Mapped[str] = mapped_column(String, primary_key=True)
    protocol: Mapped[str] = mapped_column(String(32))
    principal: Mapped[str] = mapped_column(String, index=True)
    principal_kind: Mapped[str] = mapped_column(String(16))
    sponsor: Mapped[str | None] = mapped_column(String, nullable=True)
    connection: Mapped[str] = mapped_column(String, index=True)
    client_addr: Mapped[str] = mapped_column(String)
    application_name: Mapped[str] = mapped_column(String)
    tls: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[float] = mapped_column(Double, index=True)
    ended_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    status: Mapped[str] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    action_count: Mapped[int] = mapped_column(Integer)
    blocked_count: Mapped[int] = mapped_column(Integer)
    # The gateway instance that opened it (serve.gateway_id); NULL before 0006.
    gateway: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TokenRow(Base):
    """A wardgate token, stored only as its SCRAM keys: the token itself is never kept."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(String, index=True)
    name: Mapped[str] = mapped_column(String)
    stored_key: Mapped[bytes] = mapped_column(LargeBinary)
    server_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    last_used_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    # HMAC of the token under the gateway's pepper: finds the token an HTTP client
    # presents as a bearer token (SCRAM keys cannot be searched without the principal).
    lookup: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)


class PrincipalSalt(Base):
    """SCRAM sends one salt before it knows which token the client holds, so all tokens
    of a principal share it."""

    __tablename__ = "principal_salts"

    principal: Mapped[str] = mapped_column(String, primary_key=True)
    salt: Mapped[bytes] = mapped_column(LargeBinary)
    iterations: Mapped[int] = mapped_column(Integer)


class SecretRow(Base):
    __tablename__ = "secrets"

    name: Mapped[str] = mapped_column(String, primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


class KeyringRow(Base):
    """A key derived from an earlier master key whose outputs are stored (token lookups,
    pseudonyms), sealed under the current one (``wardgate.vault.keyring``)."""

    __tablename__ = "keyring"

    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[bytes] = mapped_column(LargeBinary)
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[float] = mapped_column(Double)


class LoginFailure(Base):
    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[float] = mapped_column(Double, index=True)


class CancelKey(Base):
    """Maps the BackendKeyData a gateway process handed to a client to the upstream
    backend, so a CancelRequest arriving at any replica reaches the right server."""

    __tablename__ = "cancel_keys"

    # The pid handed to the client and 32 bits of its secret's hash (cancel.row_key).
    gw_pid: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary)
    connection: Mapped[str] = mapped_column(String)
    upstream_host: Mapped[str] = mapped_column(String)
    upstream_port: Mapped[int] = mapped_column(Integer)
    upstream_pid: Mapped[int] = mapped_column(BigInteger)
    upstream_secret: Mapped[bytes] = mapped_column(LargeBinary)
    tls: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Double, index=True)
    gateway: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)


class ReviewRow(Base):
    """A request for human approval: of one action (kind ``action``), of a time-boxed role
    grant (``grant``) or of a change set the gateway runs itself (``proposal``).

    ``status`` moves pending -> approved | denied | expired | cancelled, then an approved
    action -> executed (then failed when the target refused it, rolled_back when its
    transaction was rolled back), an approved proposal -> executed | failed, an approved grant ->
    revoked or simply past ``approved_until``. Approval of an action or grant is valid
    until ``approved_until``.
    """

    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    connection: Mapped[str] = mapped_column(String)
    principal: Mapped[str] = mapped_column(String, index=True)
    principal_kind: Mapped[str] = mapped_column(String(16))
    sponsor: Mapped[str | None] = mapped_column(String, nullable=True)
    protocol: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str] = mapped_column(String)
    client_addr: Mapped[str] = mapped_column(String)
    text: Mapped[str] = mapped_column(Text)  # what is to run, as the client wrote it
    detail: Mapped[str] = mapped_column(Text)  # JSON: params, statements, role, duration
    rule: Mapped[str] = mapped_column(String)
    rules: Mapped[str] = mapped_column(Text)  # JSON list
    reason: Mapped[str] = mapped_column(Text)
    justification: Mapped[str | None] = mapped_column(Text, nullable=True)
    requirements: Mapped[str] = mapped_column(Text)  # JSON [{"groups": [...], "quorum": n}]
    sponsor_may_approve: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[float] = mapped_column(Double, index=True)
    expires_at: Mapped[float] = mapped_column(Double)
    decided_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    approved_until: Mapped[float | None] = mapped_column(Double, nullable=True)
    executed_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    preview: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON


class ReviewVote(Base):
    """One human's decision on a review; one row per voter."""

    __tablename__ = "review_votes"

    review_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    voter: Mapped[str] = mapped_column(String, primary_key=True)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[float] = mapped_column(Double)


class PrincipalKey(Base):
    """An SSH public key a principal logs in to the SSH gateway with."""

    __tablename__ = "principal_keys"

    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)  # SHA256:...
    principal: Mapped[str] = mapped_column(String, index=True)
    public_key: Mapped[str] = mapped_column(Text)  # OpenSSH one-line form
    comment: Mapped[str] = mapped_column(String)
    created_at: Mapped[float] = mapped_column(Double)


class Recording(Base):
    """A terminal session as asciicast v2 text. Its SHA-256 is in the audit chain (the
    ``recording`` event), so an edited recording is detected like an edited event."""

    __tablename__ = "recordings"

    session_id: Mapped[str] = mapped_column(String, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[float] = mapped_column(Double)
    cast: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))


class UserPassword(Base):
    """A local user's password (``wardgate user add``) as an argon2id hash."""

    __tablename__ = "user_passwords"

    principal: Mapped[str] = mapped_column(String, primary_key=True)
    hash: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[float] = mapped_column(Double)


class WebSession(Base):
    """A signed-in human: a browser (cookie) or the CLI after ``wardgate login`` by
    OIDC (bearer). Only the SHA-256 of the session secret is kept."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    principal: Mapped[str] = mapped_column(String, index=True)
    groups: Mapped[str] = mapped_column(Text)  # JSON list, from the provider at sign-in
    method: Mapped[str] = mapped_column(String(16))  # password | oidc | oidc-cli
    csrf: Mapped[str] = mapped_column(String(64))
    addr: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Double)
    last_seen_at: Mapped[float] = mapped_column(Double)
    expires_at: Mapped[float] = mapped_column(Double)  # the absolute limit
    ended_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class AuditCheckpoint(Base):
    """A signed chain head (``audit/checkpoint.py``). The signing key is never in the
    store: a row here can be deleted but not forged."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigId, index=True)
    head_hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[float] = mapped_column(Double)
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[str] = mapped_column(String(128))
