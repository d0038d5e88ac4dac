"""Autovacuum of the big tables costs less, and not all at once.

Ingestion grows `customer`, `identifier`, `person` and `person_block` with every batch of new
people, so autovacuum visits them about once a minute, all in the same few seconds. Their ANALYZE no
longer computes statistics on ciphertexts and merge snapshots (never filtered or joined on), and
their autovacuum is paced (tailor_platform.migrations.pace_autovacuum).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-27
"""

from __future__ import annotations

from tailor_platform.migrations import pace_autovacuum, restore_statistics, skip_statistics, unpace_autovacuum

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OPAQUE_COLUMNS = (("identifier", "ciphertext"), ("person", "ciphertext"), ("merge_log", "snapshot"))
HOT_TABLES = ("customer", "identifier", "person", "person_block")


def upgrade() -> None:
    skip_statistics(OPAQUE_COLUMNS)
    pace_autovacuum(HOT_TABLES)


def downgrade() -> None:
    unpace_autovacuum(HOT_TABLES)
    restore_statistics(OPAQUE_COLUMNS)
