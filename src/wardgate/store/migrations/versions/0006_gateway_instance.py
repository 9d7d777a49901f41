"""Which gateway opened a session and registered a cancel key, so that a gateway that
restarts after a crash closes its own sessions as interrupted and drops its own keys,
and never another replica's.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("gateway", sa.String(64), nullable=True))
        batch.create_index("ix_sessions_gateway_status", ["gateway", "status"])
    with op.batch_alter_table("cancel_keys") as batch:
        batch.add_column(sa.Column("gateway", sa.String(64), nullable=True))
        batch.create_index("ix_cancel_keys_gateway", ["gateway"])


def downgrade() -> None:
    with op.batch_alter_table("cancel_keys") as batch:
        batch.drop_index("ix_cancel_keys_gateway")
        batch.drop_column("gateway")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_gateway_status")
        batch.drop_column("gateway")
