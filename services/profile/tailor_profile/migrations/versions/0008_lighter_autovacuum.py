"""Autovacuum of the two big tables costs less, and not all at once.

Under sustained ingestion autovacuum visits `profile_state` and `event` every minute (each batch
rewrites about a hundred states and adds 500 events). Its ANALYZE sorted 30,000 sampled states by
their JSONB value, and as many event payloads, for statistics no query uses (both are only ever
read by key): on the profile benchmark's database, ANALYZE of `profile_state` took 270 ms with them
and 110 ms without; of `event`, 217 and 168 ms. What is left is paced
(tailor_platform.migrations.pace_autovacuum).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

from tailor_platform.migrations import pace_autovacuum, restore_statistics, skip_statistics, unpace_autovacuum

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OPAQUE_COLUMNS = (("profile_state", "state"), ("event", "payload"))
HOT_TABLES = ("profile_state", "event")


def upgrade() -> None:
    skip_statistics(OPAQUE_COLUMNS)
    pace_autovacuum(HOT_TABLES)


def downgrade() -> None:
    unpace_autovacuum(HOT_TABLES)
    restore_statistics(OPAQUE_COLUMNS)
