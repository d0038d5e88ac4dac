"""`tailor profile` renders a profile for people: the rendering alone, on a profile built here."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from tailor.profile.v1 import profile_pb2 as pb
from tailor_profile.cli import event_details, profile_view
from tailor_profile.testing import item, make_event, purchase, stamp

AT = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


def rendered(profile: pb.Profile, timeline: list[pb.Event] | None = None) -> str:
    console = Console(record=True, width=140)
    console.print(profile_view(profile, timeline or []))
    return console.export_text()


def sample_profile() -> pb.Profile:
    traits = pb.Traits(
        first_seen_at=stamp(datetime(2025, 12, 6, tzinfo=UTC)),
        last_purchase_at=stamp(AT),
        events=171,
        orders=9,
        revenue_minor=149_287,
        last_90d=pb.WindowFigures(orders=3, revenue_minor=43_895),
        average_order_value_minor=16_587,
        rfm=pb.Rfm(recency_days=6, frequency=9, monetary_minor=136_988, recency_score=5, frequency_score=4),
        channel_mix="omnichannel",
        online_orders=8,
        offline_orders=1,
        channel_events={"web": 166, "pos": 3},
        category_affinity=[pb.CategoryAffinity(category="beauty", score=0.4995)],
        open_cart=pb.OpenCart(
            items=[pb.CartLine(sku="sku-77", category="coats", quantity=2, unit_price_minor=12_900)],
            value_minor=25_800,
            last_activity_at=stamp(AT),
        ),
        loyalty=pb.Loyalty(points_balance=1_250, tier="silver", next_tier="gold", amount_to_next_tier_minor=50_000),
        return_rate=0.125,
    )
    attribute = pb.Attribute(name="given_name", value="Vera", source="web:account", updated_at=stamp(AT))
    return pb.Profile(customer_id="c-1", attributes=[attribute], traits=traits, evaluated_at=stamp(AT), known=True)


def test_a_profile_reads_as_tables_with_money_in_units_and_times_in_utc() -> None:
    text = rendered(sample_profile())
    assert "customer c-1 · evaluated 2026-11-20 09:30:00 UTC" in text
    assert "given_name" in text and "Vera" in text and "web:account" in text
    assert "1,492.87" in text  # lifetime revenue, from minor units
    assert "omnichannel (8 online, 1 in store)" in text
    assert "R 5 · F 4 · M 0" in text
    assert "500.00 more for gold" in text
    assert "12.5% (0.00 returned)" in text
    assert "sku-77" in text and "129.00" in text
    assert "value 258.00 · last activity 2026-11-20 09:30:00 UTC" in text
    assert "beauty" in text and "50%" in text
    assert text.index("web") < text.index("pos")  # channels by their number of events


def test_an_unknown_customer_says_nothing_is_stored_yet() -> None:
    text = rendered(pb.Profile(customer_id="c-2", evaluated_at=stamp(AT)))
    assert "nothing is stored for this customer yet" in text
    assert "activity" not in text


def test_latest_events_show_one_line_per_event_with_their_payload() -> None:
    order = make_event("order_completed", AT, email="a@example.com", purchase=purchase(item(sku="sku-9"), total=4200))
    text = rendered(sample_profile(), [order])
    assert "latest events" in text and "order_completed" in text and "2026-11-20 09:30:00 UTC" in text
    assert "sku-9" in event_details(order)


def test_long_payloads_are_cut_to_one_line() -> None:
    many = purchase(*(item(sku=f"sku-{n}") for n in range(20)))
    details = event_details(make_event("order_completed", AT, email="a@example.com", purchase=many))
    assert len(details) == 60 and details.endswith("…")
