"""SSH: principals' public keys and terminal recordings.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "principal_keys",
        sa.Column("fingerprint", sa.String(128), primary_key=True),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("comment", sa.String(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_principal_keys_principal", "principal_keys", ["principal"])
    op.create_table(
        "recordings",
        sa.Column("session_id", sa.String(), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("started_at", sa.Double(), nullable=False),
        sa.Column("cast", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("recordings")
    op.drop_table("principal_keys")
