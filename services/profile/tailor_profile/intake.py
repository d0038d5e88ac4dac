"""Checking incoming events and turning them into facts: the same rules for IngestEvents over gRPC and
for batches from channel adapters on `tailor.ingest.events`.

A bad event is rejected on its own, with the offending field and why; it never sinks its batch.
Money is converted to the base currency here, once, so traits only ever add integers.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import NamedTuple

from tailor.identity.v1 import identity_pb2
from tailor.profile.v1 import profile_pb2 as pb
from tailor_platform.validation import Validator

from tailor_profile.domain.model import CHANNELS, CUSTOM_PREFIX, EventFacts, Item, is_known_type

MAX_BATCH = 1000
MAX_FUTURE_S = 300
"""How far ahead of our clock an event's timestamp may be (clock skew of the sender)."""
EARLIEST = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
MAX_TYPE_LENGTH = 128
"""The event table's type column."""
MAX_QUANTITY = 100_000
"""Per line item. With MAX_MONEY_MINOR it keeps every sum a trait holds (lifetime revenue, cart
value and quantities: at most MAX_CART_ENTRIES lines) far inside the int64 / int32 fields of the
API and the integers the stored state's JSON can hold: one absurd event must not make a customer's
state unsavable (that would sink every later batch of that customer)."""
MAX_MONEY_MINOR = 10**11
"""Per amount, unit price and event total, in minor units of the base currency."""
MAX_POINTS = 10**9

PAYLOAD_OF_TYPE = {
    "page_view": "page_view",
    "product_view": "product_view",
    "search": "search",
    "add_to_cart": "cart_change",
    "remove_from_cart": "cart_change",
    "checkout_started": "checkout_started",
    "order_completed": "purchase",
    "pos_purchase": "purchase",
    "return": "product_return",
    "loyalty_earned": "loyalty",
    "loyalty_redeemed": "loyalty",
    "store_visit": "store_visit",
    "support_ticket_opened": "support_ticket",
    "support_ticket_closed": "support_ticket",
    "message_opened": "message",
    "message_clicked": "message",
    "app_opened": "app_opened",
}
REQUIRED_PAYLOAD = frozenset(
    {"add_to_cart", "remove_from_cart", "order_completed", "pos_purchase", "return", "loyalty_earned"}
    | {"loyalty_redeemed", "support_ticket_opened", "support_ticket_closed"}
)


@dataclass(frozen=True)
class Rejection:
    position: int
    event_id: str
    field: str
    reason: str


class Candidate(NamedTuple):
    """A valid event waiting to be resolved to a customer (one per event)."""

    position: int
    """Its place in its batch."""
    event: pb.Event
    facts: EventFacts


class Intake:
    """Validates events against the vocabulary and converts money to the base currency."""

    def __init__(self, currency_rates: Mapping[str, float], base_currency: str) -> None:
        self.rates = dict(currency_rates)
        self.rates.setdefault(base_currency, 1.0)
        self.base_currency = base_currency

    def check_batch(self, events: Sequence[pb.Event], now: datetime) -> tuple[list[Candidate], list[Rejection]]:
        candidates: list[Candidate] = []
        rejections: list[Rejection] = []
        now_s = int(now.timestamp())
        for index, event in enumerate(events):
            check = Validator()
            facts = self.facts(check, event, now_s)
            if facts is None or not check.ok:
                first = check.violations[0] if check.violations else None
                reason = "; ".join(f"{v.field}: {v.description}" for v in check.violations)
                rejections.append(Rejection(index, event.id, first.field if first else "", reason))
            else:
                candidates.append(Candidate(index, event, facts))
        return candidates, rejections

    def facts(self, check: Validator, event: pb.Event, now_s: int) -> EventFacts | None:
        check.identifier("id", event.id)
        kind = event.type
        if not is_known_type(kind):
            check.fail("type", f"unknown event type {kind[:64]!r}; own types need the {CUSTOM_PREFIX!r} prefix")
        else:
            check.text("type", kind, MAX_TYPE_LENGTH)
        check.one_of("channel", event.channel, CHANNELS)
        at = self._timestamp(check, event, now_s)
        _check_identifiers(check, event)
        check.text("store_id", event.store_id, 128)
        payload = event.WhichOneof("payload")
        expected = "custom" if kind.startswith(CUSTOM_PREFIX) else PAYLOAD_OF_TYPE.get(kind)
        if payload is not None and expected is not None and payload != expected:
            check.fail(payload, f"is not the payload of a {kind!r} event (expected {expected})")
        if payload is None and kind in REQUIRED_PAYLOAD:
            check.fail(expected or "payload", f"is required for a {kind!r} event")
        if not check.ok or at is None:
            return None
        return self._facts_of(check, event, at)

    def _timestamp(self, check: Validator, event: pb.Event, now_s: int) -> int | None:
        if not event.HasField("timestamp"):
            check.fail("timestamp", "is required")
            return None
        at = event.timestamp.seconds
        if at > now_s + MAX_FUTURE_S:
            check.fail("timestamp", f"lies more than {MAX_FUTURE_S} seconds in the future")
        elif at < EARLIEST:
            check.fail("timestamp", "lies before the year 2000")
        else:
            return at
        return None

    def _facts_of(self, check: Validator, event: pb.Event, at: int) -> EventFacts | None:
        payload = event.WhichOneof("payload")
        items: tuple[Item, ...] = ()
        amount = points = 0
        ticket = category = ""
        if payload == "purchase":
            purchase = event.purchase
            amount = self._money(check, "purchase.total_minor", purchase.total_minor, purchase.currency)
            items = self._items(check, "purchase.items", purchase.items, purchase.currency)
            if not items and not amount:
                check.fail("purchase.items", "a purchase needs line items or a total")
            amount = amount or _total(check, "purchase.items", items)
        elif payload == "product_return":
            refund = event.product_return
            amount = self._money(check, "product_return.amount_minor", refund.amount_minor, refund.currency)
            items = self._items(check, "product_return.items", refund.items, refund.currency)
            amount = amount or _total(check, "product_return.items", items)
        elif payload == "cart_change":
            items = self._items(check, "cart_change.item", [event.cart_change.item], "")
        elif payload == "product_view":
            view = event.product_view
            self._money(check, "product_view.price_minor", view.price_minor, view.currency)
            category = view.category[:128]
            check.text("product_view.category", category, 128)
        elif payload == "loyalty":
            points = event.loyalty.points
            if points <= 0:
                check.fail("loyalty.points", "must be positive")
            elif points > MAX_POINTS:
                check.fail("loyalty.points", f"must be at most {MAX_POINTS}")
        elif payload == "support_ticket":
            ticket = event.support_ticket.ticket_id
            check.identifier("support_ticket.ticket_id", ticket)
        elif payload == "checkout_started":
            started = event.checkout_started
            self._money(check, "checkout_started.value_minor", started.value_minor, started.currency)
        return EventFacts(
            event.id,
            event.type,
            event.channel,
            at,
            event.store_id,
            items,
            amount,
            points,
            ticket,
            category,
        )

    def _items(self, check: Validator, field: str, items: Sequence[pb.LineItem], currency: str) -> tuple[Item, ...]:
        converted = []
        for position, item in enumerate(items):
            where = f"{field}[{position}]" if field.endswith("items") else field
            check.required(f"{where}.sku", item.sku)
            check.text(f"{where}.sku", item.sku, 128)
            check.text(f"{where}.category", item.category[:128], 128)
            if item.quantity <= 0:
                check.fail(f"{where}.quantity", "must be positive")
            elif item.quantity > MAX_QUANTITY:
                check.fail(f"{where}.quantity", f"must be at most {MAX_QUANTITY}")
            price = self._money(check, f"{where}.unit_price_minor", item.unit_price_minor, item.currency or currency)
            converted.append(Item(item.sku, item.category[:128], item.quantity, price))
        return tuple(converted)

    def _money(self, check: Validator, field: str, amount: int, currency: str) -> int:
        if amount < 0:
            check.fail(field, "must not be negative")
            return 0
        rate = self.rates.get(currency or self.base_currency)
        if rate is None:
            check.fail(field.rsplit(".", 1)[0] + ".currency", f"unknown currency {currency[:8]!r}")
            return 0
        converted = round(amount * rate)
        if converted > MAX_MONEY_MINOR:
            check.fail(field, f"must be at most {MAX_MONEY_MINOR} minor units of {self.base_currency}")
            return 0
        return converted


def _total(check: Validator, field: str, items: Sequence[Item]) -> int:
    """The sum of the line items, when the event gave no total (bounded like one)."""
    total = sum(i.amount for i in items)
    if total > MAX_MONEY_MINOR:
        check.fail(field, f"add up to more than {MAX_MONEY_MINOR} minor units")
    return total


def _check_identifiers(check: Validator, event: pb.Event) -> None:
    ids = event.identifiers
    if not (ids.anonymous_id or ids.email or ids.phone or ids.loyalty_id or ids.pos_customer_id or ids.external_ids):
        check.fail("identifiers", "at least one identifier is required")
    for position, external in enumerate(ids.external_ids):
        if not external.namespace or not external.value:
            check.fail(f"identifiers.external_ids[{position}]", "needs a namespace and a value")


IDENTIFIER_FIELDS = (
    ("anonymous_id", "device_id"),
    ("email", "email"),
    ("phone", "phone"),
    ("loyalty_id", "loyalty_id"),
    ("pos_customer_id", "pos_customer_id"),
)


def identity_records(event: pb.Event) -> list[identity_pb2.Identifier]:
    """The event's identifiers in identity's terms."""
    ids = event.identifiers
    found = [
        identity_pb2.Identifier(type=kind, value=getattr(ids, name))
        for name, kind in IDENTIFIER_FIELDS
        if getattr(ids, name)
    ]
    found.extend(
        identity_pb2.Identifier(type="external", value=e.value, namespace=e.namespace)
        for e in ids.external_ids
        if e.value
    )
    return found


_identifier_values = operator.attrgetter(*(name for name, _ in IDENTIFIER_FIELDS))


def resolve_key(event: pb.Event) -> tuple[object, ...]:
    """What identity resolves an event by: events with equal keys resolve to the same customer."""
    ids = event.identifiers
    person = event.person.SerializeToString(deterministic=True) if event.HasField("person") else b""
    externals = tuple((e.namespace, e.value) for e in ids.external_ids) if ids.external_ids else ()
    return (_identifier_values(ids), externals, person)


def resolve_request(event: pb.Event) -> identity_pb2.ResolveRequest:
    request = identity_pb2.ResolveRequest(identifiers=identity_records(event))
    if event.HasField("person"):
        request.person.CopyFrom(event.person)
    return request
