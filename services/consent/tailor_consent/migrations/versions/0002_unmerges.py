"""Merges: the ones applied, the customers merged into others (their consents are decided by
the survivor's), the merges identity reversed, and removals in the audit.

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
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("merge_id", name="pk_applied_merge"),
    )
    op.create_table(
        "customer_alias",
        sa.Column("absorbed_id", sa.String(128), nullable=False),
        sa.Column("survivor_id", sa.String(128), nullable=False),
        sa.Column("merge_id", sa.String(128), nullable=False),
        sa.PrimaryKeyConstraint("absorbed_id", name="pk_customer_alias"),
    )
    op.create_index("ix_customer_alias_survivor_id", "customer_alias", ["survivor_id"])
    op.create_index("ix_customer_alias_merge_id", "customer_alias", ["merge_id"])
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
    op.drop_table("customer_alias")
    op.drop_table("applied_merge")
