"""Attributes remember the customer that set them (kept through merges, so an unmerge can give
each back): one row per customer, attribute and origin; the newest of a name is the value.

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
    # Rows from before: their origin is not known, so it is the customer that holds them.
    op.add_column("profile_attribute", sa.Column("origin_id", sa.String(128), nullable=True))
    op.execute("UPDATE profile_attribute SET origin_id = customer_id")
    op.alter_column("profile_attribute", "origin_id", nullable=False)
    op.drop_constraint("pk_profile_attribute", "profile_attribute", type_="primary")
    op.create_primary_key("pk_profile_attribute", "profile_attribute", ["customer_id", "name", "origin_id"])


def downgrade() -> None:
    # Back to one row per name: the newest value of each stays.
    op.execute(
        "DELETE FROM profile_attribute a USING profile_attribute b WHERE a.customer_id = b.customer_id "
        "AND a.name = b.name AND (a.updated_at, a.origin_id) < (b.updated_at, b.origin_id)"
    )
    op.drop_constraint("pk_profile_attribute", "profile_attribute", type_="primary")
    op.create_primary_key("pk_profile_attribute", "profile_attribute", ["customer_id", "name"])
    op.drop_column("profile_attribute", "origin_id")
