"""`tailor profile`: a customer's profile and latest events, as tables for people or as one JSON
document for tools (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console, Group, RenderableType
from rich.table import Table
from tailor.common.v1.common_pb2 import PageRequest
from tailor.identity.v1 import identity_pb2
from tailor.profile.v1 import profile_pb2 as pb
from tailor.profile.v1 import profile_pb2_grpc
from tailor_platform.terminal import exit_on_failed_call, moment, parse_identifier, titled_table

console = Console()
SUMMARY_WIDTH = 60


def show_profile(
    customer_id: Annotated[str, typer.Argument(help="A customer id (or use --email / --id).")] = "",
    email: Annotated[str, typer.Option(help="Find the customer by email.")] = "",
    identifier: Annotated[
        identity_pb2.Identifier | None,
        typer.Option("--id", parser=parse_identifier, help="Find the customer by TYPE:VALUE, e.g. phone:+4930123456."),
    ] = None,
    events: Annotated[int, typer.Option(help="Also show this many latest events.", min=0, max=1000)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document (profile, events) for tools.")] = False,
    address: Annotated[str, typer.Option(help="host:port of the profile service.")] = "127.0.0.1:50052",
) -> None:
    """Show a customer's profile (attributes and computed traits) and latest events."""
    if sum(map(bool, (customer_id, email, identifier is not None))) != 1:
        raise typer.BadParameter("give exactly one of a customer id, --email or --id")
    request = pb.GetProfileRequest(customer_id=customer_id)
    if email or identifier is not None:
        request = pb.GetProfileRequest(identifier=identifier or identity_pb2.Identifier(type="email", value=email))
    with exit_on_failed_call():
        profile, timeline = fetch(address, request, events)
    if as_json:
        document = {
            "profile": json_format.MessageToDict(profile),
            "events": [json_format.MessageToDict(event) for event in timeline],
        }
        typer.echo(json.dumps(document, indent=2))  # plain: no wrapping or markup for tools to trip on
    else:
        console.print(profile_view(profile, timeline))


def fetch(address: str, request: pb.GetProfileRequest, events: int) -> tuple[pb.Profile, list[pb.Event]]:
    with grpc.insecure_channel(address) as channel:
        stub = profile_pb2_grpc.ProfileServiceStub(channel)
        profile: pb.Profile = stub.GetProfile(request, timeout=10)
        if not events:
            return profile, []
        page = stub.ListEvents(
            pb.ListEventsRequest(customer_id=profile.customer_id, page=PageRequest(page_size=events)), timeout=10
        )
        return profile, [entry.event for entry in page.events]


# -- views ------------------------------------------------------------------------------------------


def profile_view(profile: pb.Profile, timeline: Sequence[pb.Event] = ()) -> RenderableType:
    """The profile as tables, the latest events last. Money is in the base currency."""
    title = f"[bold]customer {profile.customer_id}[/] · evaluated {moment(profile.evaluated_at)}"
    if not profile.known:
        return Group(title, "nothing is stored for this customer yet")
    traits = profile.traits
    parts: list[RenderableType] = [title]
    if profile.attributes:
        parts.append(attributes_table(profile.attributes))
    parts += [activity_table(traits), windows_table(traits), value_table(traits)]
    if traits.category_affinity:
        parts.append(affinity_table(traits.category_affinity))
    if traits.channel_events:
        parts.append(channels_table(traits.channel_events))
    if traits.open_cart.items:
        parts.append(cart_view(traits.open_cart))
    if timeline:
        parts.append(events_table(timeline))
    return Group(*parts)


def attributes_table(attributes: Iterable[pb.Attribute]) -> Table:
    table = titled_table("attributes", "name", "value", "source", "updated")
    for attribute in attributes:
        table.add_row(attribute.name, attribute.value, attribute.source, moment(attribute.updated_at))
    return table


def activity_table(traits: pb.Traits) -> Table:
    mix = traits.channel_mix or "no purchase yet"
    if traits.channel_mix:
        mix += f" ({traits.online_orders} online, {traits.offline_orders} in store)"
    return _pairs(
        "activity",
        [
            ("first seen", moment(traits.first_seen_at)),
            ("last seen", moment(traits.last_seen_at)),
            ("last purchase", moment(traits.last_purchase_at)),
            ("events", f"{traits.events:,}"),
            ("page views, last 7 days", f"{traits.page_views_7d:,}"),
            ("channel mix", mix),
            ("favourite store", traits.favourite_store_id or "—"),
            ("open support tickets", str(traits.open_support_tickets)),
            ("return rate", f"{traits.return_rate:.1%} ({_money(traits.returned_minor)} returned)"),
        ],
    )


def windows_table(traits: pb.Traits) -> Table:
    table = titled_table("orders and revenue", "window", "orders", "revenue", numeric=(1, 2))
    for label, window in (("30 days", traits.last_30d), ("90 days", traits.last_90d), ("365 days", traits.last_365d)):
        table.add_row(label, f"{window.orders:,}", _money(window.revenue_minor))
    table.add_row("lifetime", f"{traits.orders:,}", _money(traits.revenue_minor))
    table.caption = f"average order value {_money(traits.average_order_value_minor)}"
    return table


def value_table(traits: pb.Traits) -> Table:
    rfm, loyalty = traits.rfm, traits.loyalty
    recency = f"{rfm.recency_days} days" if rfm.recency_days >= 0 else "never purchased"
    next_tier = (
        f"{_money(loyalty.amount_to_next_tier_minor)} more for {loyalty.next_tier}" if loyalty.next_tier else "top tier"
    )
    return _pairs(
        "value and loyalty",
        [
            ("RFM scores (1-5)", f"R {rfm.recency_score} · F {rfm.frequency_score} · M {rfm.monetary_score}"),
            ("recency", recency),
            ("orders, last 365 days", f"{rfm.frequency:,}"),
            ("net spend, last 365 days", _money(rfm.monetary_minor)),
            ("loyalty points", f"{loyalty.points_balance:,}"),
            ("tier", f"{loyalty.tier or '—'} (12-month spend {_money(loyalty.spend_12m_minor)})"),
            ("next tier", next_tier),
        ],
    )


def affinity_table(affinities: Iterable[pb.CategoryAffinity]) -> Table:
    table = titled_table("category affinity", "category", "share of interest", numeric=(1,))
    for affinity in affinities:
        table.add_row(affinity.category, f"{affinity.score:.0%}")
    return table


def channels_table(events_per_channel: Mapping[str, int]) -> Table:
    table = titled_table("channels", "channel", "events", numeric=(1,))
    for channel, count in sorted(events_per_channel.items(), key=lambda item: (-item[1], item[0])):
        table.add_row(channel, f"{count:,}")
    return table


def cart_view(cart: pb.OpenCart) -> RenderableType:
    table = titled_table("open cart", "sku", "category", "quantity", "unit price", numeric=(2, 3))
    for line in cart.items:
        table.add_row(line.sku, line.category, str(line.quantity), _money(line.unit_price_minor))
    return Group(table, f"  value {_money(cart.value_minor)} · last activity {moment(cart.last_activity_at)}")


def events_table(timeline: Iterable[pb.Event]) -> Table:
    table = titled_table("latest events", "time", "type", "channel", "store", "details")
    for event in timeline:
        table.add_row(moment(event.timestamp), event.type, event.channel, event.store_id, event_details(event))
    return table


def event_details(event: pb.Event) -> str:
    """The event's payload on one line, cut to SUMMARY_WIDTH characters."""
    payload = event.WhichOneof("payload")
    if payload is None:
        return ""
    fields = json_format.MessageToDict(getattr(event, payload))
    text = json.dumps(fields, separators=(", ", ": "))[1:-1].replace('"', "")
    return text if len(text) <= SUMMARY_WIDTH else text[: SUMMARY_WIDTH - 1] + "…"


def _pairs(title: str, rows: Iterable[tuple[str, object]]) -> Table:
    table = titled_table(title, "", "")
    table.show_header = False
    table.columns[0].style = "dim"
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def _money(minor: int) -> str:
    return f"{minor / 100:,.2f}"
