"""What profile publishes and consumes.

Publishes `tailor.profile.updated` (through the outbox) with the traits that changed: on new events,
merges and attribute updates, and when time alone changed them (a sweep on every replica finds the
profiles whose rolling windows moved on; cause "time"). Consumes
`tailor.ingest.events` (batches from channel adapters, handled like IngestEvents),
`tailor.identity.merged` (fold absorbed customers into the survivor, a fetched batch of merges at
once) and `tailor.identity.unmerged` (give restored customers their events back), all durable and
once per message. Runs the resolver of events queued while identity was
unreachable on every replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from google.protobuf.struct_pb2 import NULL_VALUE, Struct, Value
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.ingest_pb2 import IngestBatch
from tailor.events.v1.profile_pb2 import ProfileUpdated
from tailor_platform.bus.consumer import Subscription
from tailor_platform.bus.envelope import PoisonMessage, unpack
from tailor_platform.bus.listener import Listener

if TYPE_CHECKING:
    from tailor_profile.service import ProfileService

log = logging.getLogger(__name__)

PROFILE_UPDATED = "profile.updated"
INGEST_SUBJECT = "tailor.ingest.events"
PENDING_WAKE_SUBJECT = "tailor.profile.pending.wake"
MAX_BUS_BATCH = 1000
TIME_CHANGE_ROUND = 100
"""Profiles announced per transaction of the time sweep (small: a round holds its worker's event loop)."""


def profile_updated(
    customer_id: str, changed: dict[str, Any], cause: str, events: int, updated_at: Timestamp
) -> ProfileUpdated:
    message = ProfileUpdated(customer_id=customer_id, changed_traits=sorted(changed), cause=cause, events=events)
    fill_struct(message.values, changed)
    message.updated_at.CopyFrom(updated_at)
    return message


def fill_struct(struct: Struct, values: dict[str, Any]) -> None:
    """Struct.update without its per-value abstract-class checks (several times faster; traits
    are only ever None, bool, int, float, str, lists and dicts)."""
    fields = struct.fields
    for key, value in values.items():
        _set_value(fields[key], value)


def _set_value(target: Value, value: Any) -> None:
    kind = type(value)
    if kind is str:
        target.string_value = value
    elif kind is int or kind is float:
        target.number_value = value
    elif kind is bool:
        target.bool_value = value
    elif kind is dict:
        fill_struct(target.struct_value, value)
    elif kind is list:
        items = target.list_value.values
        for item in value:
            _set_value(items.add(), item)
    elif value is None:
        target.null_value = NULL_VALUE
    else:
        raise TypeError(f"cannot put a {kind.__name__} into a Struct")


def ingest_subscription(service: ProfileService) -> Subscription:
    async def handle(session: AsyncSession, envelope: Envelope) -> None:
        batch = unpack(envelope, IngestBatch)
        if len(batch.events) > MAX_BUS_BATCH:
            raise PoisonMessage(f"an ingest batch holds at most {MAX_BUS_BATCH} events, got {len(batch.events)}")
        outcomes = await service.ingest(list(batch.events), session)
        rejected = [o for o in outcomes if o.status == "rejected"]
        for outcome in rejected[:20]:
            log.warning(
                "rejected event from %s: %s %s: %s",
                batch.source or envelope.source,
                outcome.event_id,
                outcome.field,
                outcome.reason,
            )

    return Subscription("ingest-events", INGEST_SUBJECT, handle)


def pending_resolver(
    service: ProfileService, interval_s: float
) -> tuple[Listener, Callable[[], Coroutine[Any, Any, None]]]:
    """A background task that resolves queued events every `interval_s` while any wait, and the
    listener that wakes it at once (a message on `tailor.profile.pending.wake`)."""
    wake = asyncio.Event()

    async def resolve_pending() -> None:
        while True:
            try:
                while await service.resolve_pending():
                    pass
            except Exception:
                log.exception("resolving queued events failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval_s)
            wake.clear()

    async def on_message(envelope: Envelope) -> None:
        wake.set()

    async def on_gap() -> None:
        return None

    return Listener(PENDING_WAKE_SUBJECT, on_message, on_gap), resolve_pending


def time_change_announcer(service: ProfileService, interval_s: float) -> Callable[[], Coroutine[Any, Any, None]]:
    """A background task that announces, every `interval_s`, the traits time alone changed (see
    ProfileService.announce_time_changes), in rounds of a bounded size until none are due."""

    async def announce_time_changes() -> None:
        while True:
            try:
                while await service.announce_time_changes(limit=TIME_CHANGE_ROUND) == TIME_CHANGE_ROUND:
                    pass
            except Exception:
                log.exception("announcing time-driven trait changes failed; retrying")
            await asyncio.sleep(interval_s)

    return announce_time_changes
