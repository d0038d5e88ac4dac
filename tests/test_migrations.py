"""Every service's migrations create exactly the schema its SQLAlchemy tables declare (with the bus
tables every service database holds): a table, column, index or constraint changed in one place
and not the other is a difference here, before it is a failed query in production."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest
import tailor_consent.store
import tailor_identity.tables
import tailor_profile.store
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import create_async_engine
from tailor_cli import registry
from tailor_platform.bus.tables import platform_metadata

DECLARED: dict[str, MetaData] = {
    "consent": tailor_consent.store.Base.metadata,
    "identity": tailor_identity.tables.Base.metadata,
    "profile": tailor_profile.store.metadata,
}


def test_every_service_with_a_database_is_compared() -> None:
    assert set(DECLARED) == set(registry.service_names())


@pytest.mark.parametrize("service", sorted(DECLARED))
def test_migrations_create_the_declared_schema(service: str, fresh_database: Callable[[str], str]) -> None:
    migrated = fresh_database(service)
    assert asyncio.run(differences(migrated, [DECLARED[service], platform_metadata])) == []


# What the services' migrations tune for autovacuum (tailor_platform.migrations): no statistics on
# opaque columns, paced autovacuum on the tables ingestion grows.
OPAQUE_COLUMNS = {
    "identity": {("identifier", "ciphertext"), ("person", "ciphertext"), ("merge_log", "snapshot")},
    "profile": {("profile_state", "state"), ("event", "payload")},
}
PACED_TABLES = {
    "identity": {"customer", "identifier", "person", "person_block"},
    "profile": {"profile_state", "event"},
}


@pytest.mark.parametrize("service", sorted(PACED_TABLES))
def test_migrations_lighten_autovacuum_of_the_hot_tables(service: str, fresh_database: Callable[[str], str]) -> None:
    without_statistics, paced = asyncio.run(autovacuum_tuning(fresh_database(service)))
    assert without_statistics == OPAQUE_COLUMNS[service]
    assert paced == PACED_TABLES[service]


async def autovacuum_tuning(url: str) -> tuple[set[tuple[str, str]], set[str]]:
    """(table, column)s with a statistics target of 0, and the tables with autovacuum paced."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            columns = await connection.execute(
                text(
                    "SELECT c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = 'public' AND a.attnum > 0 AND a.attstattarget = 0"
                )
            )
            tables = await connection.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                    "AND 'autovacuum_vacuum_cost_delay=10' = ANY(reloptions)"
                )
            )
            return {(row[0], row[1]) for row in columns}, {row[0] for row in tables}
    finally:
        await engine.dispose()


async def differences(url: str, declared: list[MetaData]) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            # A sequence of MetaData is what Alembic's target_metadata may be; the stub says one.
            found: list[Any] = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), cast(MetaData, declared))
            )
            return found
    finally:
        await engine.dispose()
