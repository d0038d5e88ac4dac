"""Reversible merges: the merges applied, the merges identity reversed, and removals in the audit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "applied_merge",
        sa.Column("merge_id", sa.String(128), nullable=False),
        sa.Column("survivor_id", sa.String(128), nullable=False),
        sa.Column("absorbed_ids", sa.ARRAY(sa.String(128)), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merge_id", name="pk_applied_merge"),
    )
    op.create_index("ix_applied_merge_survivor_id", "applied_merge", ["survivor_id"])
    op.create_table(
        "reversed_merge",
        sa.Column("merge_id", sa.String(128), nullable=False),
        sa.Column("unmerge_id", sa.String(128), nullable=False),
        sa.Column("reversed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("merge_id", name="pk_reversed_merge"),
    )
    # A constant default: existing rows are not rewritten (the append-only trigger does not fire).
    op.add_column("consent_audit", sa.Column("removed", sa.Boolean, server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("consent_audit", "removed")
    op.drop_table("reversed_merge")
    op.drop_index("ix_applied_merge_survivor_id", table_name="applied_merge")
    op.drop_table("applied_merge")
