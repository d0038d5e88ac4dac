"""When each profile's traits were last announced, and when time alone next changes them.

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
    op.add_column("profile_state", sa.Column("announced_at", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("profile_state", sa.Column("next_change_at", sa.BigInteger(), nullable=True))
    # Profiles stored before: last announced when last written, and due at once (the first sweep
    # works out what time changed since, announces it and sets their next change).
    op.execute("UPDATE profile_state SET announced_at = extract(epoch FROM updated_at)::bigint, next_change_at = 0")
    op.create_index("ix_profile_state_next_change_at", "profile_state", ["next_change_at"])


def downgrade() -> None:
    op.drop_index("ix_profile_state_next_change_at", table_name="profile_state")
    op.drop_column("profile_state", "next_change_at")
    op.drop_column("profile_state", "announced_at")
