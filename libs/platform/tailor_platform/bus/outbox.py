"""The transactional outbox.

`Outbox.add(session, ...)` writes the event in the caller's transaction, so the event exists if and
only if the change committed. A relay task publishes committed rows to JetStream in order, with
`Nats-Msg-Id` set to the envelope id (the stream drops a re-publish after a crash between publish
and delete), then deletes them. A commit wakes the relay at once; a poll catches anything else
(other replicas, a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from google.protobuf.message import Message
from nats.js import JetStreamContext
from opentelemetry.trace import SpanKind
from sqlalchemy import delete, event, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from tailor.events.v1.envelope_pb2 import Envelope

from tailor_platform import telemetry
from tailor_platform.bus.envelope import new_envelope, subject_for
from tailor_platform.bus.tables import outbox
from tailor_platform.db import Database

log = logging.getLogger(__name__)

_PENDING_KEY = "tailor_outbox_pending"


class Outbox:
    def __init__(
        self,
        db: Database,
        source: str,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 0.5,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.db = db
        self.source = source
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.publish_timeout_s = publish_timeout_s
        self._wake = asyncio.Event()
        self._stopping = False
        self.published = 0
        event.listen(db.sync_session_class, "after_commit", self._after_commit)

    async def add(
        self,
        session: AsyncSession,
        event_type: str,
        data: Message,
        *,
        customer_id: str = "",
        time: datetime | None = None,
    ) -> Envelope:
        """Write an event in the session's transaction; it is published only if that commits."""
        envelope = new_envelope(event_type, self.source, data, customer_id=customer_id, time=time)
        await self.add_many(session, [envelope])
        return envelope

    async def add_many(self, session: AsyncSession, envelopes: list[Envelope]) -> None:
        if not envelopes:
            return
        trace_headers = telemetry.inject_headers({})
        await session.execute(
            insert(outbox),
            [
                {
                    "envelope_id": envelope.id,
                    "subject": subject_for(envelope.type),
                    "payload": envelope.SerializeToString(),
                    "trace_headers": trace_headers,
                }
                for envelope in envelopes
            ],
        )
        session.sync_session.info[_PENDING_KEY] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_PENDING_KEY, False):
            self._wake.set()

    async def run(self, js: JetStreamContext) -> None:
        """Relay until stopped; publishing failures are retried on the next round."""
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
            self._wake.clear()
            try:
                await self.flush(js)
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(self.poll_interval_s)

    async def flush(self, js: JetStreamContext) -> int:
        """Publish everything committed so far; returns how many were published."""
        total = 0
        while True:
            count = await self._relay_batch(js)
            total += count
            if count < self.batch_size:
                return total

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _relay_batch(self, js: JetStreamContext) -> int:
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    select(
                        outbox.c.id, outbox.c.envelope_id, outbox.c.subject, outbox.c.payload, outbox.c.trace_headers
                    )
                    .order_by(outbox.c.id)
                    .limit(self.batch_size)
                    .with_for_update(skip_locked=True)
                )
            ).all()
            if not rows:
                return 0
            acks = [await self._publish(js, row) for row in rows]
            await asyncio.wait_for(asyncio.gather(*acks), timeout=self.publish_timeout_s)
            await session.execute(delete(outbox).where(outbox.c.id.in_([row.id for row in rows])))
        self.published += len(rows)
        return len(rows)

    async def _publish(self, js: JetStreamContext, row: Any) -> asyncio.Future[Any]:
        parent = telemetry.extract_context(row.trace_headers)
        with telemetry.tracer().start_as_current_span(
            f"{row.subject} publish",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": row.subject,
                "messaging.message.id": row.envelope_id,
                "messaging.operation.type": "publish",
            },
        ):
            headers = {"Nats-Msg-Id": row.envelope_id}
            telemetry.inject_headers(headers)
            future: asyncio.Future[Any] = await js.publish_async(row.subject, row.payload, headers=headers)
            return future
