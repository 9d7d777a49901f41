"""Initial schema: audit chain, sessions index, tokens, secrets, login failures, cancel keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_GENESIS = "0" * 64


def upgrade() -> None:
    op.create_table(
        "audit_events",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=False),
        sa.Column("ts", sa.Double(), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("connection", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_audit_events_session_id", "audit_events", ["session_id"])
    op.create_index("ix_audit_events_principal", "audit_events", ["principal"])

    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("last_id", _BIG_ID, nullable=False),
        sa.Column("last_hash", sa.String(64), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "last_id": 0, "last_hash": _GENESIS}])

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("protocol", sa.String(32), nullable=False),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("principal_kind", sa.String(16), nullable=False),
        sa.Column("sponsor", sa.String(), nullable=True),
        sa.Column("connection", sa.String(), nullable=False),
        sa.Column("client_addr", sa.String(), nullable=False),
        sa.Column("application_name", sa.String(), nullable=False),
        sa.Column("tls", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("ended_at", sa.Double(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("action_count", sa.Integer(), nullable=False),
        sa.Column("blocked_count", sa.Integer(), nullable=False),
    )
    op.create_index("ix_sessions_principal", "sessions", ["principal"])
    op.create_index("ix_sessions_connection", "sessions", ["connection"])
    op.create_index("ix_sessions_started_at", "sessions", ["started_at"])

    op.create_table(
        "tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("stored_key", sa.LargeBinary(), nullable=False),
        sa.Column("server_key", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("revoked_at", sa.Double(), nullable=True),
        sa.Column("last_used_at", sa.Double(), nullable=True),
    )
    op.create_index("ix_tokens_principal", "tokens", ["principal"])

    op.create_table(
        "principal_salts",
        sa.Column("principal", sa.String(), primary_key=True),
        sa.Column("salt", sa.LargeBinary(), nullable=False),
        sa.Column("iterations", sa.Integer(), nullable=False),
    )

    op.create_table(
        "secrets",
        sa.Column("name", sa.String(), primary_key=True),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
    )

    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.Double(), nullable=False),
    )
    op.create_index("ix_login_failures_window_start", "login_failures", ["window_start"])

    op.create_table(
        "cancel_keys",
        sa.Column("gw_pid", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("secret_hash", sa.LargeBinary(), nullable=False),
        sa.Column("connection", sa.String(), nullable=False),
        sa.Column("upstream_host", sa.String(), nullable=False),
        sa.Column("upstream_port", sa.Integer(), nullable=False),
        sa.Column("upstream_pid", sa.BigInteger(), nullable=False),
        sa.Column("upstream_secret", sa.LargeBinary(), nullable=False),
        sa.Column("tls", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_cancel_keys_created_at", "cancel_keys", ["created_at"])


def downgrade() -> None:
    for table in (
        "cancel_keys",
        "login_failures",
        "secrets",
        "principal_salts",
        "tokens",
        "sessions",
        "audit_head",
        "audit_events",
    ):
        op.drop_table(table)
