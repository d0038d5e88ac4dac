"""The database mechanism: one async SQLAlchemy engine per service process, sessions as units of
work, and Alembic migrations run programmatically (by `tailor migrate` and the embedded runtime).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode

import asyncpg
import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, exc, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

from tailor_platform import telemetry

T = TypeVar("T")
U = TypeVar("U")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Constraint names for every service's MetaData, so migrations can name what they alter."""


class Database:
    def __init__(self, url: str, *, pool_size: int = 10, read_connections: int = 2, echo: bool = False) -> None:
        if not url:
            raise ValueError("no database URL configured (TAILOR_<SERVICE>_DATABASE_URL or TAILOR_DATABASE_URL)")
        self.url = url
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=pool_size,
            # No pre-ping: with asyncpg it costs three round trips per checkout (BEGIN, ";",
            # ROLLBACK). A connection the database closed (a restart, a failover) is noticed by the
            # driver and replaced at checkout without any round trip (_discard_closed).
            pool_pre_ping=False,
            pool_recycle=1800,
            echo=echo,
        )
        event.listen(self.engine.sync_engine, "checkout", _discard_closed)
        # A Session subclass of our own, so that session events (the outbox's after-commit wake-up)
        # apply to this database's sessions only.
        self.sync_session_class: type[Session] = type("TailorSession", (Session,), {})
        self.sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=self.sync_session_class
        )
        telemetry.instrument_engine(self.engine)
        self._readers = ReadPool(driver_url(url), read_connections)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session inside one transaction: committed on success, rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self, timeout_s: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout_s), self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def read_row(self, query: str, *args: object) -> asyncpg.Record | None:
        """One read-only statement on a hot read path (GetProfile): straight to the driver from a
        small pool of its own, without ORM session, transaction or pre-ping round trips. A
        connection the database dropped is retried once on a fresh one."""
        with telemetry.database_span(_operation(query), query):
            for attempt in range(2):
                try:
                    return await self._readers.fetchrow(query, *args)
                except (asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, ConnectionError):
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    async def dispose(self) -> None:
        await self._readers.close()
        await self.engine.dispose()


class ReadPool:
    """Connections for single-statement reads, lent for one statement at a time.

    asyncpg's own pool spends about 80 µs of CPU per acquire and release (timeouts, a shielded
    release task, a reset hook; measured), a tenth of a whole GetProfile. A read here holds its
    connection for one statement outside any transaction, so there is nothing to reset and the
    hand-over is a list pop and push. A connection whose statement failed or was cancelled is
    closed rather than lent again (it may be mid-protocol); its slot is freed for a new one."""

    def __init__(self, dsn: str, size: int) -> None:
        if size < 1:
            raise ValueError("a read pool needs at least one connection")
        self.dsn = dsn
        self.size = size
        self._idle: list[asyncpg.Connection] = []
        self._opened = 0
        self._closed = False
        # Reads waiting for a connection; each gets one, or None: a slot was freed, open one.
        self._waiting: deque[asyncio.Future[asyncpg.Connection | None]] = deque()

    @property
    def opened(self) -> int:
        """Connections open or being opened (at most `size`)."""
        return self._opened

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        connection = await self._take()
        try:
            row = await connection.fetchrow(query, *args)
        except BaseException:
            self._discard(connection)
            raise
        self._pass_on(connection)
        return row

    async def _take(self) -> asyncpg.Connection:
        if self._closed:
            raise asyncpg.InterfaceError("the read pool is closed")
        while True:
            while self._idle:
                connection = self._idle.pop()
                if not connection.is_closed():
                    return connection
                self._opened -= 1  # the server closed it (a restart): its slot is free
            if self._opened < self.size:
                return await self._open()
            waiter: asyncio.Future[asyncpg.Connection | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                lent = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed over just as we were cancelled
                    self._pass_on(waiter.result())
                raise
            if lent is not None:
                return lent
            if self._closed:  # woken by close(): no connection will come
                raise asyncpg.InterfaceError("the read pool is closed")

    async def _open(self) -> asyncpg.Connection:
        self._opened += 1
        try:
            connection: asyncpg.Connection = await asyncpg.connect(self.dsn)
            await _json_codecs(connection)
        except BaseException:
            self._slot_freed()
            raise
        return connection

    def _discard(self, connection: asyncpg.Connection) -> None:
        connection.terminate()
        self._slot_freed()

    def _slot_freed(self) -> None:
        self._opened -= 1
        self._pass_on(None)

    def _pass_on(self, lent: asyncpg.Connection | None) -> None:
        """To the first read still waiting: a connection, or None (a free slot); else keep it
        (or, once the pool is closed, close it: a read that was running when it closed)."""
        if self._closed and lent is not None:
            lent.terminate()
            self._opened -= 1
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(lent)
                return
        if lent is not None:
            self._idle.append(lent)

    async def close(self) -> None:
        """Close the idle connections now and the ones lent out as they come back; reads waiting
        for a connection and reads after this fail (the pool is done, like the process that owns it)."""
        self._closed = True
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)
        idle, self._idle = self._idle, []
        self._opened -= len(idle)
        await asyncio.gather(*(connection.close() for connection in idle), return_exceptions=True)


class Driver:
    """Statements sent straight to the asyncpg connection under a session, each traced like the
    ones SQLAlchemy sends (a CLIENT span, when spans are recorded)."""

    __slots__ = ("connection",)

    def __init__(self, connection: asyncpg.Connection) -> None:
        self.connection = connection

    async def execute(self, query: str, *args: object) -> str:
        with telemetry.database_span(_operation(query), query):
            status: str = await self.connection.execute(query, *args)
            return status

    async def fetch(self, query: str, *args: object) -> list[asyncpg.Record]:
        with telemetry.database_span(_operation(query), query):
            rows: list[asyncpg.Record] = await self.connection.fetch(query, *args)
            return rows

    async def fetchrow(self, query: str, *args: object) -> asyncpg.Record | None:
        with telemetry.database_span(_operation(query), query):
            row: asyncpg.Record | None = await self.connection.fetchrow(query, *args)
            return row

    async def fetchval(self, query: str, *args: object) -> object:
        with telemetry.database_span(_operation(query), query):
            return await self.connection.fetchval(query, *args)


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a database error, whether it came through SQLAlchemy (wrapped) or straight
    from the driver (`Driver` statements): e.g. 40P01 for a deadlock, to decide on a retry."""
    # SQLAlchemy wraps the adapter's error, which wraps the driver's (its __cause__).
    original = error.orig if isinstance(error, exc.DBAPIError) else error
    candidates = [original, getattr(original, "__cause__", None)]
    for candidate in candidates:
        code = getattr(candidate, "sqlstate", None)
        if code:
            return str(code)
    return None


def _operation(query: str) -> str:
    return query.lstrip().split(None, 1)[0].upper() if query.strip() else "statement"


async def driver_connection(session: AsyncSession) -> Driver:
    """The asyncpg connection under the session, inside the session's transaction: for set-based
    statements (unnest of arrays) that SQLAlchemy would send row by row, and for hot paths that
    cannot afford its per-statement overhead.

    SQLAlchemy's asyncpg adapter opens the database transaction lazily, with its first statement;
    a statement sent straight to the driver before that would run (and commit) on its own, so the
    transaction is opened through SQLAlchemy first when it is not open yet."""
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
    if not driver.is_in_transaction():
        start = getattr(raw.dbapi_connection, "_start_transaction", None)
        if start is not None:
            # SQLAlchemy's own (private) way to open it: BEGIN only, no extra statement.
            await start()
        else:
            await session.execute(text("SELECT 1"))
    return Driver(driver)


async def while_running(statement: Coroutine[Any, Any, T], work: Callable[[], U]) -> tuple[T, U]:
    """Send `statement` (a `Driver` call, or a store method whose first step sends one), do the
    CPU-bound `work` while PostgreSQL runs it, then wait for the statement (and whatever the
    coroutine does after it): the database and this process work at once, on different cores,
    instead of each waiting for the other. `work` must not use the statement's connection. If
    `work` fails, the statement is still waited for (its connection stays usable) and the failure
    is raised. (A statement the connection has not prepared yet costs a round trip first, so it
    overlaps the work from its second use on.)"""
    sent = asyncio.ensure_future(statement)
    await asyncio.sleep(0)  # the statement's task runs up to its first wait: the query is on the wire
    try:
        result = work()
    except BaseException:
        await asyncio.gather(sent, return_exceptions=True)
        raise
    return await sent, result


async def _json_codecs(connection: asyncpg.Connection) -> None:
    """json and jsonb values as Python objects, as they come through SQLAlchemy (read with orjson:
    several times faster than the standard library, and hot reads return whole JSON documents)."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(type_name, encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def _discard_closed(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Pool checkout: a connection whose socket the server closed is replaced by a new one
    (SQLAlchemy retries the checkout on DisconnectionError)."""
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("the database closed this connection")


def driver_url(url: str) -> str:
    """The asyncpg form of a SQLAlchemy URL (postgresql+asyncpg://... -> postgresql://...). The TLS
    setting SQLAlchemy's asyncpg dialect reads as `ssl=` is `sslmode=` in an asyncpg DSN (which
    would pass an unknown `ssl` on to the server as a setting, and the server refuses it)."""
    scheme, sep, rest = url.partition("://")
    if not (sep and scheme.startswith("postgresql")):
        return url
    where, mark, query = rest.partition("?")
    if mark:
        pairs = [
            ("sslmode" if name == "ssl" else name, value) for name, value in parse_qsl(query, keep_blank_values=True)
        ]
        query = urlencode(pairs)
    return f"postgresql://{where}{mark}{query}"


def alembic_config(migrations_dir: Path, url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(migrations_dir: Path, url: str, revision: str = "head") -> None:
    """Apply a service's migrations up to `revision` (idempotent). Blocking: run it in a thread."""
    command.upgrade(alembic_config(migrations_dir, url), revision)
