"""The transactional outbox.

`Outbox.add(session, ...)` writes the event in the caller's transaction, so the event exists if and
only if the change committed. A relay task publishes committed rows to JetStream in order, with
`Nats-Msg-Id` set to the envelope id (the stream drops a re-publish after a crash between publish
and delete), then deletes them. A commit wakes the relay at once; a poll catches anything else
(other replicas, a restart). A batch of rows is published at once and deleted only once the stream
acknowledged every message (bus/publisher.py).

When a service runs several workers, the relay runs in the background worker only (service.py): the
workers that serve calls pass their commits on with `forward_commits`, a message on a core NATS
subject (outside every stream) that wakes the relay as their own commit would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import datetime

import asyncpg
from google.protobuf.message import Message
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from tailor.events.v1.envelope_pb2 import Envelope

from tailor_platform import telemetry
from tailor_platform.bus.envelope import dead_letter_subject, new_envelope, subject_for
from tailor_platform.bus.publisher import AckedPublisher, Outgoing
from tailor_platform.db import Database, driver_connection

log = logging.getLogger(__name__)

_PENDING_KEY = "tailor_outbox_pending"


def committed_subject(source: str) -> str:
    """Where the workers of `source` that do not relay announce their outbox commits."""
    return f"tailor.internal.outbox.{source}.committed"


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
        self._publisher: AckedPublisher | None = None
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
        # One set-based statement for the batch (the hot paths write hundreds of events at once).
        driver = await driver_connection(session)
        await driver.execute(
            "INSERT INTO outbox (envelope_id, subject, payload, trace_headers) "
            "SELECT envelope_id, subject, payload, $4::text::jsonb "
            "FROM unnest($1::text[], $2::text[], $3::bytea[]) AS e(envelope_id, subject, payload)",
            [envelope.id for envelope in envelopes],
            [subject_for(envelope.type) for envelope in envelopes],
            [envelope.SerializeToString() for envelope in envelopes],
            json.dumps(telemetry.inject_headers({})),
        )
        session.sync_session.info[_PENDING_KEY] = True

    def _after_commit(self, session: Session) -> None:
        if session.info.pop(_PENDING_KEY, False):
            self._wake.set()

    async def run(self, nc: NATS) -> None:
        """Relay until stopped; publishing failures are retried on the next round. Other processes'
        commits (`forward_commits`) wake it too; what they committed before it listened is relayed
        at once."""
        await nc.subscribe(committed_subject(self.source), cb=self._on_committed_elsewhere)
        while not self._stopping:
            self._wake.clear()
            try:
                await self.flush(nc)
            except Exception:
                log.exception("outbox relay failed; retrying")
                await asyncio.sleep(self.poll_interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)

    async def _on_committed_elsewhere(self, _message: Msg) -> None:
        self._wake.set()

    async def forward_commits(self, nc: NATS) -> None:
        """Instead of relaying: until stopped, tell the relaying process when this one committed
        outbox rows (the commits of a moment coalesce into one message)."""
        subject = committed_subject(self.source)
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await nc.publish(subject, b"")
            except Exception as error:  # NATS closed or lost: the relay's poll finds the rows
                log.warning("could not pass an outbox commit on to the relay: %s", error)

    async def flush(self, nc: NATS) -> int:
        """Publish everything committed so far; returns how many were published."""
        if self._publisher is None or self._publisher.nc is not nc:
            self._publisher = AckedPublisher(nc)
        total = 0
        while True:
            count = await self._relay_batch(self._publisher)
            total += count
            if count < self.batch_size:
                return total

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def _relay_batch(self, publisher: AckedPublisher) -> int:
        async with self.db.transaction() as session:
            driver = await driver_connection(session)
            rows = await driver.fetch(
                "SELECT id, envelope_id, subject, payload, trace_headers::text AS trace_headers FROM outbox "
                "ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            spans = [self._span(row) for row in rows] if telemetry.recording() else [None] * len(rows)
            outgoing = [_outgoing(row, span) for row, span in zip(rows, spans, strict=True)]
            limit = publisher.nc.max_payload
            if any(message.size > limit for message in outgoing):
                outgoing = [
                    self._too_large(message, limit) if message.size > limit else message for message in outgoing
                ]
            try:
                await publisher.publish(outgoing, self.publish_timeout_s)
            except Exception as error:
                for span in filter(None, spans):
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                raise
            finally:
                for span in filter(None, spans):
                    span.end()
            await driver.execute("DELETE FROM outbox WHERE id = ANY($1::bigint[])", [row["id"] for row in rows])
        self.published += len(rows)
        return len(rows)

    def _too_large(self, message: Outgoing, limit: int) -> Outgoing:
        """NATS refuses a message over its max_payload every time (and closes the connection when
        the headers push it over): instead of blocking every later event for good, the event goes
        to the dead-letter subject as its envelope without the data, with the reason."""
        envelope = Envelope.FromString(message.payload)
        envelope.ClearField("data")
        reason = f"{message.size} bytes with headers exceed the NATS max_payload of {limit}"
        log.error("outbox event %s on %s not published: %s", envelope.id, message.subject, reason)
        headers = {
            "Nats-Msg-Id": f"outbox:{envelope.id}",
            "Tailor-Original-Subject": message.subject,
            "Tailor-Reason": reason,
        }
        return Outgoing(dead_letter_subject(self.source), envelope.SerializeToString(), headers)

    @staticmethod
    def _span(row: asyncpg.Record) -> Span:
        """A producer span per message, child of the span that wrote it, from publish to ack."""
        subject = row["subject"]
        return telemetry.tracer().start_span(
            f"{subject} publish",
            context=telemetry.extract_context(json.loads(row["trace_headers"])),
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": subject,
                "messaging.message.id": row["envelope_id"],
                "messaging.operation.type": "publish",
            },
        )


def _outgoing(row: asyncpg.Record, span: Span | None) -> Outgoing:
    headers = {"Nats-Msg-Id": row["envelope_id"]}
    if span is not None:
        with telemetry.use_span(span):
            telemetry.inject_headers(headers)
    return Outgoing(row["subject"], row["payload"], headers)
