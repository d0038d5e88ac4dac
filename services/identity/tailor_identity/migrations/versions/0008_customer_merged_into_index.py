"""An index on the customers merged into another.

GetGraph and FindCandidates list the conflicts of a customer together with those of the customers
merged into it (the links its rules refused stay visible after a merge, and go back with an
unmerge); that follows `merged_into` backwards. Partial: only merged customers have it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_customer_merged_into", "customer", ["merged_into"], postgresql_where=sa.text("merged_into IS NOT NULL")
    )


def downgrade() -> None:
    op.drop_index("ix_customer_merged_into", table_name="customer")
