"""Consent records, the append-only audit log, and the bus tables.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from tailor_platform.bus.tables import create_platform_tables, drop_platform_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_platform_tables()
    op.create_table(
        "consent",
        sa.Column("customer_id", sa.String(128), primary_key=True),
        sa.Column("purpose", sa.String(64), primary_key=True),
        sa.Column("channel", sa.String(64), primary_key=True),
        sa.Column("granted", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("legal_basis", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "purpose", "channel", name="pk_consent"),
    )
    op.create_table(
        "consent_audit",
        sa.Column("sequence", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("customer_id", sa.String(128), nullable=False),
        sa.Column("purpose", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(64), nullable=False),
        sa.Column("granted", sa.Boolean, nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("legal_basis", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.String(64), nullable=False),
        sa.Column("request_id", sa.String(200), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name="pk_consent_audit"),
        sa.UniqueConstraint("request_id", name="uq_consent_audit_request_id"),
    )
    op.create_index("ix_consent_audit_customer_sequence", "consent_audit", ["customer_id", "sequence"])
    # The audit log is append-only, enforced by the database itself. Only an erasure (a later
    # issue: it sets tailor.erasure = 'on' in its own transaction) may delete a customer's entries.
    op.execute(
        """
        CREATE FUNCTION consent_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' AND current_setting('tailor.erasure', true) = 'on' THEN
                RETURN OLD;
            END IF;
            RAISE EXCEPTION 'consent_audit is append-only: % refused', TG_OP
                USING ERRCODE = 'insufficient_privilege';
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER consent_audit_no_change BEFORE UPDATE OR DELETE ON consent_audit "
        "FOR EACH ROW EXECUTE FUNCTION consent_audit_append_only()"
    )
    op.execute(
        "CREATE TRIGGER consent_audit_no_truncate BEFORE TRUNCATE ON consent_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION consent_audit_append_only()"
    )


def downgrade() -> None:
    op.drop_table("consent_audit")
    op.execute("DROP FUNCTION consent_audit_append_only()")
    op.drop_table("consent")
    drop_platform_tables()
