"""When each audit entry was written, by the database's clock, and merges applied by the same
clock: a reversed merge tells what was written while the customers were one by these times, not by
the times the records carry (an import may date a decision long before it arrived).

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
    # Added without a default and then given one: existing entries keep NULL (their record's own
    # time stands in) rather than all being stamped with the time of this migration, and the table
    # is not rewritten (the append-only trigger does not fire either way).
    op.add_column("consent_audit", sa.Column("written_at", sa.DateTime(timezone=True), nullable=True))
    op.alter_column("consent_audit", "written_at", server_default=sa.text("clock_timestamp()"))
    op.alter_column("applied_merge", "applied_at", server_default=sa.text("clock_timestamp()"))


def downgrade() -> None:
    op.alter_column("applied_merge", "applied_at", server_default=None)
    op.drop_column("consent_audit", "written_at")
