"""A seeded, deterministic omnichannel retail population with its ground truth.

Each person has tastes (category weights), a home store, a mix of online and in-store shopping, and
several identifiers used on different channels: anonymous web/app sessions (stitched to the person
when they log in during the session, because the login event carries both the device id and the
email), an in-store loyalty card or POS customer number, sometimes a second email, a phone, and a
name and address typed with occasional typos. Some abandon carts, some return things, some open
support tickets, and a share churns (stops buying) partway through. The ground truth says which
person owns each identifier, who churned and when, and each person's tastes, so that identity's
stitching and the profile traits can be checked against what really happened.

The same seed, size and end date always give the same events, byte for byte.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp
from tailor.identity.v1 import identity_pb2
from tailor.profile.v1 import profile_pb2 as pb

CATALOG: dict[str, tuple[int, int]] = {
    # category: (lowest, highest) unit price in cents
    "shoes": (3_900, 18_000),
    "bags": (2_500, 25_000),
    "coats": (7_900, 39_900),
    "dresses": (2_900, 14_900),
    "shirts": (1_500, 7_900),
    "jeans": (3_900, 12_900),
    "beauty": (600, 6_500),
    "accessories": (900, 9_900),
    "kids": (900, 4_900),
    "home": (1_200, 19_900),
    "sports": (1_900, 15_900),
    "electronics": (2_900, 59_900),
}
SKUS_PER_CATEGORY = 40
PURCHASES = ("order_completed", "pos_purchase")
STORES = tuple(f"store-{n:02d}" for n in range(1, 13))
GIVEN: tuple[str, ...] = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Eva",
    "Felix",
    "Greta",
    "Hugo",
    "Ida",
    "Jonas",
    "Lena",
    "Max",
    "Nora",
)
GIVEN += ("Oskar", "Paula", "Quentin", "Rosa", "Sam", "Tilda", "Umar", "Vera", "Willem", "Yara", "Zoe", "Marta")
SURNAMES: tuple[str, ...] = (
    "Müller",
    "Schmidt",
    "Dubois",
    "Rossi",
    "García",
    "Jansen",
    "Nowak",
    "Svensson",
    "Kowalski",
    "Moreau",
)
SURNAMES += ("Ferrari", "López", "Bakker", "Novak", "Lindqvist", "Petit", "Romano", "Fischer", "Weber", "Silva")
CITIES = ("Berlin", "Paris", "Madrid", "Rome", "Amsterdam", "Vienna", "Lyon", "Munich", "Milan", "Lisbon")
STREETS = ("Main Street", "Station Road", "Park Avenue", "Church Lane", "Market Square", "Mill Road", "High Street")
DOMAINS = ("example.com", "mail.example", "post.example", "inbox.example")


@dataclass
class Person:
    """One real human of the population, with what they are truly like (the ground truth)."""

    person_id: str
    given_name: str
    surname: str
    birth_date: str
    city: str
    address: str
    postcode: str
    emails: list[str]
    phone: str
    loyalty_id: str
    pos_customer_id: str
    devices: list[str]
    tastes: dict[str, float]
    online_share: float
    sessions_per_week: float
    home_store: str
    churn_at: datetime | None
    abandons_carts: bool
    events: int = 0
    orders: int = 0

    def identifiers(self) -> list[tuple[str, str]]:
        found = [("email", e) for e in self.emails] + [("device_id", d) for d in self.devices]
        for kind, value in (("phone", self.phone), ("loyalty_id", self.loyalty_id)):
            if value:
                found.append((kind, value))
        if self.pos_customer_id:
            found.append(("pos_customer_id", self.pos_customer_id))
        return found

    def truth(self) -> dict[str, Any]:
        return {
            "person_id": self.person_id,
            "identifiers": [{"type": kind, "value": value} for kind, value in self.identifiers()],
            "churned": self.churn_at is not None,
            "churn_at": self.churn_at.isoformat() if self.churn_at else None,
            "tastes": {category: round(weight, 4) for category, weight in self.tastes.items()},
            "online_share": round(self.online_share, 3),
            "home_store": self.home_store,
            "abandons_carts": self.abandons_carts,
            "events": self.events,
            "orders": self.orders,
        }


@dataclass(frozen=True)
class DemoConfig:
    people: int = 1000
    seed: int = 42
    days: int = 365
    end: datetime = field(default_factory=lambda: datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0))
    churn_share: float = 0.2
    sessions_per_week: float = 1.2
    """Mean shopping sessions per person and week (the size of the population's activity)."""


def _typo(rng: random.Random, text: str, chance: float = 0.15) -> str:
    """Sometimes drop, double or swap one letter: names and addresses as people really type them."""
    if len(text) < 4 or rng.random() > chance:
        return text
    position = rng.randrange(1, len(text) - 1)
    change = rng.randrange(3)
    if change == 0:
        return text[:position] + text[position + 1 :]
    if change == 1:
        return text[:position] + text[position] + text[position:]
    return text[: position - 1] + text[position] + text[position - 1] + text[position + 1 :]


def _ascii(text: str) -> str:
    return text.lower().translate(str.maketrans("üéáíóöåäñ", "ueaiooaan")).replace(" ", "")


def make_person(rng: random.Random, number: int, config: DemoConfig) -> Person:
    given, surname = rng.choice(GIVEN), rng.choice(SURNAMES)
    handle = f"{_ascii(given)}.{_ascii(surname)}{number}"
    emails = [f"{handle}@{rng.choice(DOMAINS)}"]
    if rng.random() < 0.2:
        emails.append(f"{_ascii(given)[0]}{_ascii(surname)}.{number}@{rng.choice(DOMAINS)}")
    favourite = rng.sample(sorted(CATALOG), k=rng.randint(2, 4))
    raw = {category: rng.random() ** 3 + (2.5 if category in favourite else 0.05) for category in CATALOG}
    total = sum(raw.values())
    churn_at = None
    if rng.random() < config.churn_share:
        churn_at = config.end - timedelta(days=config.days * rng.uniform(0.2, 0.8))
    online_share = rng.choice((0.05, 0.3, 0.5, 0.7, 0.95))
    return Person(
        person_id=f"person-{number:07d}",
        given_name=given,
        surname=surname,
        birth_date=f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        city=rng.choice(CITIES),
        address=f"{rng.randint(1, 180)} {rng.choice(STREETS)}",
        postcode=f"{rng.randint(10000, 99999)}",
        emails=emails,
        phone=f"+49151{rng.randint(10_000_000, 99_999_999)}" if rng.random() < 0.6 else "",
        loyalty_id=f"LC{number:08d}" if rng.random() < 0.65 else "",
        pos_customer_id=f"POS{number:08d}" if rng.random() < 0.3 else "",
        devices=[f"dev-{rng.getrandbits(64):016x}" for _ in range(rng.randint(1, 3))],
        tastes={category: weight / total for category, weight in raw.items()},
        online_share=online_share,
        sessions_per_week=config.sessions_per_week * rng.lognormvariate(0, 0.6),
        home_store=rng.choice(STORES),
        churn_at=churn_at,
        abandons_carts=rng.random() < 0.35,
    )


class _Writer:
    """Builds the events of one person with deterministic ids."""

    def __init__(self, person: Person, rng: random.Random) -> None:
        self.person = person
        self.rng = rng
        self.count = 0
        self.events: list[pb.Event] = []

    def event(self, kind: str, at: datetime, channel: str, **identifiers: str) -> pb.Event:
        self.count += 1
        stamp = Timestamp()
        stamp.FromDatetime(at)
        event = pb.Event(
            id=f"{self.person.person_id}-{self.count:06d}",
            type=kind,
            channel=channel,
            timestamp=stamp,
        )
        for name, value in identifiers.items():
            setattr(event.identifiers, name, value)
        self.events.append(event)
        return event

    def person_attributes(self) -> identity_pb2.PersonAttributes:
        p, rng = self.person, self.rng
        return identity_pb2.PersonAttributes(
            given_name=_typo(rng, p.given_name),
            surname=_typo(rng, p.surname),
            date_of_birth=p.birth_date,
            address=_typo(rng, p.address),
            postcode=p.postcode,
            city=p.city,
        )

    def line(self) -> pb.LineItem:
        categories = list(self.person.tastes)
        category = self.rng.choices(categories, weights=list(self.person.tastes.values()))[0]
        low, high = CATALOG[category]
        sku_number = self.rng.randrange(SKUS_PER_CATEGORY)
        # A SKU has one price: derived from its number, so every basket agrees on it.
        price = low + (high - low) * ((sku_number * 7919) % SKUS_PER_CATEGORY) // SKUS_PER_CATEGORY
        price = price // 100 * 100 + 99
        quantity = 1 if self.rng.random() < 0.85 else self.rng.randint(2, 3)
        return pb.LineItem(sku=f"{category[:3].upper()}-{sku_number:04d}", category=category, quantity=quantity,
                           unit_price_minor=price)  # fmt: skip


def _online_session(w: _Writer, at: datetime, orders: list[tuple[datetime, pb.Event]]) -> None:
    p, rng = w.person, w.rng
    device = rng.choice(p.devices)
    channel = "app" if device == p.devices[-1] and len(p.devices) > 1 else "web"
    who = {"anonymous_id": device}
    if channel == "app" or rng.random() < 0.3:
        who["email"] = p.emails[0]  # the app keeps people logged in; some log in on the web at once
    if channel == "app":
        w.event("app_opened", at, channel, **who).app_opened.app_version = "5.2"
    for _ in range(rng.randint(1, 4)):
        at += timedelta(seconds=rng.randint(10, 120))
        w.event("page_view", at, channel, **who).page_view.url = f"/c/{rng.choice(list(p.tastes))}"
    cart: list[pb.LineItem] = []
    for _ in range(rng.randint(0, 4)):
        at += timedelta(seconds=rng.randint(10, 200))
        line = w.line()
        view = w.event("product_view", at, channel, **who).product_view
        view.sku, view.category, view.price_minor = line.sku, line.category, line.unit_price_minor
        if rng.random() < 0.45:
            at += timedelta(seconds=rng.randint(5, 60))
            w.event("add_to_cart", at, channel, **who).cart_change.item.CopyFrom(line)
            cart.append(line)
    if cart and rng.random() < 0.15:
        at += timedelta(seconds=30)
        removed = cart.pop(rng.randrange(len(cart)))
        w.event("remove_from_cart", at, channel, **who).cart_change.item.CopyFrom(removed)
    buys = cart and rng.random() < (0.25 if p.abandons_carts else 0.7)
    if not buys:
        return  # browsing only, or an abandoned cart
    # Checkout requires logging in: the event carries the device id and an email, which stitches
    # the anonymous session to the person.
    email = p.emails[-1] if len(p.emails) > 1 and rng.random() < 0.3 else p.emails[0]
    at += timedelta(seconds=rng.randint(20, 300))
    value = sum(item.quantity * item.unit_price_minor for item in cart)
    started = w.event("checkout_started", at, channel, anonymous_id=device, email=email)
    started.checkout_started.value_minor = value
    at += timedelta(seconds=rng.randint(30, 240))
    order = w.event("order_completed", at, channel, anonymous_id=device, email=email)
    order.person.CopyFrom(w.person_attributes())
    order.purchase.order_id = f"{order.id}-o"
    order.purchase.items.extend(cart)
    orders.append((at, order))


def _store_session(w: _Writer, at: datetime, orders: list[tuple[datetime, pb.Event]]) -> None:
    p, rng = w.person, w.rng
    store = p.home_store if rng.random() < 0.8 else rng.choice(STORES)
    known = {"loyalty_id": p.loyalty_id} if p.loyalty_id else {"pos_customer_id": p.pos_customer_id}
    if not any(known.values()) or rng.random() < 0.3:
        known["email"] = p.emails[0]  # asked for an e-receipt at the till
        known = {name: value for name, value in known.items() if value}
    visit = w.event("store_visit", at, "pos", **known)
    visit.store_id = store
    visit.store_visit.duration_s = rng.randint(120, 2400)
    if rng.random() < 0.25:
        return
    at += timedelta(minutes=rng.randint(3, 40))
    sale = w.event("pos_purchase", at, "pos", **known)
    sale.store_id = store
    sale.purchase.order_id = f"{sale.id}-r"
    sale.purchase.items.extend(w.line() for _ in range(rng.choice((1, 1, 2, 3, 4))))
    orders.append((at, sale))


def _after_purchase(w: _Writer, at: datetime, order: pb.Event, end: datetime, points: list[int]) -> None:
    """`points`: [earned, redeemed] so far over the person's purchases, taken in time order."""
    p, rng = w.person, w.rng
    total = sum(item.quantity * item.unit_price_minor for item in order.purchase.items)
    ids = {"loyalty_id": p.loyalty_id} if p.loyalty_id else {}
    if ids:
        earned = w.event("loyalty_earned", at + timedelta(seconds=5), order.channel, **ids)
        earned.loyalty.points, earned.loyalty.reason = max(1, total // 100), "purchase"
        points[0] += earned.loyalty.points
        if rng.random() < 0.08:
            when = at + timedelta(days=rng.randint(1, 60))
            voucher = rng.choice((100, 250, 500))
            # Only points earned by this purchase or before it: every redemption comes after its
            # purchase, so the balance never goes below zero whatever order they fall in.
            if points[1] + voucher <= points[0]:
                points[1] += voucher
                redeemed = w.event("loyalty_redeemed", when, "pos", **ids)
                redeemed.loyalty.points, redeemed.loyalty.reason = voucher, "voucher"
    if rng.random() < 0.09:
        when = at + timedelta(days=rng.randint(2, 25))
        if when < end:
            channel = order.channel
            back = w.event("return", when, channel, **(ids or {"email": p.emails[0]}))
            back.store_id = order.store_id
            back.product_return.order_id = order.purchase.order_id
            back.product_return.items.append(order.purchase.items[0])
    if rng.random() < 0.04:
        ticket = f"T-{order.id}"
        opened = w.event("support_ticket_opened", at + timedelta(days=rng.randint(1, 10)), "call_center",
                         email=p.emails[0], phone=p.phone)  # fmt: skip
        opened.support_ticket.ticket_id, opened.support_ticket.topic = ticket, rng.choice(("delivery", "refund"))
        if rng.random() < 0.85:
            closed = w.event("support_ticket_closed", opened.timestamp.ToDatetime(UTC) + timedelta(days=2),
                             "call_center", email=p.emails[0])  # fmt: skip
            closed.support_ticket.ticket_id = ticket


def person_events(person: Person, config: DemoConfig) -> list[pb.Event]:
    """Everything one person does over the period, in time order."""
    rng = random.Random(f"{config.seed}:{person.person_id}")
    writer = _Writer(person, rng)
    start = config.end - timedelta(days=config.days)
    stop = min(config.end, person.churn_at) if person.churn_at else config.end
    rate_per_s = person.sessions_per_week / (7 * 86_400)
    orders: list[tuple[datetime, pb.Event]] = []
    if person.loyalty_id:
        # Signing up for the card at the till links it to the person's email (and phone).
        signed_up = start + timedelta(days=rng.uniform(0, config.days / 3))
        signup = writer.event("custom.loyalty_signup", signed_up, "pos", loyalty_id=person.loyalty_id,
                              email=person.emails[0], phone=person.phone)  # fmt: skip
        signup.person.CopyFrom(writer.person_attributes())
        signup.store_id = person.home_store
        signup.custom.properties["programme"] = "club"
    at = start + timedelta(seconds=rng.expovariate(rate_per_s))
    while at < stop:
        if rng.random() < person.online_share:
            _online_session(writer, at, orders)
        else:
            _store_session(writer, at, orders)
        if orders and orders[-1][0] > stop:
            # A session that began just before the churn (or the end) ends without its purchase:
            # a churned person buys nothing after churning, and every counted order is an event.
            writer.events.remove(orders.pop()[1])
        if rng.random() < 0.1:
            message = writer.event("message_opened", at - timedelta(hours=2), "email", email=person.emails[0])
            message.message.campaign_id = f"c-{at:%Y%m}"
        at += timedelta(seconds=rng.expovariate(rate_per_s))
    points = [0, 0]
    for when, order in orders:
        _after_purchase(writer, when, order, config.end, points)
    person.orders = len(orders)
    events = [e for e in writer.events if e.timestamp.ToDatetime(UTC) <= config.end]
    person.events = len(events)
    events.sort(key=lambda e: (e.timestamp.seconds, e.timestamp.nanos, e.id))
    return events


@dataclass
class Population:
    config: DemoConfig
    people: list[Person]

    def events(self) -> Iterator[pb.Event]:
        """Every event of every person, person by person (each person's in time order)."""
        for person in self.people:
            yield from person_events(person, self.config)

    def truth(self) -> dict[str, Any]:
        owners = {f"{kind}:{value}": p.person_id for p in self.people for kind, value in p.identifiers()}
        return {
            "seed": self.config.seed,
            "people": len(self.people),
            "days": self.config.days,
            "end": self.config.end.isoformat(),
            "churned": sum(1 for p in self.people if p.churn_at),
            "identifier_owner": owners,
            "persons": [p.truth() for p in self.people],
        }


def population(config: DemoConfig) -> Population:
    rng = random.Random(config.seed)
    return Population(config, [make_person(rng, number, config) for number in range(1, config.people + 1)])


def interleaved(events: list[pb.Event]) -> list[pb.Event]:
    """The events of everyone in global time order, as channels would send them."""
    return sorted(events, key=lambda e: (e.timestamp.seconds, e.timestamp.nanos, e.id))


def expected_events(config: DemoConfig) -> int:
    """A rough size estimate for progress bars (events per person-week of activity)."""
    return math.ceil(config.people * config.sessions_per_week * config.days / 7 * 6)
