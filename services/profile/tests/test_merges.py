"""Folding identity merges: a fetched batch applied at once leaves exactly what applying its merges
one by one leaves (real PostgreSQL, the service's own store), and the plan behind it."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from tailor_platform.bus.merges import Merge
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database
from tailor_profile.clients import IdentityClient
from tailor_profile.domain.merges import plan_merges
from tailor_profile.domain.traits import evaluate
from tailor_profile.service import ProfileService, Resolved
from tailor_profile.store import AttributeValue
from tailor_profile.testing import INTAKE, SETTINGS, assert_traits_equal, random_events, recomputed_traits

CUSTOMERS = ("a", "s", "t", "b", "c", "d")
AGES = {"a": 0, "s": 3, "t": 5, "b": 1, "c": 2, "d": 4}  # days since each set its city
# A chain (a into s, then s into t), an unrelated merge, and one absorbing two customers at once.
BATCH = [Merge("s", ["a"], "m1"), Merge("t", ["s"], "m2"), Merge("c", ["b"], "m3"), Merge("t", ["d", "d"], "m4")]


def test_plan_follows_chains_to_where_each_customer_ends() -> None:
    plan = plan_merges(BATCH)
    assert plan is not None
    assert plan.final == {"a": "t", "s": "t", "b": "c", "d": "t"}
    assert plan.merge_ids == {"a": "m1", "s": "m2", "b": "m3", "d": "m4"}
    assert plan.survivors == ["t", "c"]
    assert plan.steps == [("s", ["a"]), ("t", ["s"]), ("c", ["b"]), ("t", ["d"])]


def test_a_customer_absorbed_twice_or_revived_is_left_to_one_by_one() -> None:
    assert plan_merges([Merge("s", ["a"], "m1"), Merge("t", ["a"], "m2")]) is None
    assert plan_merges([Merge("t", ["s"], "m1"), Merge("s", ["a"], "m2")]) is None
    assert plan_merges([Merge("t", ["s"], "m1")]) is not None


@pytest.fixture
def database_urls(fresh_database: Callable[[str], str]) -> tuple[str, str]:
    return fresh_database("profile"), fresh_database("profile")


@pytest.fixture
async def databases(database_urls: tuple[str, str]) -> AsyncIterator[tuple[Database, Database]]:
    batched, one_by_one = Database(database_urls[0]), Database(database_urls[1])
    yield batched, one_by_one
    await batched.dispose()
    await one_by_one.dispose()


def service(db: Database) -> ProfileService:
    # Identity is never called: events are stored as already resolved.
    return ProfileService(db, Outbox(db, "profile"), IdentityClient("127.0.0.1:1", 0.1), INTAKE, SETTINGS)


async def seed(profile: ProfileService, timelines: dict[str, list[Any]], now: datetime) -> None:
    async with profile.db.transaction() as session:
        for customer, events in timelines.items():
            candidates, rejections = INTAKE.check_batch(events, now)
            assert not rejections
            await profile.store_resolved(session, [Resolved(c, customer) for c in candidates], now)
            age = timedelta(days=AGES[customer])
            attribute = AttributeValue("city", f"city-of-{customer}", "test", now - age)
            await profile.store.upsert_attributes(session, customer, [attribute])


async def snapshot(profile: ProfileService, now: int) -> dict[str, Any]:
    async with profile.db.sessions() as session:
        events = (await session.execute(text("SELECT event_id, customer_id FROM customer_event ORDER BY 1"))).all()
        aliases = (
            await session.execute(text("SELECT absorbed_id, survivor_id, merge_id FROM customer_alias ORDER BY 1"))
        ).all()
        attributes = (await session.execute(text("SELECT customer_id, name, value FROM profile_attribute"))).all()
        states = await profile.store.load_states(session, list(CUSTOMERS))
    return {
        "events": [tuple(row) for row in events],
        "aliases": [tuple(row) for row in aliases],
        "attributes": sorted(tuple(row) for row in attributes),
        "traits": {customer: evaluate(saved.state, now, SETTINGS).flat() for customer, saved in states.items()},
    }


async def test_a_batch_of_merges_leaves_what_one_by_one_leaves(databases: tuple[Database, Database]) -> None:
    rng = random.Random(11)
    timelines = {customer: random_events(rng, f"{customer}@example.com", 15) for customer in CUSTOMERS}
    now = datetime.now(UTC)
    batched, one_by_one = service(databases[0]), service(databases[1])
    for profile in (batched, one_by_one):
        await seed(profile, timelines, now)

    async with batched.db.transaction() as session:
        await batched.merge_many(session, BATCH)
    for merge in BATCH:
        async with one_by_one.db.transaction() as session:
            await one_by_one.merge_many(session, [merge])

    moment = int(now.timestamp())
    expected = await snapshot(one_by_one, moment)
    assert await snapshot(batched, moment) == expected
    assert set(expected["traits"]) == {"t", "c"}
    everything_on_t = [event for customer in ("a", "s", "t", "d") for event in timelines[customer]]
    assert_traits_equal(expected["traits"]["t"], recomputed_traits(everything_on_t, moment))
    assert ("t", "city", "city-of-a") in expected["attributes"]  # the newest value wins


async def test_a_merge_identity_reversed_before_it_was_consumed_is_not_applied(
    databases: tuple[Database, Database],
) -> None:
    """identity.merged and identity.unmerged have consumers of their own: when the unmerge is
    handled first, the late merge must not join the customers again; the other merges of its
    batch still apply."""
    rng = random.Random(12)
    timelines = {customer: random_events(rng, f"{customer}@example.com", 5) for customer in CUSTOMERS}
    now = datetime.now(UTC)
    profile = service(databases[0])
    await seed(profile, timelines, now)
    before = await snapshot(profile, int(now.timestamp()))
    async with profile.db.transaction() as session:
        await profile.store.add_reversed_merge(session, "m1", "u1")
    async with profile.db.transaction() as session:
        await profile.merge_many(session, [Merge("s", ["a"], "m1")])
    assert await snapshot(profile, int(now.timestamp())) == before

    async with profile.db.transaction() as session:
        await profile.merge_many(session, [Merge("s", ["a"], "m1"), Merge("c", ["b"], "m3")])
    after = await snapshot(profile, int(now.timestamp()))
    assert after["aliases"] == [("b", "c", "m3")]
    assert {customer for _, customer in after["events"]} == set(CUSTOMERS) - {"b"}


async def test_merges_leave_events_where_they_are_stored_and_the_survivor_reads_them_all(
    databases: tuple[Database, Database],
) -> None:
    """No event row is rewritten by a merge (chains included): the aliases make the absorbed
    customers' events the survivor's, in its paged timeline and in what an unmerge reads."""
    rng = random.Random(13)
    timelines = {customer: random_events(rng, f"{customer}@example.com", 7) for customer in CUSTOMERS}
    now = datetime.now(UTC)
    profile = service(databases[0])
    await seed(profile, timelines, now)
    async with profile.db.sessions() as session:
        holders_before = (await session.execute(text("SELECT event_id, holder_id FROM event ORDER BY 1"))).all()

    async with profile.db.transaction() as session:
        await profile.merge_many(session, BATCH)

    async with profile.db.sessions() as session:
        assert (await session.execute(text("SELECT event_id, holder_id FROM event ORDER BY 1"))).all() == holders_before
        held = await profile.store.events_of(session, ["t"])
    on_t = {event.id for customer in ("a", "s", "t", "d") for event in timelines[customer]}
    assert {event.event_id for event in held} == on_t
    assert {event.customer_id for event in held} == {"t"}
    assert {event.holder_id for event in held} == {"a", "s", "t", "d"}

    pages: list[str] = []
    before = None
    while True:
        customer, page = await profile.timeline("s", types=(), since=None, until=None, before=before, limit=5)
        assert customer == "t"  # an absorbed id reads its survivor's timeline
        pages += [event.event_id for event in page]
        if len(page) < 5:
            break
        before = (page[-1].occurred_at, page[-1].event_id)
    assert sorted(pages) == sorted(on_t)
    times = {event.id: event.timestamp.ToDatetime(UTC) for events in timelines.values() for event in events}
    assert [times[event_id] for event_id in pages] == sorted((times[e] for e in pages), reverse=True)
