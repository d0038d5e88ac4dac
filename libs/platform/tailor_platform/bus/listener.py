"""Listeners: every replica hears every message on a subject, for in-memory state such as caches.

Unlike a durable consumer (one replica handles each message, at least once), a listener is a plain
NATS subscription held by each process. Messages sent while a process is disconnected are missed,
and so are messages the client drops when a process falls too far behind (a slow consumer): on
every reconnect, and on every such drop, `on_gap` runs and the state must be rebuilt (e.g. the
cache cleared).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from opentelemetry.trace import SpanKind
from tailor.events.v1.envelope_pb2 import Envelope

from tailor_platform import telemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listener:
    subject: str
    on_message: Callable[[Envelope], Awaitable[None]]
    on_gap: Callable[[], Awaitable[None]]

    async def attach(self, nc: NATS) -> Subscription:
        return await nc.subscribe(self.subject, cb=self._receive)

    async def _receive(self, message: Msg) -> None:
        try:
            envelope = Envelope.FromString(message.data)
        except DecodeError:
            log.warning("listener on %s ignored an undecodable message", self.subject)
            return
        with telemetry.tracer().start_as_current_span(
            f"{message.subject} receive",
            context=telemetry.extract_context(message.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": message.subject,
                "messaging.message.id": envelope.id,
                "messaging.operation.type": "receive",
            },
        ):
            await self.on_message(envelope)
