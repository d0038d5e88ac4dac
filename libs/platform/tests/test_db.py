"""The database mechanism against a real PostgreSQL: connections the server closed are replaced."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from tailor_cli.embedded import EmbeddedPostgres
from tailor_cli.testing import Infra
from tailor_platform.db import Database, ReadPool, driver_connection, driver_url, sqlstate, while_running


async def test_a_database_restart_costs_no_caller_an_error(tmp_path: Path) -> None:
    """Pooled connections die with a restart; the next transactions and reads still succeed: the
    driver has seen the server close them, and the pool replaces them at checkout (no ping round
    trip per checkout)."""
    postgres = EmbeddedPostgres(tmp_path)
    database = Database(postgres.start().replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with database.transaction() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
            driver = await driver_connection(session)
            assert driver.connection.is_in_transaction()
        row = await database.read_row("SELECT 2 AS n")
        assert row is not None and row["n"] == 2

        postgres._pg_ctl("restart")
        await asyncio.sleep(0.2)  # the event loop reads the server's goodbye on each pooled connection

        for _ in range(3):  # more than one pooled connection may have died
            async with database.transaction() as session:
                assert (await (await driver_connection(session)).fetchval("SELECT 3")) == 3
            row = await database.read_row("SELECT 4 AS n")
            assert row is not None and row["n"] == 4
    finally:
        await database.dispose()
        postgres.stop()


def test_sqlstate_of_errors_from_sqlalchemy_and_from_the_driver() -> None:
    deadlock = asyncpg.exceptions.DeadlockDetectedError("deadlock detected")
    assert sqlstate(deadlock) == "40P01"  # a Driver statement raises the driver's error as it is
    assert sqlstate(DBAPIError("SELECT 1", None, deadlock)) == "40P01"  # SQLAlchemy wraps it
    assert sqlstate(ValueError("not a database error")) is None


async def test_reads_share_a_bounded_pool_and_survive_failed_and_cancelled_statements(tmp_path: Path) -> None:
    """More reads at once than connections: they wait their turn, never opening more than the
    pool's size. A failed or cancelled statement closes its connection (it may be mid-protocol) and
    frees its slot for the reads waiting."""
    postgres = EmbeddedPostgres(tmp_path)
    dsn = postgres.start()
    pool = ReadPool(dsn, 2)
    try:
        rows = await asyncio.gather(*(pool.fetchrow("SELECT $1::int AS n, pg_sleep(0.01)", n) for n in range(20)))
        assert [row["n"] for row in rows if row is not None] == list(range(20))
        assert pool.opened == 2

        with pytest.raises(asyncpg.UndefinedColumnError):
            await pool.fetchrow("SELECT no_such_column")
        assert pool.opened == 1  # the failed one was closed

        slow = [asyncio.create_task(pool.fetchrow("SELECT pg_sleep(5)")) for _ in range(2)]
        waiting = asyncio.create_task(pool.fetchrow("SELECT 1 AS n"))  # no connection free: it waits
        await asyncio.sleep(0.3)
        assert not waiting.done()
        for task in slow:
            task.cancel()
        row = await asyncio.wait_for(waiting, timeout=5)  # a cancelled read's slot went to it
        assert row is not None and row["n"] == 1
        assert all(task.cancelled() for task in slow)
        rows = await asyncio.gather(*(pool.fetchrow("SELECT $1::int AS n", n) for n in range(5)))
        assert [row["n"] for row in rows if row is not None] == list(range(5))
        assert pool.opened <= 2

        running = asyncio.create_task(pool.fetchrow("SELECT pg_sleep(0.2)"))
        await asyncio.sleep(0.05)
        await pool.close()  # the idle connection closes now, the running one when its read ends
        await running
        assert pool.opened == 0
        with pytest.raises(asyncpg.InterfaceError):
            await pool.fetchrow("SELECT 1")
    finally:
        await pool.close()
        postgres.stop()


async def test_reads_waiting_for_a_connection_when_the_pool_closes_fail_instead_of_hanging(tmp_path: Path) -> None:
    """A read waiting for a connection when the pool closes (the process shuts down) gets an error
    at once; it neither waits forever nor opens a connection the closed pool would never close."""
    postgres = EmbeddedPostgres(tmp_path)
    pool = ReadPool(postgres.start(), 1)
    try:
        running = asyncio.create_task(pool.fetchrow("SELECT pg_sleep(0.3)"))
        await asyncio.sleep(0.1)
        waiting = asyncio.create_task(pool.fetchrow("SELECT 1 AS n"))
        await asyncio.sleep(0.05)
        await pool.close()
        with pytest.raises(asyncpg.InterfaceError):
            await asyncio.wait_for(waiting, timeout=3)
        await running
        assert pool.opened == 0
    finally:
        await pool.close()
        postgres.stop()


async def test_the_tls_setting_of_a_database_url_reaches_the_read_pool_as_asyncpg_reads_it(infra: Infra) -> None:
    """`?ssl=prefer` is what SQLAlchemy's asyncpg dialect reads; asyncpg's own DSN calls it sslmode
    (an `ssl` it would send to the server as a setting, which PostgreSQL refuses)."""
    assert driver_url("postgresql+asyncpg://u:p@db/t?ssl=require&application_name=x") == (
        "postgresql://u:p@db/t?sslmode=require&application_name=x"
    )
    url = infra.server_url.replace("postgresql://", "postgresql+asyncpg://", 1)
    database = Database(url + ("&" if "?" in url else "?") + "ssl=prefer")
    try:
        row = await database.read_row("SELECT 5 AS n")  # the read pool: asyncpg with the driver URL
        assert row is not None and row["n"] == 5
        async with database.transaction() as session:  # SQLAlchemy with the URL as given
            assert (await session.execute(text("SELECT 6"))).scalar_one() == 6
    finally:
        await database.dispose()


async def test_a_statement_runs_in_the_database_while_the_process_works(infra: Infra) -> None:
    """`while_running` has PostgreSQL run the statement during the work, not after it; when the
    work fails, the statement is still waited for and the connection can go on being used."""
    database = Database(infra.server_url.replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        now = "SELECT extract(epoch FROM clock_timestamp())::float8"

        async def clock(session: AsyncSession) -> object:  # as a store's query: the driver first
            return await (await driver_connection(session)).fetchval(now)

        async with database.transaction() as session:
            driver = await driver_connection(session)

            def work() -> float:
                time.sleep(0.5)
                return time.time()

            await clock(session)  # prepared once (a round trip of its own), as hot paths' statements are
            ran_at, worked_until = await while_running(clock(session), work)
            assert isinstance(ran_at, float)
            assert ran_at < worked_until - 0.25  # it ran at the start of the work, not after it

            def failing() -> None:
                raise ValueError("the work failed")

            with pytest.raises(ValueError, match="the work failed"):
                await while_running(driver.fetchval("SELECT pg_sleep(0.05)"), failing)
            assert await driver.fetchval("SELECT 7") == 7
    finally:
        await database.dispose()
