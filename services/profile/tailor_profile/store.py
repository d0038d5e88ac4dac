"""Profile tables and queries.

The ingestion path is set-based: every query takes a whole batch (arrays unnested in PostgreSQL),
so a batch of 1,000 events costs a handful of statements, never one per event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    text,
)
from sqlalchemy.ext.asyncio import AsyncSession
from tailor_platform.db import NAMING_CONVENTION, Database, driver_connection

from tailor_profile.domain.traits import TraitState, next_change

metadata = MetaData(naming_convention=NAMING_CONVENTION)

event = Table(
    "event",
    metadata,
    Column("event_id", String(128), primary_key=True),
    # The customer the event was stored under. Merges do not move events: a customer's events are
    # those it holds and those held by the customers merged into it (customer_alias; the view
    # customer_event gives each event's customer). Only an unmerge moves events, by id.
    Column("holder_id", String(128), nullable=False),
    Column("type", String(128), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The event exactly as received (tailor.profile.v1.Event), for ListEvents and replays.
    Column("payload", LargeBinary, nullable=False),
    Index("ix_event_holder_timeline", "holder_id", "occurred_at", "event_id"),
)

profile_state = Table(
    "profile_state",
    metadata,
    Column("customer_id", String(128), primary_key=True),
    # TraitState.to_json() as JSON bytes: order-independent aggregates, traits are evaluated from
    # them at read time. Not JSONB: only ever read and written whole (migration 0009).
    Column("state", LargeBinary, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Epoch seconds: when the traits were last announced (profile.updated reports changes since),
    # and when time alone changes them next (a window moves on; NULL: never), for the sweep.
    Column("announced_at", BigInteger, nullable=False, server_default="0"),
    Column("next_change_at", BigInteger, nullable=True),
    Index("ix_profile_state_next_change_at", "next_change_at"),
    # Created with fillfactor 80 (migration 0007): room for a batch's update to stay on its page.
)

profile_attribute = Table(
    "profile_attribute",
    metadata,
    Column("customer_id", String(128), primary_key=True),
    Column("name", String(128), primary_key=True),
    Column("value", String(1000), nullable=False),
    Column("source", String(200), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    # The customer that set it: merges move rows to the survivor and keep this, so an unmerge can
    # give each back. A customer's value of an attribute is the newest of its rows of that name.
    Column("origin_id", String(128), primary_key=True),
)

CURRENT_ATTRIBUTES = (
    "SELECT DISTINCT ON (a.name) a.name, a.value, a.source, a.updated_at FROM profile_attribute a "
    "WHERE a.customer_id = {customer} ORDER BY a.name, a.updated_at DESC, a.origin_id = a.customer_id DESC"
)
"""A customer's attributes: of each name, the newest row (its own on a tie)."""

customer_alias = Table(
    "customer_alias",
    metadata,
    # A customer identity merged into another: the events it holds are the survivor's, and events
    # that still arrive for it go to the survivor. Always the final survivor (never a chain).
    Column("absorbed_id", String(128), primary_key=True),
    Column("survivor_id", String(128), nullable=False, index=True),
    Column("merge_id", String(128), nullable=False),
    Column("merged_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

reversed_merge = Table(
    "reversed_merge",
    metadata,
    # Merges identity reversed: an identity.merged message for one of them that arrives late (the
    # merged and unmerged subjects have consumers of their own) must not merge the customers again.
    Column("merge_id", String(128), primary_key=True),
    Column("unmerge_id", String(128), nullable=False),
    Column("reversed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

pending_event = Table(
    "pending_event",
    metadata,
    # Valid events accepted while identity was unreachable; resolved and applied when it returns.
    Column("event_id", String(128), primary_key=True),
    Column("payload", LargeBinary, nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("seq", BigInteger, Identity(), nullable=False),
)


HOLDERS = "SELECT unnest({customers}) UNION SELECT absorbed_id FROM customer_alias WHERE survivor_id = ANY({customers})"
"""The customers holding the events of `customers` (a text[] expression): themselves and those merged into them."""


def _lock_key(column: str) -> str:
    """The advisory lock key of a customer id (one expression for every statement that locks)."""
    return f"hashtextextended({column}, 7)"


class SavedState(NamedTuple):
    state: TraitState
    announced_at: int
    """When its traits were last announced in profile.updated: what changed is reported against them."""


class EventRow(NamedTuple):
    """An event to store (a named tuple: ingestion makes one per event)."""

    event_id: str
    customer_id: str
    type: str
    channel: str
    occurred_at_s: int
    """Epoch seconds; the database makes the timestamp (cheaper than a datetime per event)."""
    payload: bytes


class HeldEvent(NamedTuple):
    event_id: str
    customer_id: str
    """The customer it belongs to now."""
    holder_id: str
    """The customer it is stored under (the same, or one merged into it)."""
    payload: bytes


@dataclass(frozen=True)
class StoredEvent:
    customer_id: str
    occurred_at: datetime
    received_at: datetime
    payload: bytes
    event_id: str


@dataclass(frozen=True)
class AttributeValue:
    name: str
    value: str
    source: str
    updated_at: datetime


PROFILE_QUERY = (
    "WITH target AS (SELECT coalesce("
    "(SELECT survivor_id FROM customer_alias WHERE absorbed_id = $1), $1::text) AS id) "
    "SELECT t.id AS customer_id, s.state AS state, (SELECT coalesce(json_agg(json_build_array("
    "a.name, a.value, a.source, a.updated_at) ORDER BY a.name), '[]'::json) "
    f"FROM ({CURRENT_ATTRIBUTES.format(customer='t.id')}) a) AS attributes "
    "FROM target t LEFT JOIN profile_state s ON s.customer_id = t.id"
)


class ProfileStore:
    """Queries; every method runs in the caller's session (and so in its transaction)."""

    async def lock_customers(self, session: AsyncSession, customer_ids: Iterable[str]) -> None:
        """Serialise writers of the same customers (also ones with no row yet) until commit.
        Locks are taken in one fixed order, so two batches never deadlock on each other."""
        keys = sorted(set(customer_ids))
        if keys:
            driver = await driver_connection(session)
            await driver.execute(
                "SELECT pg_advisory_xact_lock(k) FROM "
                f"(SELECT DISTINCT {_lock_key('c')} AS k FROM unnest($1::text[]) c ORDER BY 1) s",
                keys,
            )

    async def survivors(self, session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, str]:
        """Absorbed id -> the customer it was merged into, for those of `customer_ids` merged away."""
        if not customer_ids:
            return {}
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT absorbed_id, survivor_id FROM customer_alias WHERE absorbed_id = ANY($1::text[])",
            list(set(customer_ids)),
        )
        return {row[0]: row[1] for row in rows}

    async def insert_events(self, session: AsyncSession, rows: Sequence[EventRow]) -> set[str]:
        """Store new events; returns the ids that were new (a known id is a duplicate)."""
        if not rows:
            return set()
        driver = await driver_connection(session)
        inserted = await driver.fetch(
            "INSERT INTO event (event_id, holder_id, type, channel, occurred_at, payload) "
            "SELECT e, c, t, ch, to_timestamp(o), p FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bytea[]) AS x(e, c, t, ch, o, p) "
            "ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            [r.event_id for r in rows],
            [r.customer_id for r in rows],
            [r.type for r in rows],
            [r.channel for r in rows],
            [r.occurred_at_s for r in rows],
            [r.payload for r in rows],
        )
        return {row[0] for row in inserted}

    async def stored_event_ids(self, session: AsyncSession, event_ids: Sequence[str]) -> set[str]:
        if not event_ids:
            return set()
        result = await session.execute(
            text("SELECT event_id FROM event WHERE event_id = ANY(:ids)"), {"ids": list(event_ids)}
        )
        return set(result.scalars())

    async def load_states(self, session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, SavedState]:
        if not customer_ids:
            return {}
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT customer_id, state, announced_at FROM profile_state WHERE customer_id = ANY($1::text[])",
            list(customer_ids),
        )
        return {row[0]: SavedState(TraitState.from_json(orjson.loads(row[1])), row[2]) for row in rows}

    async def save_states(self, session: AsyncSession, states: dict[str, TraitState], now: int) -> None:
        """Save states whose traits were announced as of `now`, with when time changes them next."""
        if not states:
            return
        driver = await driver_connection(session)
        await driver.execute(
            "INSERT INTO profile_state (customer_id, state, updated_at, announced_at, next_change_at) "
            "SELECT c, s, now(), $3, n FROM unnest($1::text[], $2::bytea[], $4::bigint[]) AS t(c, s, n) "
            "ON CONFLICT (customer_id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at, "
            "announced_at = EXCLUDED.announced_at, next_change_at = EXCLUDED.next_change_at",
            list(states),
            # orjson: a state is a few KB of JSON per customer per batch; the standard library
            # took as long to write and read them as evaluating the traits.
            [orjson.dumps(state.to_json()) for state in states.values()],
            now,
            [next_change(state, now) for state in states.values()],
        )

    async def lock_due_for_time_change(self, session: AsyncSession, now: int, limit: int) -> list[str]:
        """Customers whose traits time has changed since they were announced (oldest due first),
        locked like `lock_customers` until commit. Customers locked by someone else (a batch being
        ingested, another replica's sweep) are skipped: this never waits, so it cannot deadlock."""
        driver = await driver_connection(session)
        rows = await driver.fetch(
            # The limit inside: only the customers returned are tried (and locked), whatever the plan.
            "SELECT customer_id FROM (SELECT customer_id, next_change_at FROM profile_state "
            "WHERE next_change_at <= $1 ORDER BY next_change_at LIMIT $2) due "
            f"WHERE pg_try_advisory_xact_lock({_lock_key('customer_id')}) ORDER BY next_change_at",
            now,
            limit,
        )
        return [row[0] for row in rows]

    async def delete_states(self, session: AsyncSession, customer_ids: Sequence[str]) -> None:
        driver = await driver_connection(session)
        await driver.execute("DELETE FROM profile_state WHERE customer_id = ANY($1::text[])", list(customer_ids))

    async def add_aliases(
        self, session: AsyncSession, final: Mapping[str, str], merge_ids: Mapping[str, str], survivors: Sequence[str]
    ) -> None:
        """Record the merges (absorbed -> where it ended, by which merge), point earlier aliases of
        the absorbed customers there too, and drop the aliases of customers named survivor (one
        absorbed before and separated since is its own customer again)."""
        driver = await driver_connection(session)
        await driver.execute("DELETE FROM customer_alias WHERE absorbed_id = ANY($1::text[])", list(survivors))
        absorbed = list(final)
        await driver.execute(
            "INSERT INTO customer_alias (absorbed_id, survivor_id, merge_id) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) "
            "ON CONFLICT (absorbed_id) DO UPDATE SET survivor_id = EXCLUDED.survivor_id, merge_id = EXCLUDED.merge_id",
            absorbed,
            [final[customer] for customer in absorbed],
            [merge_ids[customer] for customer in absorbed],
        )
        await driver.execute(
            "UPDATE customer_alias c SET survivor_id = m.survivor "
            "FROM unnest($1::text[], $2::text[]) AS m(absorbed, survivor) WHERE c.survivor_id = m.absorbed",
            absorbed,
            [final[customer] for customer in absorbed],
        )

    # -- unmerges -----------------------------------------------------------------------------

    async def events_of(self, session: AsyncSession, customer_ids: Sequence[str]) -> list[HeldEvent]:
        """Every event of these customers (held by them or by customers merged into them)."""
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT event_id, customer_id, holder_id, payload FROM customer_event "
            f"WHERE holder_id IN ({HOLDERS.format(customers='$1::text[]')}) AND customer_id = ANY($1::text[])",
            list(customer_ids),
        )
        return [HeldEvent(row[0], row[1], row[2], bytes(row[3])) for row in rows]

    async def move_events(self, session: AsyncSession, moves: Mapping[str, str]) -> None:
        """Give each event (by id) to the customer that holds it from now on."""
        if not moves:
            return
        driver = await driver_connection(session)
        await driver.execute(
            "UPDATE event e SET holder_id = m.customer FROM unnest($1::text[], $2::text[]) AS m(id, customer) "
            "WHERE e.event_id = m.id",
            list(moves),
            list(moves.values()),
        )

    async def aliases_involving(self, session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, str]:
        """Absorbed id -> survivor, for the aliases of these customers or into them."""
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT absorbed_id, survivor_id FROM customer_alias "
            "WHERE absorbed_id = ANY($1::text[]) OR survivor_id = ANY($1::text[])",
            list(customer_ids),
        )
        return {row[0]: row[1] for row in rows}

    async def repoint_aliases(self, session: AsyncSession, point: Mapping[str, str], drop: Sequence[str]) -> None:
        """Point existing aliases at other survivors (keeping their merge ids); drop others."""
        driver = await driver_connection(session)
        if point:
            await driver.execute(
                "UPDATE customer_alias c SET survivor_id = m.survivor "
                "FROM unnest($1::text[], $2::text[]) AS m(absorbed, survivor) WHERE c.absorbed_id = m.absorbed",
                list(point),
                list(point.values()),
            )
        if drop:
            await driver.execute("DELETE FROM customer_alias WHERE absorbed_id = ANY($1::text[])", list(drop))

    async def add_reversed_merge(self, session: AsyncSession, merge_id: str, unmerge_id: str) -> None:
        driver = await driver_connection(session)
        await driver.execute(
            "INSERT INTO reversed_merge (merge_id, unmerge_id) VALUES ($1, $2) ON CONFLICT (merge_id) DO NOTHING",
            merge_id,
            unmerge_id,
        )

    async def reversed_merges(self, session: AsyncSession, merge_ids: Sequence[str]) -> set[str]:
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT merge_id FROM reversed_merge WHERE merge_id = ANY($1::text[])", list(set(merge_ids))
        )
        return {row[0] for row in rows}

    async def profile_of(self, db: Database, customer_id: str) -> tuple[str, TraitState | None, list[AttributeValue]]:
        """The customer (the survivor, if merged away), its trait state and attributes, in one
        round trip straight to the driver: GetProfile's whole read, without ORM overhead."""
        row = await db.read_row(PROFILE_QUERY, customer_id)
        assert row is not None, "the query always returns one row"
        state = TraitState.from_json(orjson.loads(row["state"])) if row["state"] is not None else None
        attributes = [
            AttributeValue(name, value, source, datetime.fromisoformat(updated_at))
            for name, value, source, updated_at in row["attributes"]
        ]
        return row["customer_id"], state, attributes

    # -- attributes ---------------------------------------------------------------------------

    async def attributes_of(
        self, session: AsyncSession, customer_ids: Sequence[str]
    ) -> dict[str, dict[str, AttributeValue]]:
        """The attributes of several customers (those without any are absent)."""
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT c.id, a.name, a.value, a.source, a.updated_at FROM unnest($1::text[]) AS c(id), "
            f"LATERAL ({CURRENT_ATTRIBUTES.format(customer='c.id')}) a",
            list(customer_ids),
        )
        found: dict[str, dict[str, AttributeValue]] = {}
        for customer, name, value, source, updated_at in rows:
            found.setdefault(customer, {})[name] = AttributeValue(name, value, source, updated_at)
        return found

    async def attribute_origins(self, session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, set[str]]:
        """Per customer, the customers that set the attributes it holds."""
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT DISTINCT customer_id, origin_id FROM profile_attribute WHERE customer_id = ANY($1::text[])",
            list(customer_ids),
        )
        origins: dict[str, set[str]] = {}
        for customer, origin in rows:
            origins.setdefault(customer, set()).add(origin)
        return origins

    async def move_attributes(
        self, session: AsyncSession, moves: Mapping[tuple[str, str], str] | Mapping[tuple[str, None], str]
    ) -> None:
        """(holder, origin) -> customer: move the rows that origin set (None: every row) from the
        holder to the customer, each keeping its origin (a merge folds, an unmerge gives back). A
        row already there for the same name and origin: the newer stays."""
        if not moves:
            return
        holders, origins = zip(*moves, strict=True)
        driver = await driver_connection(session)
        await driver.execute(
            "WITH m AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) AS m(holder, origin, target)), "
            "moved AS (DELETE FROM profile_attribute a USING m WHERE a.customer_id = m.holder "
            "AND (m.origin IS NULL OR a.origin_id = m.origin) "
            "RETURNING m.target, a.name, a.value, a.source, a.updated_at, a.origin_id) "
            "INSERT INTO profile_attribute (customer_id, name, value, source, updated_at, origin_id) "
            "SELECT DISTINCT ON (target, name, origin_id) * FROM moved "
            "ORDER BY target, name, origin_id, updated_at DESC "
            "ON CONFLICT (customer_id, name, origin_id) DO UPDATE SET value = EXCLUDED.value, "
            "source = EXCLUDED.source, updated_at = EXCLUDED.updated_at "
            "WHERE profile_attribute.updated_at < EXCLUDED.updated_at",
            list(holders),
            list(origins),
            list(moves.values()),
        )

    async def upsert_attributes(
        self, session: AsyncSession, customer_id: str, values: Sequence[AttributeValue], origin_id: str | None = None
    ) -> int:
        """Set attributes of a customer, as set by `origin_id` (the customer itself, or one merged
        into it that the caller named). Last writer (by updated_at) wins per attribute and origin;
        returns how many changed."""
        if not values:
            return 0
        result = await session.execute(
            text(
                "INSERT INTO profile_attribute (customer_id, name, value, source, updated_at, origin_id) "
                "SELECT :c, n, v, s, u, :o FROM unnest(CAST(:names AS text[]), CAST(:vals AS text[]), "
                "CAST(:sources AS text[]), CAST(:times AS timestamptz[])) AS t(n, v, s, u) "
                "ON CONFLICT (customer_id, name, origin_id) DO UPDATE SET value = EXCLUDED.value, "
                "source = EXCLUDED.source, updated_at = EXCLUDED.updated_at "
                "WHERE profile_attribute.updated_at <= EXCLUDED.updated_at "
                "RETURNING name"
            ),
            {
                "c": customer_id,
                "o": origin_id or customer_id,
                "names": [v.name for v in values],
                "vals": [v.value for v in values],
                "sources": [v.source for v in values],
                "times": [v.updated_at for v in values],
            },
        )
        return len(result.all())

    # -- timeline -----------------------------------------------------------------------------

    async def timeline(
        self,
        session: AsyncSession,
        customer_id: str,
        *,
        types: Sequence[str],
        since: datetime | None,
        until: datetime | None,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[StoredEvent]:
        """Newest first; `before` is the (occurred_at, event_id) of the last event of the previous page.
        `customer_id` is a survivor (not merged away): its events are held by it and by those merged
        into it. Each holder's newest events are read in index order, at most a page of them, and
        merged: a page costs the same however long the timeline."""
        clauses = ["e.holder_id = h.id"]
        params: dict[str, object] = {"c": [customer_id], "limit": limit}
        if types:
            clauses.append("e.type = ANY(:types)")
            params["types"] = list(types)
        if since is not None:
            clauses.append("e.occurred_at >= :since")
            params["since"] = since
        if until is not None:
            clauses.append("e.occurred_at < :until")
            params["until"] = until
        if before is not None:
            clauses.append("(e.occurred_at, e.event_id) < (:before_at, :before_id)")
            params["before_at"], params["before_id"] = before
        newest_first = "ORDER BY occurred_at DESC, event_id DESC LIMIT :limit"
        rows = await session.execute(
            text(
                f"SELECT t.* FROM ({HOLDERS.format(customers='CAST(:c AS text[])')}) AS h(id), LATERAL ("
                "SELECT e.occurred_at, e.received_at, e.payload, e.event_id FROM event e WHERE "
                + " AND ".join(clauses)
                + f" {newest_first}) t {newest_first}"
            ),
            params,
        )
        return [StoredEvent(customer_id, r.occurred_at, r.received_at, r.payload, r.event_id) for r in rows]

    # -- events waiting for identity ----------------------------------------------------------

    async def add_pending(self, session: AsyncSession, events: Sequence[tuple[str, bytes]]) -> None:
        if not events:
            return
        await session.execute(
            text(
                "INSERT INTO pending_event (event_id, payload) "
                "SELECT * FROM unnest(CAST(:ids AS text[]), CAST(:payloads AS bytea[])) "
                "ON CONFLICT (event_id) DO NOTHING"
            ),
            {"ids": [e[0] for e in events], "payloads": [e[1] for e in events]},
        )

    async def take_pending(self, session: AsyncSession, limit: int) -> list[tuple[str, bytes]]:
        """The oldest waiting events, locked for this transaction (other replicas skip them)."""
        rows = await session.execute(
            text("SELECT event_id, payload FROM pending_event ORDER BY seq LIMIT :limit FOR UPDATE SKIP LOCKED"),
            {"limit": limit},
        )
        return [(row.event_id, bytes(row.payload)) for row in rows]

    async def delete_pending(self, session: AsyncSession, event_ids: Sequence[str]) -> None:
        await session.execute(text("DELETE FROM pending_event WHERE event_id = ANY(:ids)"), {"ids": list(event_ids)})

    async def count_pending(self, session: AsyncSession) -> int:
        return int((await session.execute(text("SELECT count(*) FROM pending_event"))).scalar_one())
