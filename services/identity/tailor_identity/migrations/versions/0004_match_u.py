"""Keep the u-probabilities estimated from random pairs, so that every worker and every restart
starts from them instead of estimating them again.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "match_u",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("u", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("basis", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_match_u"),
    )


def downgrade() -> None:
    op.drop_table("match_u")
