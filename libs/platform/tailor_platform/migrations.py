"""What every service's Alembic `env.py` does, so that env.py is two lines:

from tailor_consent.store import Base
run_migrations(Base.metadata)

and the table tunings their migrations share (autovacuum of the tables ingestion grows).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from alembic import context, op
from sqlalchemy import MetaData, pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine


def run_migrations(metadata: MetaData) -> None:
    if context.is_offline_mode():
        context.configure(url=context.config.get_main_option("sqlalchemy.url"), target_metadata=metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(_run_online(metadata))


async def _run_online(metadata: MetaData) -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url must be set by the caller (tailor_platform.db.migrate)"
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_configure_and_run, metadata)
    await engine.dispose()


def _configure_and_run(connection: Connection, metadata: MetaData) -> None:
    context.configure(connection=connection, target_metadata=metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


# -- autovacuum of big, hot tables (used by the services' migrations) ------------------------------

AUTOVACUUM_COST_DELAY_MS = 10
"""Pause between rounds of autovacuum page reads on a paced table (PostgreSQL's default is 2 ms)."""


def skip_statistics(columns: Sequence[tuple[str, str]]) -> None:
    """ANALYZE leaves out these (table, column)s: opaque values (ciphertexts, serialized payloads,
    JSON states) that no query filters, joins or sorts on. Sorting a 30,000-row sample of wide
    values for statistics nobody uses was most of ANALYZE's CPU on such tables."""
    for table, column in columns:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS 0")


def restore_statistics(columns: Sequence[tuple[str, str]]) -> None:
    for table, column in columns:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET STATISTICS -1")


def pace_autovacuum(tables: Sequence[str]) -> None:
    """Autovacuum (VACUUM and ANALYZE) of these tables reads its pages in paced rounds, so that it
    takes a few seconds at a fraction of a core instead of a whole core at once. Sustained ingestion
    has autovacuum visit each hot table about once a minute; on a small machine running near its
    capacity the unpaced visits were the seconds with the slowest calls. Tables with heavy churn and
    few pages (the outbox) are not paced: they need vacuuming promptly and cost little."""
    for table in tables:
        op.execute(f"ALTER TABLE {table} SET (autovacuum_vacuum_cost_delay = {AUTOVACUUM_COST_DELAY_MS})")


def unpace_autovacuum(tables: Sequence[str]) -> None:
    for table in tables:
        op.execute(f"ALTER TABLE {table} RESET (autovacuum_vacuum_cost_delay)")
