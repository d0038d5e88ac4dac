"""The id of the blind index key each identifier and person record is indexed under.

With it the blind index key can be rotated like the encryption key: `ReKey` finds the rows indexed
under an old key and recomputes their tokens under the active one. Rows written before this
revision were indexed under key 1 (the id the service assumes when none is configured).

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
    for table in ("identifier", "person"):
        op.add_column(table, sa.Column("index_key_id", sa.Integer(), nullable=False, server_default="1"))


def downgrade() -> None:
    for table in ("identifier", "person"):
        op.drop_column(table, "index_key_id")
