"""Computed traits, kept incrementally and independently of the order events arrive in.

A customer's `TraitState` holds only aggregates that combine commutatively: sums, minima and
maxima, counts per key, per-day buckets for the rolling windows, decayed scores anchored at their
newest time, and sets. So applying events in any order, applying a late event days after the
others, or folding two customers' states together (an identity merge) all give the same state as
applying every event once in time order. Nothing ever rescans a timeline.

Traits are not stored: `evaluate(state, now)` derives them at read time, so rolling windows (30/90/
365 days, page views in 7 days, the 12-month loyalty spend) stay right as time passes, with no
events arriving. `next_change(state, now)` says when time alone will next change them, so that the
change can be announced then too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from tailor_profile.domain.model import DAY_S, ONLINE_ORDER, PURCHASE_TYPES, STORE_PURCHASE, EventFacts

KEEP_DAYS = 370
"""Day buckets older than this (relative to the newest write) can never count in a window again."""
MAX_CART_ENTRIES = 500
"""Cart changes kept after the last online order (the oldest go first beyond that)."""

# Day bucket slots.
ORDERS, REVENUE, REFUNDS, PAGE_VIEWS = range(4)

AFFINITY_WEIGHTS = {"product_view": 1.0, "add_to_cart": 3.0, ONLINE_ORDER: 5.0, STORE_PURCHASE: 5.0}
"""Interest shown by an event, per unit of quantity."""

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class TraitSettings:
    """Tunables. `tiers` are (name, minimum 12-month net spend in minor units), ascending."""

    tiers: tuple[tuple[str, int], ...] = (("bronze", 0), ("silver", 50_000), ("gold", 150_000), ("platinum", 400_000))
    affinity_half_life_days: float = 30.0
    top_categories: int = 5

    @property
    def decay_per_s(self) -> float:
        return math.log(2) / (self.affinity_half_life_days * DAY_S)


@dataclass
class TraitState:
    """Order-independent aggregates of everything a customer did (see the module docstring)."""

    events: int = 0
    first_seen: int | None = None
    last_seen: int | None = None
    last_purchase: int | None = None
    orders: int = 0
    revenue: int = 0
    online_orders: int = 0
    offline_orders: int = 0
    items_bought: int = 0
    items_returned: int = 0
    refunded: int = 0
    points: int = 0
    days: dict[int, list[int]] = field(default_factory=dict)
    """Day number -> [orders, revenue, refunds, page views]."""
    channels: dict[str, int] = field(default_factory=dict)
    stores: dict[str, int] = field(default_factory=dict)
    affinity: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Category -> (anchor time, interest decayed to the anchor time)."""
    cart_cleared_at: int | None = None
    """Time of the newest online order: cart changes at or before it are spent."""
    cart: list[tuple[int, str, int, int, str]] = field(default_factory=list)
    """Cart changes after `cart_cleared_at`: (time, sku, quantity delta, unit price, category)."""
    tickets: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Ticket id -> (time it was last opened, time it was last closed), 0 for never: a ticket is
    open while its last opening is later than its last closing, whatever order they arrive in
    (a close before its open, a reopen)."""

    # -- persistence ---------------------------------------------------------------------------

    def to_json(self) -> JsonDict:
        return {
            "v": 2,
            "events": self.events,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "last_purchase": self.last_purchase,
            "orders": self.orders,
            "revenue": self.revenue,
            "online_orders": self.online_orders,
            "offline_orders": self.offline_orders,
            "items_bought": self.items_bought,
            "items_returned": self.items_returned,
            "refunded": self.refunded,
            "points": self.points,
            "days": {str(day): bucket for day, bucket in self.days.items()},
            "channels": self.channels,
            "stores": self.stores,
            "affinity": {category: list(value) for category, value in self.affinity.items()},
            "cart_cleared_at": self.cart_cleared_at,
            "cart": [list(entry) for entry in self.cart],
            "tickets": {ticket: list(times) for ticket, times in self.tickets.items()},
        }

    @classmethod
    def from_json(cls, data: JsonDict) -> TraitState:
        return cls(
            events=data["events"],
            first_seen=data["first_seen"],
            last_seen=data["last_seen"],
            last_purchase=data["last_purchase"],
            orders=data["orders"],
            revenue=data["revenue"],
            online_orders=data["online_orders"],
            offline_orders=data["offline_orders"],
            items_bought=data["items_bought"],
            items_returned=data["items_returned"],
            refunded=data["refunded"],
            points=data["points"],
            days={int(day): bucket for day, bucket in data["days"].items()},
            channels=data["channels"],
            stores=data["stores"],
            affinity={category: (value[0], value[1]) for category, value in data["affinity"].items()},
            cart_cleared_at=data["cart_cleared_at"],
            cart=[(e[0], e[1], e[2], e[3], e[4]) for e in data["cart"]],
            tickets=_tickets_of(data),
        )


# -- applying events ---------------------------------------------------------------------------


def _tickets_of(data: JsonDict) -> dict[str, tuple[int, int]]:
    """Tickets as stored; a state of version 1 kept sets of open and closed ids without times: an
    open one counts as opened at the start of time (any close closes it), a closed one as closed
    when the customer was last seen (an opening after that reopens it)."""
    if "tickets" in data:
        return {ticket: (times[0], times[1]) for ticket, times in data["tickets"].items()}
    closed_at = data["last_seen"] or 1
    tickets = {ticket: (1, 0) for ticket in data["tickets_open"]}
    tickets.update({ticket: (0, closed_at) for ticket in data["tickets_closed"]})
    return tickets


def _latest_times(a: dict[str, tuple[int, int]], b: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    merged = dict(a)
    for ticket, (opened, closed) in b.items():
        mine = merged.get(ticket, (0, 0))
        merged[ticket] = (max(mine[0], opened), max(mine[1], closed))
    return merged


def _min(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else max(a, b)


def _bucket(state: TraitState, day: int) -> list[int]:
    bucket = state.days.get(day)
    if bucket is None:
        bucket = state.days[day] = [0, 0, 0, 0]
    return bucket


def _add_interest(state: TraitState, category: str, at: float, weight: float, settings: TraitSettings) -> None:
    """Add `weight` of interest at time `at`, keeping the value anchored at the newest time."""
    if not category or weight == 0:
        return
    anchor, value = state.affinity.get(category, (at, 0.0))
    state.affinity[category] = _combine_decayed((anchor, value), (at, weight), settings.decay_per_s)


def _combine_decayed(a: tuple[float, float], b: tuple[float, float], rate: float) -> tuple[float, float]:
    anchor = max(a[0], b[0])
    return anchor, a[1] * math.exp(-rate * (anchor - a[0])) + b[1] * math.exp(-rate * (anchor - b[0]))


def apply(state: TraitState, event: EventFacts, settings: TraitSettings) -> None:
    """Fold one new event into the state (the caller has made sure it is not a duplicate)."""
    state.events += 1
    state.first_seen = _min(state.first_seen, event.at)
    state.last_seen = _max(state.last_seen, event.at)
    state.channels[event.channel] = state.channels.get(event.channel, 0) + 1
    kind = event.type
    if kind in PURCHASE_TYPES:
        _apply_purchase(state, event, settings)
    elif kind == "page_view":
        _bucket(state, event.day)[PAGE_VIEWS] += 1
    elif kind == "product_view":
        _add_interest(state, event.category, event.at, AFFINITY_WEIGHTS[kind], settings)
    elif kind in ("add_to_cart", "remove_from_cart"):
        _apply_cart_change(state, event, settings)
    elif kind == "return":
        state.items_returned += sum(item.quantity for item in event.items)
        state.refunded += event.amount
        _bucket(state, event.day)[REFUNDS] += event.amount
    elif kind == "loyalty_earned":
        state.points += event.points
    elif kind == "loyalty_redeemed":
        state.points -= event.points
    elif kind == "store_visit" and event.store_id:
        state.stores[event.store_id] = state.stores.get(event.store_id, 0) + 1
    elif kind in ("support_ticket_opened", "support_ticket_closed"):
        opened, closed = state.tickets.get(event.ticket_id, (0, 0))
        if kind == "support_ticket_opened":
            state.tickets[event.ticket_id] = (max(opened, event.at), closed)
        else:
            state.tickets[event.ticket_id] = (opened, max(closed, event.at))


def _apply_purchase(state: TraitState, event: EventFacts, settings: TraitSettings) -> None:
    state.orders += 1
    state.revenue += event.amount
    state.last_purchase = _max(state.last_purchase, event.at)
    state.items_bought += sum(item.quantity for item in event.items)
    bucket = _bucket(state, event.day)
    bucket[ORDERS] += 1
    bucket[REVENUE] += event.amount
    for item in event.items:
        _add_interest(state, item.category, event.at, AFFINITY_WEIGHTS[event.type] * item.quantity, settings)
    if event.type == ONLINE_ORDER:
        state.online_orders += 1
        state.cart_cleared_at = _max(state.cart_cleared_at, event.at)
        state.cart = [entry for entry in state.cart if entry[0] > event.at]
    else:
        state.offline_orders += 1
        if event.store_id:
            state.stores[event.store_id] = state.stores.get(event.store_id, 0) + 1


def _apply_cart_change(state: TraitState, event: EventFacts, settings: TraitSettings) -> None:
    if not event.items:
        return
    item = event.items[0]
    adding = event.type == "add_to_cart"
    if adding:
        _add_interest(state, item.category, event.at, AFFINITY_WEIGHTS["add_to_cart"] * item.quantity, settings)
    if state.cart_cleared_at is not None and event.at <= state.cart_cleared_at:
        return  # an online order after it has already spent this cart change
    delta = item.quantity if adding else -item.quantity
    state.cart.append((event.at, item.sku, delta, item.unit_price if adding else 0, item.category))
    if len(state.cart) > MAX_CART_ENTRIES:
        state.cart.sort()
        del state.cart[: len(state.cart) - MAX_CART_ENTRIES]


def prune(state: TraitState, now: int) -> None:
    """Drop day buckets that no window can reach any more (windows only move forward)."""
    horizon = now // DAY_S - KEEP_DAYS
    for day in [day for day in state.days if day < horizon]:
        del state.days[day]


def combine(survivor: TraitState, absorbed: TraitState, settings: TraitSettings) -> TraitState:
    """The state of both customers' events together, as if all had been applied to one."""
    merged = TraitState(
        events=survivor.events + absorbed.events,
        first_seen=_min(survivor.first_seen, absorbed.first_seen),
        last_seen=_max(survivor.last_seen, absorbed.last_seen),
        last_purchase=_max(survivor.last_purchase, absorbed.last_purchase),
        orders=survivor.orders + absorbed.orders,
        revenue=survivor.revenue + absorbed.revenue,
        online_orders=survivor.online_orders + absorbed.online_orders,
        offline_orders=survivor.offline_orders + absorbed.offline_orders,
        items_bought=survivor.items_bought + absorbed.items_bought,
        items_returned=survivor.items_returned + absorbed.items_returned,
        refunded=survivor.refunded + absorbed.refunded,
        points=survivor.points + absorbed.points,
        days=_add_buckets(survivor.days, absorbed.days),
        channels=_add_counts(survivor.channels, absorbed.channels),
        stores=_add_counts(survivor.stores, absorbed.stores),
        cart_cleared_at=_max(survivor.cart_cleared_at, absorbed.cart_cleared_at),
        tickets=_latest_times(survivor.tickets, absorbed.tickets),
    )
    cleared = merged.cart_cleared_at
    merged.cart = sorted(e for e in [*survivor.cart, *absorbed.cart] if cleared is None or e[0] > cleared)
    del merged.cart[: max(0, len(merged.cart) - MAX_CART_ENTRIES)]
    merged.affinity = dict(survivor.affinity)
    for category, value in absorbed.affinity.items():
        mine = merged.affinity.get(category)
        merged.affinity[category] = value if mine is None else _combine_decayed(mine, value, settings.decay_per_s)
    return merged


def _add_counts(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    total = dict(a)
    for key, count in b.items():
        total[key] = total.get(key, 0) + count
    return total


def _add_buckets(a: dict[int, list[int]], b: dict[int, list[int]]) -> dict[int, list[int]]:
    total = {day: list(bucket) for day, bucket in a.items()}
    for day, bucket in b.items():
        mine = total.setdefault(day, [0, 0, 0, 0])
        for slot, value in enumerate(bucket):
            mine[slot] += value
    return total


def replay(events: Iterable[EventFacts], settings: TraitSettings, now: int) -> TraitState:
    """The state from scratch from a full timeline (unmerges, checks and tests; never on the hot path)."""
    state = TraitState()
    for event in sorted(events, key=lambda e: (e.at, e.event_id)):
        apply(state, event, settings)
    prune(state, now)
    return state


# -- evaluating traits -------------------------------------------------------------------------


class CartLine(NamedTuple):
    sku: str
    category: str
    quantity: int
    unit_price: int


class Traits(NamedTuple):
    """Trait values at one moment. Times are epoch seconds. (A named tuple, immutable like a frozen
    dataclass but several times cheaper to make: ingestion makes two per customer per batch.)"""

    first_seen: int | None
    last_seen: int | None
    last_purchase: int | None
    events: int
    orders: int
    revenue: int
    windows: dict[int, tuple[int, int]]
    """Days -> (orders, revenue) over the last 30, 90 and 365 days."""
    average_order_value: int
    recency_days: int
    frequency: int
    monetary: int
    rfm_scores: tuple[int, int, int]
    channel_mix: str
    online_orders: int
    offline_orders: int
    channel_events: dict[str, int]
    category_affinity: list[tuple[str, float]]
    favourite_store: str
    cart: list[CartLine]
    cart_value: int
    cart_last_activity: int | None
    points: int
    tier: str
    spend_12m: int
    next_tier: str
    to_next_tier: int
    return_rate: float
    refunded: int
    open_tickets: int
    page_views_7d: int

    def flat(self) -> dict[str, Any]:
        """Name -> plain value (JSON-friendly): what profile.updated reports and segments use."""
        values: dict[str, Any] = {
            "first_seen_at": _iso(self.first_seen),
            "last_seen_at": _iso(self.last_seen),
            "last_purchase_at": _iso(self.last_purchase),
            "events": self.events,
            "orders": self.orders,
            "revenue_minor": self.revenue,
        }
        for days, (orders, revenue) in sorted(self.windows.items()):
            values[f"orders_{days}d"] = orders
            values[f"revenue_{days}d_minor"] = revenue
        values.update(
            {
                "average_order_value_minor": self.average_order_value,
                "rfm_recency_days": self.recency_days,
                "rfm_frequency": self.frequency,
                "rfm_monetary_minor": self.monetary,
                "rfm_recency_score": self.rfm_scores[0],
                "rfm_frequency_score": self.rfm_scores[1],
                "rfm_monetary_score": self.rfm_scores[2],
                "channel_mix": self.channel_mix,
                "online_orders": self.online_orders,
                "offline_orders": self.offline_orders,
                "channel_events": dict(sorted(self.channel_events.items())),
                "category_affinity": dict(self.category_affinity),
                "favourite_store_id": self.favourite_store,
                "open_cart_items": [
                    {"sku": l.sku, "category": l.category, "quantity": l.quantity, "unit_price_minor": l.unit_price}
                    for l in self.cart  # noqa: E741
                ],
                "open_cart_value_minor": self.cart_value,
                "open_cart_last_activity_at": _iso(self.cart_last_activity),
                "loyalty_points": self.points,
                "loyalty_tier": self.tier,
                "loyalty_spend_12m_minor": self.spend_12m,
                "loyalty_next_tier": self.next_tier,
                "loyalty_amount_to_next_tier_minor": self.to_next_tier,
                "return_rate": self.return_rate,
                "returned_minor": self.refunded,
                "open_support_tickets": self.open_tickets,
                "page_views_7d": self.page_views_7d,
            }
        )
        return values


WINDOWS = (30, 90, 365)
RECENCY_LIMITS = (30, 60, 120, 240)
"""Days since the last purchase for recency scores 5, 4, 3, 2 (beyond: 1)."""
FREQUENCY_LIMITS = (10, 5, 3, 2)
"""Orders in 365 days for frequency scores 5, 4, 3, 2 (1 for at least one)."""
MONETARY_LIMITS = (200_000, 100_000, 50_000, 20_000)
"""Net 365-day spend for monetary scores 5, 4, 3, 2 (1 for any)."""


@functools.lru_cache(maxsize=65_536)
def _iso(moment: int | None) -> str:
    # Cached: ingestion evaluates each customer's traits before and after a batch, mostly with the
    # same first/last-seen times.
    return "" if moment is None else datetime.fromtimestamp(moment, UTC).isoformat()


def _window_sums(state: TraitState, today: int) -> dict[int, list[int]]:
    """Days -> [orders, revenue, refunds, page views] summed over each window ending today.
    (Written out slot by slot: ingestion evaluates every customer of a batch twice.)"""
    sums = {days: [0, 0, 0, 0] for days in (7, *WINDOWS)}
    windows = list(sums.items())
    for day, (orders, revenue, refunds, page_views) in state.days.items():
        age = today - day
        for days, total in windows:
            if age < days:
                total[ORDERS] += orders
                total[REVENUE] += revenue
                total[REFUNDS] += refunds
                total[PAGE_VIEWS] += page_views
    return sums


def _score_descending(value: int, limits: tuple[int, ...]) -> int:
    """5 for value >= limits[0], 4 for >= limits[1], ..., 1 otherwise."""
    for position, limit in enumerate(limits):
        if value >= limit:
            return 5 - position
    return 1


def _recency_score(days: int) -> int:
    for position, limit in enumerate(RECENCY_LIMITS):
        if days <= limit:
            return 5 - position
    return 1


def evaluate(state: TraitState, now: int, settings: TraitSettings) -> Traits:
    today = now // DAY_S
    sums = _window_sums(state, today)
    year = sums[365]
    spend_12m = max(0, year[REVENUE] - year[REFUNDS])
    recency = -1 if state.last_purchase is None else max(0, (now - state.last_purchase) // DAY_S)
    scores = (0, 0, 0)
    if state.last_purchase is not None:
        scores = (
            _recency_score(recency),
            _score_descending(year[ORDERS], FREQUENCY_LIMITS) if year[ORDERS] else 1,
            _score_descending(spend_12m, MONETARY_LIMITS),
        )
    tier, next_tier, to_next = _tier(spend_12m, settings)
    cart, cart_value, cart_activity = _open_cart(state)
    return Traits(
        first_seen=state.first_seen,
        last_seen=state.last_seen,
        last_purchase=state.last_purchase,
        events=state.events,
        orders=state.orders,
        revenue=state.revenue,
        windows={days: (sums[days][ORDERS], sums[days][REVENUE]) for days in WINDOWS},
        average_order_value=state.revenue // state.orders if state.orders else 0,
        recency_days=recency,
        frequency=year[ORDERS],
        monetary=spend_12m,
        rfm_scores=scores,
        channel_mix=_channel_mix(state),
        online_orders=state.online_orders,
        offline_orders=state.offline_orders,
        channel_events=dict(state.channels),
        category_affinity=_affinity(state, now, settings),
        favourite_store=_favourite(state.stores),
        cart=cart,
        cart_value=cart_value,
        cart_last_activity=cart_activity,
        # Redeemed more than earned, or returned more than bought: the earning or the purchase lies
        # before the data we have (or has not arrived yet). The sums stay exact, so an event that
        # arrives later still counts; what is shown never goes below none or above all.
        points=max(0, state.points),
        tier=tier,
        spend_12m=spend_12m,
        next_tier=next_tier,
        to_next_tier=to_next,
        return_rate=min(1.0, round(state.items_returned / state.items_bought, 4)) if state.items_bought else 0.0,
        refunded=state.refunded,
        open_tickets=sum(1 for opened, closed in state.tickets.values() if opened > closed),
        page_views_7d=sums[7][PAGE_VIEWS],
    )


def _tier(spend: int, settings: TraitSettings) -> tuple[str, str, int]:
    """(current tier, next tier or "", amount to the next tier)."""
    current = settings.tiers[0][0]
    for name, minimum in settings.tiers:
        if spend < minimum:
            return current, name, minimum - spend
        current = name
    return current, "", 0


def _channel_mix(state: TraitState) -> str:
    if state.online_orders and state.offline_orders:
        return "omnichannel"
    if state.online_orders:
        return "online"
    return "offline" if state.offline_orders else ""


def _affinity(state: TraitState, now: int, settings: TraitSettings) -> list[tuple[str, float]]:
    rate = settings.decay_per_s
    decayed = {
        category: value * math.exp(-rate * max(0.0, now - anchor))
        for category, (anchor, value) in state.affinity.items()
    }
    total = sum(decayed.values())
    if total <= 0:
        return []
    ranked = sorted(decayed.items(), key=lambda pair: (-pair[1], pair[0]))[: settings.top_categories]
    return [(category, round(score / total, 4)) for category, score in ranked]


def _favourite(counts: dict[str, int]) -> str:
    if not counts:
        return ""
    return min(counts.items(), key=lambda pair: (-pair[1], pair[0]))[0]


def _cart_order(entry: tuple[int, str, int, int, str]) -> tuple[int, int, str, int, str]:
    """Time order; at one moment additions before removals (then any fixed order)."""
    at, sku, delta, price, category = entry
    return at, -delta, sku, price, category


def _open_cart(state: TraitState) -> tuple[list[CartLine], int, int | None]:
    quantities: dict[str, int] = {}
    latest_add: dict[str, tuple[int, int, str]] = {}
    # In time order, and never below zero: removing what is not in the cart (added before we saw
    # the customer, or on a cart we never heard of) removes nothing, so a later addition counts
    # in full. A plain sum of the changes would let that removal hide the later addition.
    for at, sku, delta, price, category in sorted(state.cart, key=_cart_order):
        quantities[sku] = max(0, quantities.get(sku, 0) + delta)
        if delta > 0 and (sku not in latest_add or (at, price, category) > latest_add[sku]):
            latest_add[sku] = (at, price, category)
    lines = [
        CartLine(sku, latest_add[sku][2], quantity, latest_add[sku][1])
        for sku, quantity in sorted(quantities.items())
        if quantity > 0 and sku in latest_add
    ]
    if not lines:
        return [], 0, None
    return lines, sum(line.quantity * line.unit_price for line in lines), max(entry[0] for entry in state.cart)


def next_change(state: TraitState, now: int) -> int | None:
    """The first moment after `now` at which time alone changes the evaluated traits, or None if it
    never will: a day bucket leaving a rolling window (7 days for page views; 30, 90 and 365 days
    for orders, revenue and refunds), or the days since the last purchase growing by one. Category
    affinity shares do not move with time (every category decays at the same rate), and nothing
    else depends on the clock."""
    moments = []
    if state.last_purchase is not None:
        days = max(0, (now - state.last_purchase) // DAY_S)
        moments.append(state.last_purchase + (days + 1) * DAY_S)
    today = now // DAY_S
    for day, (orders, revenue, refunds, page_views) in state.days.items():
        windows = (WINDOWS if orders or revenue or refunds else ()) + ((7,) if page_views else ())
        moments.extend((day + days) * DAY_S for days in windows if day + days > today)
    return min(moments) if moments else None


def changed_traits(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The traits whose value differs, with their new values."""
    return {name: value for name, value in after.items() if before.get(name) != value}
