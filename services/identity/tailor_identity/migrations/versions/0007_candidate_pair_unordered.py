"""One candidate row per pair of customers, in either order.

The unique constraint on (customer_id, other_customer_id) let two transactions scoring the same two
customers from opposite sides insert (a, b) and (b, a): the pair was then queued twice, and a
rejected pair could stay open under its other order. A unique index on the unordered pair replaces
it (it implies the ordered one). Reversed duplicates already stored are removed first, keeping a
decided row over an open one, then the oldest.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

PAIR = "least(customer_id, other_customer_id), greatest(customer_id, other_customer_id)"


def upgrade() -> None:
    op.execute(
        "DELETE FROM candidate c USING ("
        f"SELECT id, row_number() OVER (PARTITION BY {PAIR} ORDER BY (status = 'open'), id) AS rank "
        "FROM candidate) ranked WHERE c.id = ranked.id AND ranked.rank > 1"
    )
    op.execute(f"CREATE UNIQUE INDEX uq_candidate_pair ON candidate ({PAIR})")
    op.drop_constraint("uq_candidate_customer_other", "candidate", type_="unique")


def downgrade() -> None:
    op.create_unique_constraint("uq_candidate_customer_other", "candidate", ["customer_id", "other_customer_id"])
    op.drop_index("uq_candidate_pair", table_name="candidate")
