"""Timelines, trait states, attributes, merge aliases, events waiting for identity, bus tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB
from tailor_platform.bus.tables import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables()
    op.create_table(
        "event",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("channel", sa.String(32), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_event"),
    )
    op.create_index("ix_event_customer_timeline", "event", ["customer_id", "occurred_at", "event_id"])
    op.create_table(
        "profile_state",
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("state", JSONB, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("customer_id", name="pk_profile_state"),
    )
    op.create_table(
        "profile_attribute",
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.String(1000), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "name", name="pk_profile_attribute"),
    )
    op.create_table(
        "customer_alias",
        sa.Column("absorbed_id", sa.String(128), nullable=False),
        sa.Column("survivor_id", sa.String(128), nullable=False),
        sa.Column("merge_id", sa.String(128), nullable=False),
        sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("absorbed_id", name="pk_customer_alias"),
    )
    op.create_table(
        "pending_event",
        sa.Column("event_id", sa.String(128), nullable=False),
        sa.Column("payload", sa.LargeBinary, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_pending_event"),
    )


def downgrade() -> None:
    for table in ("pending_event", "customer_alias", "profile_attribute", "profile_state", "event"):
        op.drop_table(table)
    drop_platform_tables()
