"""Event validation and translation to facts, without any infrastructure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tailor.profile.v1 import profile_pb2 as pb
from tailor_profile.intake import MAX_FUTURE_S, MAX_MONEY_MINOR, MAX_POINTS, identity_records
from tailor_profile.testing import INTAKE, item, make_event, purchase

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


def check(*events: pb.Event) -> tuple[list[str], list[tuple[str, str]]]:
    """Ids of the accepted events, and (field, reason) of the rejected ones."""
    candidates, rejections = INTAKE.check_batch(list(events), NOW)
    return [c.event.id for c in candidates], [(r.field, r.reason) for r in rejections]


def test_money_is_converted_to_the_base_currency_and_totals_default_to_the_line_items() -> None:
    order = make_event("order_completed", NOW, email="a@example.com", purchase=purchase(item(quantity=2, price=1000)))
    order.purchase.currency = "USD"
    candidates, _ = INTAKE.check_batch([order], NOW)
    facts = candidates[0].facts
    assert facts.amount == 1840
    assert facts.items[0].unit_price == 920
    assert facts.at == int(NOW.timestamp())


def test_each_rule_names_the_field() -> None:
    mismatch = make_event("order_completed", NOW, email="a@example.com", page_view=pb.PageView(url="/"))
    missing = make_event("pos_purchase", NOW, email="a@example.com")
    franc = make_event("order_completed", NOW, email="a@example.com", purchase=purchase(item()))
    franc.purchase.currency = "XFR"
    empty = make_event("order_completed", NOW, email="a@example.com", purchase=pb.Purchase(order_id="o"))
    skew = make_event("page_view", NOW + timedelta(seconds=MAX_FUTURE_S + 5), email="a@example.com")
    ancient = make_event("page_view", datetime(1999, 12, 31, tzinfo=UTC), email="a@example.com")
    fax = make_event("page_view", NOW, email="a@example.com", channel="fax")
    points = make_event("loyalty_earned", NOW, email="a@example.com", loyalty=pb.LoyaltyPoints(points=0))
    ticket = make_event("support_ticket_opened", NOW, email="a@example.com", support_ticket=pb.SupportTicket())
    external = make_event("page_view", NOW, identifiers=pb.Identifiers(external_ids=[pb.ExternalId(value="1")]))
    bad_id = make_event("page_view", NOW, email="a@example.com")
    bad_id.id = "has space"
    accepted, rejected = check(mismatch, missing, franc, empty, skew, ancient, fax, points, ticket, external, bad_id)
    assert accepted == []
    assert [field for field, _ in rejected] == [
        "page_view",
        "purchase",
        "purchase.currency",
        "purchase.items",
        "timestamp",
        "timestamp",
        "channel",
        "loyalty.points",
        "support_ticket.ticket_id",
        "identifiers.external_ids[0]",
        "id",
    ]
    assert all(reason for _, reason in rejected)


def test_custom_types_need_the_marker_and_known_types_pass() -> None:
    custom = make_event("custom.wishlist_added", NOW, email="a@example.com", custom=pb.CustomEvent())
    plain = make_event("wishlist_added", NOW, email="a@example.com")
    accepted, rejected = check(custom, plain)
    assert accepted == [custom.id]
    assert rejected[0][0] == "type"


def test_identifiers_map_to_identity_types() -> None:
    ids = pb.Identifiers(anonymous_id="d1", email="e@x.com", loyalty_id="L1", pos_customer_id="P1", phone="+1")
    ids.external_ids.add(namespace="shop", value="9")
    event = make_event("page_view", NOW, identifiers=ids)
    found = [(i.type, i.value, i.namespace) for i in identity_records(event)]
    assert found == [
        ("device_id", "d1", ""),
        ("email", "e@x.com", ""),
        ("phone", "+1", ""),
        ("loyalty_id", "L1", ""),
        ("pos_customer_id", "P1", ""),
        ("external", "9", "shop"),
    ]


def test_amounts_up_to_the_bounds_pass_and_beyond_them_are_rejected_with_the_field() -> None:
    """The bounds keep every trait sum inside int64 (and cart quantities inside int32)."""
    most = make_event(
        "order_completed", NOW, email="a@example.com", purchase=purchase(item(quantity=1, price=MAX_MONEY_MINOR))
    )
    bulk = make_event("add_to_cart", NOW, email="a@example.com", cart_change=pb.CartChange(item=item(quantity=100_000)))
    points = make_event("loyalty_earned", NOW, email="a@example.com", loyalty=pb.LoyaltyPoints(points=MAX_POINTS))
    dear = make_event("order_completed", NOW, email="a@example.com", purchase=purchase(item(price=MAX_MONEY_MINOR + 1)))
    lines = make_event(
        "order_completed", NOW, email="a@example.com", purchase=purchase(item(quantity=2, price=MAX_MONEY_MINOR))
    )
    total = make_event("order_completed", NOW, email="a@example.com", purchase=purchase(total=MAX_MONEY_MINOR + 1))
    returned = make_event(
        "return", NOW, email="a@example.com", product_return=pb.Return(items=[item(quantity=3, price=MAX_MONEY_MINOR)])
    )
    accepted, rejected = check(most, bulk, points, dear, lines, total, returned)
    assert accepted == [most.id, bulk.id, points.id]
    assert [field for field, _ in rejected] == [
        "purchase.items[0].unit_price_minor",
        "purchase.items",
        "purchase.total_minor",
        "product_return.items",
    ]
