"""Trait computation as pure functions: each trait, windows that move with time, and the property
the whole design rests on: any order, any split into customers merged later, and a JSON round trip
give the same traits as replaying the timeline from scratch in time order."""

from __future__ import annotations

import random
from typing import Any

import pytest
from tailor_profile.domain.model import DAY_S, EventFacts, Item
from tailor_profile.domain.traits import (
    MAX_CART_ENTRIES,
    TraitSettings,
    TraitState,
    apply,
    changed_traits,
    combine,
    evaluate,
    next_change,
    prune,
    replay,
)

SETTINGS = TraitSettings()
NOW = 1_780_000_000 // DAY_S * DAY_S + 12 * 3600  # noon, some day in 2026


def event(kind: str, days_ago: float, number: int = 0, **fields: Any) -> EventFacts:
    channel = str(fields.pop("channel", "pos" if kind in ("pos_purchase", "store_visit") else "web"))
    at = int(NOW - days_ago * DAY_S)
    return EventFacts(f"e{number}-{kind}-{days_ago}", kind, channel, at)._replace(**fields)


def order(days_ago: float, amount: int, *items: Item, kind: str = "order_completed", **fields: Any) -> EventFacts:
    fields.update(items=items or (Item("sku-1", "shoes", 1, amount),), amount=amount)
    return event(kind, days_ago, **fields)


def traits_of(*events: EventFacts, now: int = NOW) -> dict[str, object]:
    return evaluate(replay(events, SETTINGS, now), now, SETTINGS).flat()


def test_orders_and_revenue_lifetime_and_in_rolling_windows() -> None:
    traits = traits_of(order(1, 1000), order(45, 2000), order(200, 4000), order(400, 8000))
    assert (traits["orders"], traits["revenue_minor"]) == (4, 15000)
    assert (traits["orders_30d"], traits["revenue_30d_minor"]) == (1, 1000)
    assert (traits["orders_90d"], traits["revenue_90d_minor"]) == (2, 3000)
    assert (traits["orders_365d"], traits["revenue_365d_minor"]) == (3, 7000)
    assert traits["average_order_value_minor"] == 3750


def test_windows_stay_right_as_time_passes_without_events() -> None:
    state = replay([order(1, 1000), order(20, 500)], SETTINGS, NOW)
    later = NOW + 15 * DAY_S
    traits = evaluate(state, later, SETTINGS).flat()
    assert (traits["orders_30d"], traits["revenue_30d_minor"]) == (1, 1000)
    assert traits["rfm_recency_days"] == 16
    assert evaluate(state, NOW + 400 * DAY_S, SETTINGS).flat()["orders_365d"] == 0


def test_rfm_channel_mix_and_favourite_store() -> None:
    traits = traits_of(
        order(3, 30_000),
        order(10, 25_000, kind="pos_purchase", store_id="s-2"),
        order(12, 25_000, kind="pos_purchase", store_id="s-1"),
        event("store_visit", 2, store_id="s-1"),
    )
    assert traits["channel_mix"] == "omnichannel"
    assert (traits["online_orders"], traits["offline_orders"]) == (1, 2)
    assert traits["favourite_store_id"] == "s-1"
    assert (traits["rfm_recency_days"], traits["rfm_frequency"], traits["rfm_monetary_minor"]) == (3, 3, 80_000)
    assert (traits["rfm_recency_score"], traits["rfm_frequency_score"], traits["rfm_monetary_score"]) == (5, 3, 3)
    assert traits_of(order(1, 10))["channel_mix"] == "online"
    assert traits_of(event("page_view", 1))["channel_mix"] == ""


def test_loyalty_points_tier_and_distance_to_the_next_tier_by_12_month_net_spend() -> None:
    traits = traits_of(
        order(10, 60_000),
        order(400, 900_000),  # older than 12 months: does not count for the tier
        event("return", 5, amount=5_000, items=(Item("sku-1", "shoes", 1, 5_000),)),
        event("loyalty_earned", 10, points=600),
        event("loyalty_redeemed", 2, points=100),
    )
    assert traits["loyalty_points"] == 500
    assert (traits["loyalty_tier"], traits["loyalty_spend_12m_minor"]) == ("silver", 55_000)
    assert (traits["loyalty_next_tier"], traits["loyalty_amount_to_next_tier_minor"]) == ("gold", 95_000)
    top = traits_of(order(1, 500_000))
    assert (top["loyalty_tier"], top["loyalty_next_tier"], top["loyalty_amount_to_next_tier_minor"]) == (
        "platinum",
        "",
        0,
    )


def test_open_cart_is_what_was_added_after_the_last_online_order() -> None:
    def add(days_ago: float, sku: str, quantity: int, price: int, number: int = 0) -> EventFacts:
        return event("add_to_cart", days_ago, number, items=(Item(sku, "bags", quantity, price),))

    def remove(days_ago: float, sku: str, quantity: int) -> EventFacts:
        return event("remove_from_cart", days_ago, items=(Item(sku, "bags", quantity, 0),))

    traits = traits_of(
        add(5, "old", 1, 100),
        order(4, 100),
        add(3, "a", 2, 1500),
        add(2, "b", 1, 900),
        remove(1, "b", 1),
        add(0.5, "a", 1, 1400, 1),
    )
    assert traits["open_cart_items"] == [{"sku": "a", "category": "bags", "quantity": 3, "unit_price_minor": 1400}]
    assert traits["open_cart_value_minor"] == 4200
    assert traits["open_cart_last_activity_at"] != ""
    emptied = traits_of(add(3, "a", 2, 1500), order(1, 3000))
    assert (emptied["open_cart_items"], emptied["open_cart_value_minor"]) == ([], 0)


def test_a_balance_is_never_below_zero_nor_a_return_rate_above_one_and_late_events_still_count() -> None:
    """Redemptions and returns whose earning or purchase lies before the data (or arrives later)."""
    redeemed_first = event("loyalty_redeemed", 2, points=300)
    shoes = Item("s", "shoes", 2, 1000)
    returned_first = event("return", 1, amount=2000, items=(shoes,))
    early = traits_of(redeemed_first, returned_first, order(3, 1000, Item("s", "shoes", 1, 1000)))
    assert (early["loyalty_points"], early["return_rate"]) == (0, 1.0)
    complete = traits_of(
        redeemed_first,
        returned_first,
        order(3, 1000, Item("s", "shoes", 1, 1000)),
        order(5, 3000, Item("s", "shoes", 3, 1000)),
        event("loyalty_earned", 10, points=500),
    )
    assert (complete["loyalty_points"], complete["return_rate"]) == (200, 0.5)


def test_returns_tickets_page_views_and_affinity() -> None:
    shoes = Item("s", "shoes", 3, 1000)
    traits = traits_of(
        order(20, 3000, shoes),
        event("return", 2, amount=1000, items=(Item("s", "shoes", 1, 1000),)),
        event("support_ticket_opened", 5, ticket_id="t1"),
        event("support_ticket_opened", 4, ticket_id="t2"),
        event("support_ticket_closed", 1, ticket_id="t1"),
        event("page_view", 1, 1),
        event("page_view", 6, 2),
        event("page_view", 8, 3),
        event("product_view", 1, category="bags"),
    )
    assert traits["return_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert traits["returned_minor"] == 1000
    assert traits["open_support_tickets"] == 1
    assert traits["page_views_7d"] == 2
    affinity = traits["category_affinity"]
    assert isinstance(affinity, dict)
    assert list(affinity) == ["shoes", "bags"]
    assert sum(affinity.values()) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 1, 0), (1, 2, 0), (2, 0, 1)])
def test_a_reopened_ticket_is_open_in_whatever_order_its_events_arrive(order: tuple[int, ...]) -> None:
    history = [
        event("support_ticket_opened", 3, ticket_id="t"),
        event("support_ticket_closed", 2, ticket_id="t"),
        event("support_ticket_opened", 1, ticket_id="t"),  # the customer wrote again: reopened
    ]
    state = TraitState()
    for index in order:
        apply(state, history[index], SETTINGS)
    assert evaluate(state, NOW, SETTINGS).open_tickets == 1
    apply(state, event("support_ticket_closed", 0.5, ticket_id="t"), SETTINGS)
    assert evaluate(state, NOW, SETTINGS).open_tickets == 0


def test_tickets_of_a_state_stored_before_their_times_were_kept_read_as_they_were() -> None:
    stored = TraitState(last_seen=NOW - 3 * DAY_S).to_json()
    del stored["tickets"]
    stored.update(v=1, tickets_open=["open"], tickets_closed=["closed"])
    state = TraitState.from_json(stored)
    assert evaluate(state, NOW, SETTINGS).open_tickets == 1
    apply(state, event("support_ticket_opened", 5, ticket_id="closed"), SETTINGS)  # older: stays closed
    apply(state, event("support_ticket_closed", 4, ticket_id="open"), SETTINGS)
    assert evaluate(state, NOW, SETTINGS).open_tickets == 0
    apply(state, event("support_ticket_opened", 1, ticket_id="closed"), SETTINGS)  # newer: reopened
    assert evaluate(state, NOW, SETTINGS).open_tickets == 1


def test_a_ticket_closed_before_its_opening_arrives_stays_closed() -> None:
    closed_first = TraitState()
    apply(closed_first, event("support_ticket_closed", 1, ticket_id="t"), SETTINGS)
    apply(closed_first, event("support_ticket_opened", 2, ticket_id="t"), SETTINGS)
    assert evaluate(closed_first, NOW, SETTINGS).open_tickets == 0


def test_changed_traits_names_only_what_changed() -> None:
    before = traits_of(order(10, 1000))
    after = traits_of(order(10, 1000), event("page_view", 1))
    changed = changed_traits(before, after)
    assert set(changed) == {"events", "last_seen_at", "page_views_7d", "channel_events"}
    assert changed["page_views_7d"] == 1


def test_old_day_buckets_are_pruned_and_never_needed_again() -> None:
    state = replay([order(500, 1000), order(1, 10)], SETTINGS, NOW)
    assert len(state.days) == 1
    assert evaluate(state, NOW, SETTINGS).revenue == 1010


# -- the property: order, duplicates handled upstream, splits and merges do not matter ----------


CATEGORIES = ("shoes", "bags", "coats", "hats", "socks", "beauty")
KINDS = (
    "page_view",
    "product_view",
    "add_to_cart",
    "remove_from_cart",
    "order_completed",
    "pos_purchase",
    "return",
    "loyalty_earned",
    "loyalty_redeemed",
    "store_visit",
    "support_ticket_opened",
    "support_ticket_closed",
    "app_opened",
)


def random_timeline(rng: random.Random, size: int) -> list[EventFacts]:
    events = []
    for number in range(size):
        kind = rng.choice(KINDS)
        days_ago = rng.uniform(0, 500)
        item = Item(f"sku-{rng.randint(1, 6)}", rng.choice(CATEGORIES), rng.randint(1, 3), rng.randint(100, 20_000))
        fields: dict[str, Any] = {"channel": rng.choice(["web", "app", "pos", "email"])}
        if kind in ("order_completed", "pos_purchase", "return"):
            fields.update(items=(item,), amount=item.amount, store_id=rng.choice(["", "s-1", "s-2"]))
        elif kind in ("add_to_cart", "remove_from_cart"):
            fields["items"] = (item,)
        elif kind == "product_view":
            fields["category"] = item.category
        elif kind.startswith("loyalty"):
            fields["points"] = rng.randint(1, 500)
        elif kind.startswith("support"):
            fields["ticket_id"] = f"t{rng.randint(1, 4)}"
        elif kind == "store_visit":
            fields["store_id"] = rng.choice(["s-1", "s-2", "s-3"])
        events.append(event(kind, days_ago, number, **fields))
    return events


def assert_same_traits(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if name == "category_affinity":
            assert a[name] == pytest.approx(b[name], abs=2e-4), name
        else:
            assert a[name] == b[name], name


@pytest.mark.parametrize("seed", range(25))
def test_any_order_and_any_split_merged_later_gives_the_traits_of_the_full_timeline(seed: int) -> None:
    rng = random.Random(seed)
    timeline = random_timeline(rng, rng.randint(1, 120))
    expected = evaluate(replay(timeline, SETTINGS, NOW), NOW, SETTINGS).flat()

    shuffled = timeline[:]
    rng.shuffle(shuffled)
    parts: list[TraitState] = [TraitState() for _ in range(rng.randint(1, 3))]
    for position, fact in enumerate(shuffled):
        part = parts[rng.randrange(len(parts))]
        apply(part, fact, SETTINGS)
        if position % 17 == 0:  # a write in between: persisted and loaded again
            prune(part, NOW)
            parts[parts.index(part)] = TraitState.from_json(part.to_json())
    merged = parts[0]
    for part in parts[1:]:
        merged = combine(merged, part, SETTINGS)
    prune(merged, NOW)
    assert_same_traits(evaluate(merged, NOW, SETTINGS).flat(), expected)


def test_next_change_is_when_a_bucket_leaves_a_window_or_a_day_since_the_last_purchase_passes() -> None:
    viewed = replay([event("page_view", 3)], SETTINGS, NOW)
    assert next_change(viewed, NOW) == (NOW // DAY_S - 3 + 7) * DAY_S  # page_views_7d drops
    assert next_change(viewed, NOW + 5 * DAY_S) is None  # nothing left to change
    bought = replay([order(10, 1000)], SETTINGS, NOW)
    assert next_change(bought, NOW) == NOW + DAY_S  # rfm_recency_days 10 -> 11
    assert next_change(replay([event("store_visit", 1)], SETTINGS, NOW), NOW) is None


@pytest.mark.parametrize("seed", range(10))
def test_time_alone_changes_no_trait_before_the_next_change(seed: int) -> None:
    rng = random.Random(seed)
    state = replay(random_timeline(rng, rng.randint(1, 80)), SETTINGS, NOW)
    moment = NOW
    for _ in range(60):  # follow the changes one after another
        upcoming = next_change(state, moment)
        traits = evaluate(state, moment, SETTINGS).flat()
        if upcoming is None:
            assert_same_traits(evaluate(state, moment + 1000 * DAY_S, SETTINGS).flat(), traits)
            break
        assert upcoming > moment
        for probe in (moment + 1, (moment + upcoming) // 2, upcoming - 1):
            assert_same_traits(evaluate(state, probe, SETTINGS).flat(), traits)
        moment = upcoming


def test_the_cart_keeps_its_newest_changes_only_up_to_a_bound() -> None:
    state = TraitState()
    for number in range(MAX_CART_ENTRIES + 10):
        apply(state, event("add_to_cart", 1 - number / 10_000, number, items=(Item("a", "x", 1, 1),)), SETTINGS)
    assert len(state.cart) == MAX_CART_ENTRIES


# -- sequential semantics, against a naive in-order model (replay shares `apply`, so comparing with
# -- it alone cannot catch a rule that is order-independent but not what happened in order)


def cart_change(kind: str, days_ago: float, sku: str, quantity: int, price: int = 100, number: int = 0) -> EventFacts:
    return event(kind, days_ago, number, items=(Item(sku, "bags", quantity, price if kind == "add_to_cart" else 0),))


def test_removing_what_is_not_in_the_cart_does_not_hide_what_is_added_later() -> None:
    removed_first = [cart_change("remove_from_cart", 3, "a", 2), cart_change("add_to_cart", 2, "a", 1)]
    for events in (removed_first, removed_first[::-1]):  # and the removal arriving late
        state = TraitState()
        for fact in events:
            apply(state, fact, SETTINGS)
        assert [(line.sku, line.quantity) for line in evaluate(state, NOW, SETTINGS).cart] == [("a", 1)]
    again = traits_of(
        cart_change("add_to_cart", 5, "a", 2),
        cart_change("remove_from_cart", 4, "a", 5),  # more than is in the cart: empties it
        cart_change("add_to_cart", 3, "a", 1, number=1),
    )
    assert again["open_cart_items"] == [{"sku": "a", "category": "bags", "quantity": 1, "unit_price_minor": 100}]
    assert again["open_cart_value_minor"] == 100


def naive_cart(events: list[EventFacts]) -> dict[str, int]:
    """The open cart as a shopper sees it: events in time order (at one moment adds, then removes,
    then the order), quantities never below zero, an online order empties the cart."""
    rank = {"add_to_cart": 0, "remove_from_cart": 1, "order_completed": 2}
    cart: dict[str, int] = {}
    for fact in sorted((e for e in events if e.type in rank), key=lambda e: (e.at, rank[e.type])):
        if fact.type == "order_completed":
            cart.clear()
            continue
        item = fact.items[0]
        change = item.quantity if fact.type == "add_to_cart" else -item.quantity
        cart[item.sku] = max(0, cart.get(item.sku, 0) + change)
    return {sku: quantity for sku, quantity in cart.items() if quantity}


@pytest.mark.parametrize("seed", range(40))
def test_the_open_cart_is_that_of_the_events_in_time_order(seed: int) -> None:
    rng = random.Random(seed)
    timeline = []
    for number in range(rng.randint(1, 40)):
        kind = rng.choice(("add_to_cart", "remove_from_cart", "remove_from_cart", "order_completed"))
        days_ago = rng.randint(0, 6) / 2  # coarse times: many events at the same moment
        if kind == "order_completed":
            timeline.append(order(days_ago, 100)._replace(event_id=f"o{number}"))
        else:
            timeline.append(cart_change(kind, days_ago, f"sku-{rng.randint(1, 3)}", rng.randint(1, 3), number=number))
    rng.shuffle(timeline)
    state = TraitState()
    for fact in timeline:
        apply(state, fact, SETTINGS)
    assert {line.sku: line.quantity for line in evaluate(state, NOW, SETTINGS).cart} == naive_cart(timeline)
