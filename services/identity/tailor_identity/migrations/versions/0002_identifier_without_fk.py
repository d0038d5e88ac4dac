"""Identifiers without a foreign key to their customer.

The check ran once per inserted identifier (a row lock on the customer each time) and was about half
of the database time of a resolve batch that creates customers. The service writes a customer and its
identifiers in one transaction and never deletes a customer row that identifiers point at (a merged
customer is kept with status "merged"), so the constraint guarded nothing the code does not.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fk_identifier_customer_id_customer", "identifier", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key("fk_identifier_customer_id_customer", "identifier", "customer", ["customer_id"], ["id"])
