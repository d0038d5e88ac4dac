"""applied_merge.applied_at without a server default: record_merge always sets it (the earlier of
the merge's own time and now), so the default that 0003 gave it was never used, and the declared
table has none.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("applied_merge", "applied_at", server_default=None)


def downgrade() -> None:
    op.alter_column("applied_merge", "applied_at", server_default=sa.text("clock_timestamp()"))
