"""Traits that time alone changes are announced when they change (real PostgreSQL, the service's
own store): a rolling window moving on or another day since the last purchase gives a
profile.updated with cause "time", once, and an event arriving later reports against what was
last announced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.json_format import MessageToDict
from sqlalchemy import text
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.profile_pb2 import ProfileUpdated
from tailor.profile.v1 import profile_pb2 as pb
from tailor_platform.bus.envelope import unpack
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database
from tailor_profile.clients import IdentityClient
from tailor_profile.domain.model import DAY_S
from tailor_profile.service import ProfileService, Resolved
from tailor_profile.testing import INTAKE, SETTINGS, item, make_event, purchase

EMAIL = "ada@example.com"


@pytest.fixture
def database_url(fresh_database: Callable[[str], str]) -> str:
    return fresh_database("profile")


@pytest.fixture
async def profile(database_url: str) -> AsyncIterator[ProfileService]:
    db = Database(database_url)
    # Identity is never called: events are stored as already resolved.
    yield ProfileService(db, Outbox(db, "profile"), IdentityClient("127.0.0.1:1", 0.1), INTAKE, SETTINGS)
    await db.dispose()


async def ingest(profile: ProfileService, events: list[pb.Event], now: datetime) -> None:
    candidates, rejections = INTAKE.check_batch(events, now)
    assert not rejections
    async with profile.db.transaction() as session:
        await profile.store_resolved(session, [Resolved(c, "cust-1") for c in candidates], now)


async def last_update(profile: ProfileService) -> tuple[str, dict[str, Any]]:
    async with profile.db.sessions() as session:
        payload = (await session.execute(text("SELECT payload FROM outbox ORDER BY id DESC LIMIT 1"))).scalar_one()
    update = unpack(Envelope.FromString(payload), ProfileUpdated)
    return update.cause, MessageToDict(update.values)


async def test_time_changes_are_announced_once_when_due(profile: ProfileService) -> None:
    start = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    order = make_event("order_completed", start - timedelta(days=10), email=EMAIL, purchase=purchase(item(price=2500)))
    view = make_event("page_view", start - timedelta(days=2), email=EMAIL, page_view=pb.PageView(url="/"))
    await ingest(profile, [order, view], start)
    moment = int(start.timestamp())

    assert await profile.announce_time_changes(moment) == 0  # nothing has changed yet

    later = moment + 21 * DAY_S  # the order left the 30-day window, the view the 7-day one
    assert await profile.announce_time_changes(later) == 1
    cause, values = await last_update(profile)
    assert cause == "time"
    assert values == {
        "orders_30d": 0,
        "revenue_30d_minor": 0,
        "page_views_7d": 0,
        "rfm_recency_days": 31,
        "rfm_recency_score": 4,
    }
    assert await profile.announce_time_changes(later) == 0  # announced: due again only at the next change
    assert await profile.announce_time_changes(later + DAY_S) == 1
    assert (await last_update(profile))[1] == {"rfm_recency_days": 32}


async def test_the_sweep_skips_customers_locked_by_ingestion(profile: ProfileService) -> None:
    start = datetime.now(UTC) - timedelta(days=60)
    await ingest(profile, [make_event("page_view", start, email=EMAIL, page_view=pb.PageView(url="/"))], start)
    later = int(start.timestamp()) + 10 * DAY_S
    async with profile.db.transaction() as ingesting:  # a batch of this customer's in flight
        await profile.store.lock_customers(ingesting, ["cust-1"])
        assert await profile.announce_time_changes(later) == 0  # skipped, not waited for
    assert await profile.announce_time_changes(later) == 1
    assert (await last_update(profile))[1] == {"page_views_7d": 0}


async def test_an_event_reports_what_time_changed_since_the_last_announcement(profile: ProfileService) -> None:
    start = datetime.now(UTC) - timedelta(days=60)
    order = make_event("order_completed", start - timedelta(days=1), email=EMAIL, purchase=purchase(item(price=2500)))
    await ingest(profile, [order], start)

    # 40 days on, no sweep ran; a page view arrives: its update carries the window change too.
    later = start + timedelta(days=40)
    await ingest(profile, [make_event("page_view", later, email=EMAIL, page_view=pb.PageView(url="/"))], later)
    cause, values = await last_update(profile)
    assert cause == "events"
    assert values["orders_30d"] == 0 and values["page_views_7d"] == 1 and values["rfm_recency_days"] == 41
