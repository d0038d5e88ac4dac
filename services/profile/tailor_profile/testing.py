"""Test and verification support: building events, and recomputing a customer's traits from scratch
from a full timeline (the reference the incremental traits are checked against)."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from tailor.profile.v1 import profile_pb2 as pb
from tailor_platform.validation import Validator

from tailor_profile.domain.traits import TraitSettings, evaluate, replay
from tailor_profile.intake import Intake
from tailor_profile.server import DEFAULT_RATES

INTAKE = Intake(DEFAULT_RATES, "EUR")
SETTINGS = TraitSettings()


def stamp(moment: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(moment)
    return result


def ago(days: float = 0, hours: float = 0) -> datetime:
    return datetime.now(UTC) - timedelta(days=days, hours=hours)


def new_id(prefix: str = "ev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


def make_event(kind: str, at: datetime, *, email: str = "", channel: str = "web", **payload: Any) -> pb.Event:
    event = pb.Event(id=new_id(), type=kind, channel=channel, timestamp=stamp(at))
    if email:
        event.identifiers.email = email
    for name, value in payload.items():
        if name in ("store_id",):
            setattr(event, name, value)
        elif name == "identifiers":
            event.identifiers.CopyFrom(value)
        else:
            getattr(event, name).CopyFrom(value)
    return event


def item(sku: str = "sku-1", category: str = "shoes", quantity: int = 1, price: int = 1000) -> pb.LineItem:
    return pb.LineItem(sku=sku, category=category, quantity=quantity, unit_price_minor=price)


def purchase(*items: pb.LineItem, total: int = 0) -> pb.Purchase:
    return pb.Purchase(order_id=new_id("o"), items=list(items), total_minor=total)


RANDOM_KINDS = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "order_completed",
    "pos_purchase",
    "return",
    "loyalty_earned",
    "store_visit",
    "support_ticket_opened",
    "support_ticket_closed",
)


def random_events(rng: random.Random, email: str, count: int) -> list[pb.Event]:
    """A random omnichannel timeline over the last 400 days."""
    events = []
    for _ in range(count):
        at = ago(days=rng.uniform(0, 400))
        line = item(f"sku-{rng.randint(1, 5)}", rng.choice(["shoes", "bags", "coats"]), rng.randint(1, 3))
        line.unit_price_minor = rng.randint(100, 9000)
        kind = rng.choice(RANDOM_KINDS)
        if kind in ("order_completed", "pos_purchase"):
            channel = "pos" if kind == "pos_purchase" else "web"
            event = make_event(kind, at, email=email, channel=channel, purchase=purchase(line))
            event.store_id = "store-1" if kind == "pos_purchase" else ""
        elif kind in ("add_to_cart", "remove_from_cart"):
            event = make_event(kind, at, email=email, cart_change=pb.CartChange(item=line))
        elif kind == "return":
            event = make_event(kind, at, email=email, product_return=pb.Return(items=[line]))
        elif kind == "product_view":
            event = make_event(kind, at, email=email, product_view=pb.ProductView(sku=line.sku, category=line.category))
        elif kind == "loyalty_earned":
            event = make_event(kind, at, email=email, loyalty=pb.LoyaltyPoints(points=rng.randint(1, 300)))
        elif kind.startswith("support"):
            ticket = pb.SupportTicket(ticket_id=f"t-{rng.randint(1, 3)}")
            event = make_event(kind, at, email=email, channel="call_center", support_ticket=ticket)
        elif kind == "store_visit":
            event = make_event(kind, at, email=email, channel="pos", store_id=rng.choice(["store-1", "store-2"]))
        else:
            event = make_event(kind, at, email=email, page_view=pb.PageView(url="/"))
        events.append(event)
    return events


def recomputed_traits(events: Iterable[pb.Event], now: int) -> dict[str, Any]:
    """The traits of a timeline recomputed from scratch, in time order, at `now`."""
    facts = []
    for event in events:
        fact = INTAKE.facts(Validator(), event, now)
        assert fact is not None, event
        facts.append(fact)
    return evaluate(replay(facts, SETTINGS, now), now, SETTINGS).flat()


def assert_traits_equal(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert actual.keys() == expected.keys()
    for name, value in expected.items():
        if name == "category_affinity":
            assert set(actual[name]) == set(value), name
            for category, score in value.items():
                assert abs(actual[name][category] - score) < 2e-4, (name, category)
        else:
            assert actual[name] == value, (name, actual[name], value)


def wait_until(condition: Callable[[], bool], timeout_s: float = 15.0, interval_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError("condition not reached in time")
