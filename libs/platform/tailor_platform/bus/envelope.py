"""Envelopes: every bus message is a tailor.events.v1.Envelope on subject `tailor.<type>`."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from tailor.events.v1.envelope_pb2 import Envelope

MessageT = TypeVar("MessageT", bound=Message)


def subject_for(event_type: str) -> str:
    return f"tailor.{event_type}"


def dead_letter_subject(service: str) -> str:
    """Where a service's messages go that can never be handled (or published)."""
    return f"tailor.dlq.{service}"


def new_envelope(
    event_type: str,
    source: str,
    data: Message,
    *,
    customer_id: str = "",
    time: datetime | Timestamp | None = None,
    envelope_id: str | None = None,
) -> Envelope:
    """`time` defaults to now; a Timestamp is copied as it is (for many envelopes of one moment)."""
    envelope = Envelope(id=envelope_id or str(uuid.uuid4()), type=event_type, source=source, customer_id=customer_id)
    if isinstance(time, Timestamp):
        envelope.time.CopyFrom(time)
    else:
        envelope.time.FromDatetime(time or datetime.now(UTC))
    envelope.data.Pack(data)
    return envelope


class PoisonMessage(Exception):
    """A message that can never be handled (undecodable, wrong payload type): dead-letter it now."""


def unpack(envelope: Envelope, message_type: type[MessageT]) -> MessageT:
    """The envelope's payload as `message_type`, or PoisonMessage if it is something else."""
    payload = message_type()
    if not envelope.data.Unpack(payload):
        raise PoisonMessage(f"expected {message_type.DESCRIPTOR.full_name}, got {envelope.data.type_url}")
    return payload
