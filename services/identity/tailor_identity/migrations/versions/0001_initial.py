"""Customers, encrypted identifiers with blind index, person records and blocks, merge log,
conflicts, review candidates, EM pattern counts, and the bus tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from tailor_platform.bus.tables import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _created() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    create_platform_tables()
    op.create_table(
        "customer",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("merged_into", sa.String(64), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_customer"),
    )
    op.create_table(
        "identifier",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("blind_index", sa.LargeBinary, nullable=False),
        sa.Column("id_type", sa.String(32), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.Integer, nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("evidence", sa.String(200), nullable=False, server_default=""),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_identifier"),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"], name="fk_identifier_customer_id_customer"),
    )
    op.create_index("ix_identifier_customer_id", "identifier", ["customer_id"])
    op.create_index(
        "uq_identifier_blind_index", "identifier", ["blind_index"], unique=True, postgresql_include=["customer_id"]
    )
    op.create_table(
        "person",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("fingerprint", sa.LargeBinary, nullable=False),
        sa.Column("ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("key_id", sa.Integer, nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_person"),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"], name="fk_person_customer_id_customer"),
    )
    op.create_index("ix_person_customer_id_fingerprint", "person", ["customer_id", "fingerprint"])
    op.create_table(
        "person_block",
        sa.Column("block_key", sa.LargeBinary, nullable=False),
        sa.Column("person_id", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("block_key", "person_id", name="pk_person_block"),
        sa.ForeignKeyConstraint(
            ["person_id"], ["person.id"], name="fk_person_block_person_id_person", ondelete="CASCADE"
        ),
    )
    op.create_table(
        "merge_log",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("survivor_id", sa.String(64), nullable=False),
        sa.Column("absorbed_ids", postgresql.ARRAY(sa.String(64)), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("evidence", sa.Text, nullable=False),
        sa.Column("snapshot", postgresql.JSONB, nullable=False),
        sa.Column("reverts", sa.String(64), nullable=True),
        sa.Column("reverted_by", sa.String(64), nullable=True),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_merge_log"),
    )
    op.create_index("ix_merge_log_survivor_id", "merge_log", ["survivor_id"])
    op.create_index("ix_merge_log_absorbed_ids", "merge_log", ["absorbed_ids"], postgresql_using="gin")
    op.create_table(
        "conflict",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("other_customer_id", sa.String(64), nullable=False),
        sa.Column("id_type", sa.String(32), nullable=False),
        sa.Column("blind_index", sa.LargeBinary, nullable=False),
        sa.Column("reason", sa.String(200), nullable=False),
        _created(),
        sa.PrimaryKeyConstraint("id", name="pk_conflict"),
        sa.UniqueConstraint("customer_id", "other_customer_id", "blind_index", name="uq_conflict_customer_other_key"),
    )
    op.create_index("ix_conflict_other_customer_id", "conflict", ["other_customer_id"])
    op.create_table(
        "candidate",
        sa.Column("id", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("other_customer_id", sa.String(64), nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("weight", sa.Float, nullable=False),
        sa.Column("comparisons", postgresql.JSONB, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
        sa.Column("reason", sa.Text, nullable=False, server_default=""),
        _created(),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_candidate"),
        sa.UniqueConstraint("customer_id", "other_customer_id", name="uq_candidate_customer_other"),
    )
    op.create_index("ix_candidate_other_customer_id", "candidate", ["other_customer_id"])
    op.create_table(
        "match_pattern",
        sa.Column("pattern", sa.String(64), nullable=False),
        sa.Column("pair_count", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("pattern", name="pk_match_pattern"),
    )


def downgrade() -> None:
    for table in ("match_pattern", "candidate", "conflict", "merge_log", "person_block", "person", "identifier"):
        op.drop_table(table)
    op.drop_table("customer")
    drop_platform_tables()
