"""Tables the bus needs in every service's own database. Each service's first migration creates
them with `create_platform_tables()`; the names are the same in every database."""

from __future__ import annotations

from alembic import op
from sqlalchemy import BigInteger, Column, DateTime, Identity, Index, LargeBinary, MetaData, String, Table, func
from sqlalchemy.dialects.postgresql import JSONB

platform_metadata = MetaData()

# Events written in the same transaction as the change they announce; the relay publishes and
# deletes them after commit.
outbox = Table(
    "outbox",
    platform_metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("envelope_id", String(64), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    # W3C trace context of the transaction that wrote the event, so the publish continues its trace.
    Column("trace_headers", JSONB, nullable=False, server_default="{}"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

# Envelope ids a consumer has applied, written in the same transaction as the effect.
processed_message = Table(
    "processed_message",
    platform_metadata,
    Column("consumer", String(128), primary_key=True),
    Column("envelope_id", String(64), primary_key=True),
    Column("processed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Consumers prune ids older than their stream keeps messages (bus/consumer.py).
    Index("ix_processed_message_processed_at", "processed_at"),
)


def create_platform_tables() -> None:
    """Call from a service's first Alembic migration."""
    platform_metadata.create_all(op.get_bind())


def index_processed_at() -> None:
    """For databases whose first migration created the tables before this index was declared
    (a first migration run today creates it already: create_platform_tables follows the tables
    above)."""
    op.execute("CREATE INDEX IF NOT EXISTS ix_processed_message_processed_at ON processed_message (processed_at)")


def unindex_processed_at() -> None:
    op.execute("DROP INDEX IF EXISTS ix_processed_message_processed_at")


def drop_platform_tables() -> None:
    platform_metadata.drop_all(op.get_bind())
