"""An index on the unmerges by time.

Reversing a merge looks up the unmerges logged since it (rows one of them gave back stay where they
are: IdentityService._give_back). merge_log holds every merge a resolve makes, so without this index
each Unmerge read the whole log. Partial: unmerges are rare operator actions.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_merge_log_unmerge_created_at", "merge_log", ["created_at"], postgresql_where=sa.text("kind = 'unmerge'")
    )


def downgrade() -> None:
    op.drop_index("ix_merge_log_unmerge_created_at", table_name="merge_log")
