"""Reviews (per-action approvals, access grants, proposals), their votes, and bearer
lookups for tokens.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tokens") as batch:
        batch.add_column(sa.Column("lookup", sa.String(64), nullable=True))
        batch.create_unique_constraint("uq_tokens_lookup", ["lookup"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("connection", sa.String(), nullable=False),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("principal_kind", sa.String(16), nullable=False),
        sa.Column("sponsor", sa.String(), nullable=True),
        sa.Column("protocol", sa.String(32), nullable=False),
        sa.Column("session_id", sa.String(), nullable=False),
        sa.Column("client_addr", sa.String(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("rules", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("justification", sa.Text(), nullable=True),
        sa.Column("requirements", sa.Text(), nullable=False),
        sa.Column("sponsor_may_approve", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("decided_at", sa.Double(), nullable=True),
        sa.Column("approved_until", sa.Double(), nullable=True),
        sa.Column("executed_at", sa.Double(), nullable=True),
        sa.Column("preview", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
    )
    op.create_index("ix_reviews_status", "reviews", ["status"])
    op.create_index("ix_reviews_fingerprint", "reviews", ["fingerprint"])
    op.create_index("ix_reviews_principal", "reviews", ["principal"])
    op.create_index("ix_reviews_created_at", "reviews", ["created_at"])
    op.create_table(
        "review_votes",
        sa.Column("review_id", sa.String(32), primary_key=True),
        sa.Column("voter", sa.String(), primary_key=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("at", sa.Double(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("review_votes")
    op.drop_table("reviews")
    with op.batch_alter_table("tokens") as batch:
        batch.drop_constraint("uq_tokens_lookup", type_="unique")
        batch.drop_column("lookup")
