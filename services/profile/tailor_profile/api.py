"""ProfileService over gRPC: validate, translate, delegate. No business logic here."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tailor.common.v1.common_pb2 import PageResponse
from tailor.identity.v1 import identity_pb2
from tailor.profile.v1 import profile_pb2 as pb
from tailor.profile.v1 import profile_pb2_grpc
from tailor_platform.errors import InvalidArgument, NotFound, Unavailable
from tailor_platform.interceptors import Context
from tailor_platform.protobuf import timestamp
from tailor_platform.validation import Validator

from tailor_profile.clients import ConsentClient, ServiceUnavailable
from tailor_profile.domain.traits import Traits
from tailor_profile.intake import MAX_BATCH
from tailor_profile.service import ProfileService, ProfileView, Status
from tailor_profile.store import AttributeValue

T = TypeVar("T")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
ATTRIBUTES = frozenset({"name", "given_name", "surname", "birth_date", "gender", "locale", "city", "email", "phone"})
PREFERENCE_PREFIX = "preference."
STATUS = {
    Status.ACCEPTED: pb.EVENT_STATUS_ACCEPTED,
    Status.DUPLICATE: pb.EVENT_STATUS_DUPLICATE,
    Status.REJECTED: pb.EVENT_STATUS_REJECTED,
    Status.QUEUED: pb.EVENT_STATUS_QUEUED,
}


class ProfileApi(profile_pb2_grpc.ProfileServiceServicer):
    def __init__(self, service: ProfileService, consent: ConsentClient, section_timeout_s: float) -> None:
        self.service = service
        self.consent = consent
        self.section_timeout_s = section_timeout_s

    async def IngestEvents(self, request: pb.IngestEventsRequest, context: Context) -> pb.IngestEventsResponse:
        if not request.events:
            raise InvalidArgument.field("events", "at least one event is required")
        if len(request.events) > MAX_BATCH:
            raise InvalidArgument.field("events", f"at most {MAX_BATCH} events per call (got {len(request.events)})")
        outcomes = await self.service.ingest(list(request.events))
        # Only the fields that are set, and the counts once (1,000 results per call at most).
        response = pb.IngestEventsResponse()
        add = response.results.add
        for outcome in outcomes:
            result = add(event_id=outcome.event_id, status=STATUS[outcome.status])
            if outcome.customer_id:
                result.customer_id = outcome.customer_id
            if outcome.field:
                result.field = outcome.field
            if outcome.reason:
                result.reason = outcome.reason
        counts = Counter(outcome.status for outcome in outcomes)
        response.accepted = counts[Status.ACCEPTED]
        response.duplicates = counts[Status.DUPLICATE]
        response.rejected = counts[Status.REJECTED]
        response.queued = counts[Status.QUEUED]
        return response

    async def GetProfile(self, request: pb.GetProfileRequest, context: Context) -> pb.Profile:
        customer_id = await self._subject(request)
        return to_proto(await self.service.profile(customer_id))

    async def _subject(self, request: pb.GetProfileRequest) -> str:
        check = Validator()
        if request.WhichOneof("subject") == "identifier":
            identifier = request.identifier
            check.required("identifier.type", identifier.type)
            check.required("identifier.value", identifier.value)
            check.done()
            try:
                found = await self.service.customer_by_identifier(identifier)
            except ServiceUnavailable as error:
                raise Unavailable(f"identity is unavailable to look the identifier up ({error})") from error
            if found is None:
                raise NotFound("no customer has this identifier")
            return found
        check.identifier("customer_id", request.customer_id)
        check.done()
        return request.customer_id

    async def UpdateAttributes(self, request: pb.UpdateAttributesRequest, context: Context) -> pb.Profile:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        if not request.attributes:
            check.fail("attributes", "at least one attribute is required")
        now = datetime.now(UTC)
        values = []
        named: set[str] = set()
        for position, update in enumerate(request.attributes):
            where = f"attributes[{position}]"
            if update.name in named:
                # One upsert statement cannot set the same row twice (PostgreSQL refuses it), and
                # which of two values the caller meant is not ours to guess.
                check.fail(f"{where}.name", f"{update.name[:64]!r} is named twice in this request")
            named.add(update.name)
            if update.name not in ATTRIBUTES and not (
                update.name.startswith(PREFERENCE_PREFIX) and len(update.name) > len(PREFERENCE_PREFIX)
            ):
                check.fail(f"{where}.name", f"unknown attribute {update.name[:64]!r}; use preference.<key> for others")
            check.text(f"{where}.name", update.name, 128)
            check.text(f"{where}.value", update.value, 1000)
            if check.required(f"{where}.source", update.source):
                check.text(f"{where}.source", update.source, 200)
            at = check.timestamp(f"{where}.updated_at", update.updated_at) if update.HasField("updated_at") else now
            if at is None:
                at = now  # reported above
            elif at > now:
                check.fail(f"{where}.updated_at", "lies in the future")
            values.append(AttributeValue(update.name, update.value, update.source, at))
        check.done()
        customer_id = await self.service.update_attributes(request.customer_id, values)
        return to_proto(await self.service.profile(customer_id))

    async def ListEvents(self, request: pb.ListEventsRequest, context: Context) -> pb.ListEventsResponse:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        page_size = request.page.page_size or DEFAULT_PAGE_SIZE
        if not 0 < page_size <= MAX_PAGE_SIZE:
            check.fail("page.page_size", f"must be between 1 and {MAX_PAGE_SIZE}")
        before = None
        if request.page.page_token:
            before = _parse_token(request.page.page_token)
            if before is None:
                check.fail("page.page_token", "is not a token this API returned")
        for position, kind in enumerate(request.types):
            check.text(f"types[{position}]", kind, 128)
        since = check.timestamp("since", request.since) if request.HasField("since") else None
        until = check.timestamp("until", request.until) if request.HasField("until") else None
        if since and until and since >= until:
            check.fail("until", "must be after since")
        check.done()
        # One more than a page: a next page token only when there is a next page ("empty on the
        # last page", also when the last page is exactly full).
        customer_id, stored = await self.service.timeline(
            request.customer_id, types=list(request.types), since=since, until=until, before=before, limit=page_size + 1
        )
        more = len(stored) > page_size
        stored = stored[:page_size]
        events = [
            pb.TimelineEvent(
                event=pb.Event.FromString(e.payload), customer_id=customer_id, received_at=timestamp(e.received_at)
            )
            for e in stored
        ]
        token = _token(stored[-1].occurred_at, stored[-1].event_id) if more else ""
        return pb.ListEventsResponse(events=events, page=PageResponse(next_page_token=token))

    async def GetCustomer360(self, request: pb.GetCustomer360Request, context: Context) -> pb.GetCustomer360Response:
        check = Validator()
        check.identifier("customer_id", request.customer_id)
        check.done()
        # The profile first (local, and it follows merges to the survivor), then the other
        # services' sections in parallel, each with its own deadline.
        profile = await self.service.profile(request.customer_id)
        timeout = self.section_timeout_s
        graph_request = identity_pb2.GetGraphRequest(customer_id=profile.customer_id)
        graph, consents = await asyncio.gather(
            _section(self.service.identity.graph(graph_request, timeout), timeout),
            _section(self.consent.consents(profile.customer_id, timeout), timeout),
        )
        response = pb.GetCustomer360Response(profile=to_proto(profile))
        if profile.traits is not None:
            response.trait_values.update(profile.traits.flat())
        response.identity.status, response.identity.detail = graph[0], graph[1]
        if isinstance(graph[2], identity_pb2.GetGraphResponse):
            response.identity.graph.CopyFrom(graph[2])
        response.consents.status, response.consents.detail = consents[0], consents[1]
        if isinstance(consents[2], list):
            response.consents.consents.extend(consents[2])
        return response


async def _section(call: Awaitable[T], timeout_s: float) -> tuple[pb.SectionStatus.ValueType, str, T | None]:
    """A section's status, detail and value: unavailable (not an error) when its service fails."""
    try:
        value = await asyncio.wait_for(call, timeout=timeout_s + 0.5)
    except (ServiceUnavailable, TimeoutError) as error:
        return pb.SECTION_STATUS_UNAVAILABLE, str(error) or "timed out", None
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.NOT_FOUND:
            return pb.SECTION_STATUS_AVAILABLE, "not found", None
        return pb.SECTION_STATUS_UNAVAILABLE, f"{error.code().name}: {error.details()}", None
    return pb.SECTION_STATUS_AVAILABLE, "", value


def _token(occurred_at: datetime, event_id: str) -> str:
    micros = int(occurred_at.timestamp()) * 1_000_000 + occurred_at.microsecond
    return f"{micros}:{event_id}"


def _parse_token(token: str) -> tuple[datetime, str] | None:
    micros, _, event_id = token.partition(":")
    # ASCII digits only (str.isdigit also takes e.g. superscripts, which int() refuses), a moment
    # datetime can hold, and an id PostgreSQL can compare (no NUL): anything else is not a token
    # we made, and must not become an internal error.
    if not (micros.isascii() and micros.isdigit()) or not event_id or "\x00" in event_id:
        return None
    try:
        moment = datetime.fromtimestamp(int(micros) // 1_000_000, UTC).replace(microsecond=int(micros) % 1_000_000)
    except (OverflowError, OSError, ValueError):
        return None
    return moment, event_id


def _epoch(seconds: int | None) -> Timestamp | None:
    if seconds is None:
        return None
    return Timestamp(seconds=seconds)


def to_proto(view: ProfileView) -> pb.Profile:
    profile = pb.Profile(
        customer_id=view.customer_id,
        attributes=[
            pb.Attribute(name=a.name, value=a.value, source=a.source, updated_at=timestamp(a.updated_at))
            for a in view.attributes
        ],
        evaluated_at=Timestamp(seconds=view.now),
        known=view.state is not None or bool(view.attributes),
    )
    if view.traits is not None:
        profile.traits.CopyFrom(traits_proto(view.traits))
    return profile


def traits_proto(traits: Traits) -> pb.Traits:
    message = pb.Traits(
        events=traits.events,
        orders=traits.orders,
        revenue_minor=traits.revenue,
        average_order_value_minor=traits.average_order_value,
        rfm=pb.Rfm(
            recency_days=traits.recency_days,
            frequency=traits.frequency,
            monetary_minor=traits.monetary,
            recency_score=traits.rfm_scores[0],
            frequency_score=traits.rfm_scores[1],
            monetary_score=traits.rfm_scores[2],
        ),
        channel_mix=traits.channel_mix,
        online_orders=traits.online_orders,
        offline_orders=traits.offline_orders,
        channel_events=traits.channel_events,
        category_affinity=[pb.CategoryAffinity(category=c, score=s) for c, s in traits.category_affinity],
        favourite_store_id=traits.favourite_store,
        open_cart=pb.OpenCart(
            items=[
                pb.CartLine(sku=l.sku, category=l.category, quantity=l.quantity, unit_price_minor=l.unit_price)
                for l in traits.cart  # noqa: E741
            ],
            value_minor=traits.cart_value,
        ),
        loyalty=pb.Loyalty(
            points_balance=traits.points,
            tier=traits.tier,
            spend_12m_minor=traits.spend_12m,
            next_tier=traits.next_tier,
            amount_to_next_tier_minor=traits.to_next_tier,
        ),
        return_rate=traits.return_rate,
        returned_minor=traits.refunded,
        open_support_tickets=traits.open_tickets,
        page_views_7d=traits.page_views_7d,
    )
    for field, days in (("last_30d", 30), ("last_90d", 90), ("last_365d", 365)):
        orders, revenue = traits.windows[days]
        getattr(message, field).CopyFrom(pb.WindowFigures(orders=orders, revenue_minor=revenue))
    for field, value in (
        ("first_seen_at", traits.first_seen),
        ("last_seen_at", traits.last_seen),
        ("last_purchase_at", traits.last_purchase),
    ):
        stamp = _epoch(value)
        if stamp is not None:
            getattr(message, field).CopyFrom(stamp)
    if traits.cart_last_activity is not None:
        message.open_cart.last_activity_at.CopyFrom(Timestamp(seconds=traits.cart_last_activity))
    return message
