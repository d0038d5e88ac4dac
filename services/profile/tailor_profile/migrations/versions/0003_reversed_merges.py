"""Merges identity reversed (a late identity.merged for one of them is not applied again).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
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
        "reversed_merge",
        sa.Column("merge_id", sa.String(128), nullable=False),
        sa.Column("unmerge_id", sa.String(128), nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("merge_id", name="pk_reversed_merge"),
    )


def downgrade() -> None:
    op.drop_table("reversed_merge")
