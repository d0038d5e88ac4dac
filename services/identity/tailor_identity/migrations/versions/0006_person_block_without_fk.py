"""Person blocks without a foreign key to their person record.

The check ran once per inserted block row (about eleven per person record, each a lookup and a row
lock on the person just inserted): 440 block rows, a profile batch's worth, took 7.8 ms with it and
4.2 ms without. The service writes a person and its blocks in one transaction, and deletes a person's
blocks itself wherever it rewrites them (ReKey); no code deletes person rows, so the cascade it
declared never ran.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_constraint("fk_person_block_person_id_person", "person_block", type_="foreignkey")


def downgrade() -> None:
    op.create_foreign_key(
        "fk_person_block_person_id_person", "person_block", "person", ["person_id"], ["id"], ondelete="CASCADE"
    )
