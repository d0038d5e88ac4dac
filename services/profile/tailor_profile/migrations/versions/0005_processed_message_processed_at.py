"""An index on when each consumed envelope was processed.

Consumers forget the envelope ids older than their stream keeps messages (tailor_platform.bus.consumer):
without this index each pruning pass read the whole table.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from tailor_platform.bus.tables import index_processed_at, unindex_processed_at

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    index_processed_at()


def downgrade() -> None:
    unindex_processed_at()
