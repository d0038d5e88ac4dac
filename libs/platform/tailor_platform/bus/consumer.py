"""Durable JetStream pull consumers with explicit acks, idempotent effects and a dead-letter subject.

A `Subscription` names a subject and a handler. The handler runs inside a database transaction that
also records the envelope id in `processed_message`; a redelivered envelope finds its id there and
is acknowledged without running the handler again, so the effect happens once. A handler that fails
is retried with backoff up to `max_deliver` times; after that, or at once for a message that cannot
be decoded, the message goes to `tailor.dlq.<service>` and is acknowledged, so one bad message never
stops the consumer. An envelope id is kept as long as its stream keeps messages (and a day more):
only a message still in the stream can be delivered again (a durable declared anew starts from the
stream's first message), so older ids are pruned, in slices, about once an hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from google.protobuf.message import DecodeError
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope

from tailor_platform import telemetry
from tailor_platform.bus.envelope import PoisonMessage, dead_letter_subject
from tailor_platform.bus.streams import DAY_S, max_age_of, stream_for
from tailor_platform.bus.tables import processed_message
from tailor_platform.db import Database

log = logging.getLogger(__name__)

__all__ = ["BatchHandler", "Consumer", "ConsumerPolicy", "Handler", "Subscription", "dead_letter_subject"]

PRUNE_EVERY_S = 3600.0
PRUNE_SLICE = 10_000
"""processed_message rows deleted per statement (a short transaction, however many are due)."""

Handler = Callable[[AsyncSession, Envelope], Awaitable[None]]
BatchHandler = Callable[[AsyncSession, list[Envelope]], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """`name` becomes the durable consumer `<service>-<name>`, shared by every replica.

    With a `batch_handler`, every fetched batch is applied in one transaction (one round of
    statements for many messages, e.g. ingestion). If the batch fails, its messages are retried
    one by one, so a single bad message is isolated, retried and dead-lettered alone."""

    name: str
    subject: str
    handler: Handler
    batch_handler: BatchHandler | None = None

    @classmethod
    def batched(cls, name: str, subject: str, batch_handler: BatchHandler) -> Subscription:
        async def one(session: AsyncSession, envelope: Envelope) -> None:
            await batch_handler(session, [envelope])

        return cls(name, subject, one, batch_handler)


@dataclass(frozen=True)
class ConsumerPolicy:
    batch_size: int = 100
    max_deliver: int = 5
    backoff_s: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)
    ack_wait_s: float = 30.0
    fetch_timeout_s: float = 1.0


class Consumer:
    """Runs one durable consumer for one subscription."""

    def __init__(
        self, service: str, subscription: Subscription, db: Database, policy: ConsumerPolicy | None = None
    ) -> None:
        self.service = service
        self.subscription = subscription
        self.db = db
        self.policy = policy or ConsumerPolicy()
        self.durable = f"{service}-{subscription.name}"
        self.stream = stream_for(subscription.subject)
        self.handled = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.keep_s = max_age_of(self.stream) + DAY_S
        self._next_prune = 0.0
        self._stopping = False

    def config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            description=f"{self.service} handles {self.subscription.subject}",
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.policy.ack_wait_s,
            # One more than our own limit: we dead-letter at max_deliver, the server never drops.
            max_deliver=self.policy.max_deliver + 1,
            filter_subject=self.subscription.subject,
            max_ack_pending=self.policy.batch_size * 10,
        )

    async def declare(self, js: JetStreamContext) -> None:
        """Create the durable consumer, or bring an existing one to our configuration.

        nats-py's pull_subscribe does not update an existing durable, so a changed ack wait or
        delivery limit would silently not apply; this declares it explicitly instead."""
        wanted = self.config()
        try:
            current = (await js.consumer_info(self.stream, self.durable)).config
        except NotFoundError:
            await js.add_consumer(self.stream, wanted)
            return
        if (current.filter_subject, current.ack_wait, current.max_deliver, current.max_ack_pending) != (
            wanted.filter_subject,
            wanted.ack_wait,
            wanted.max_deliver,
            wanted.max_ack_pending,
        ):
            log.info("updating consumer %s", self.durable)
            await js.add_consumer(self.stream, wanted)

    async def run(self, js: JetStreamContext) -> None:
        """Consume until stopped. A failure to declare, bind or fetch (NATS reconnecting, the
        durable deleted under us) declares and binds again after a pause, rather than ending the
        consumer or fetching from a durable that no longer exists."""
        while not self._stopping:
            try:
                await self._declare_and_consume(js)
            except Exception:
                if self._stopping:
                    return
                log.exception("consumer %s failed; declaring it again", self.durable)
                await asyncio.sleep(1.0)

    async def _declare_and_consume(self, js: JetStreamContext) -> None:
        await self.declare(js)
        subscription = await js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        try:
            while not self._stopping:
                if time.monotonic() >= self._next_prune:
                    self._next_prune = time.monotonic() + PRUNE_EVERY_S
                    await self._guarded(self.prune())
                try:
                    messages = await subscription.fetch(self.policy.batch_size, timeout=self.policy.fetch_timeout_s)
                except TimeoutError:
                    continue
                if self.subscription.batch_handler is not None and len(messages) > 1:
                    await self._guarded(self.handle_batch(js, messages))
                else:
                    for message in messages:
                        await self._guarded(self.handle(js, message))
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    def stop(self) -> None:
        self._stopping = True

    async def prune(self) -> int:
        """Forget the envelope ids of this consumer older than `keep_s`; returns how many."""
        pruned = 0
        while not self._stopping:
            async with self.db.transaction() as session:
                deleted = await session.execute(
                    text(
                        "DELETE FROM processed_message WHERE ctid IN (SELECT ctid FROM processed_message "
                        "WHERE consumer = :consumer AND processed_at < now() - make_interval(secs => :keep) "
                        "LIMIT :slice)"
                    ),
                    {"consumer": self.durable, "keep": self.keep_s, "slice": PRUNE_SLICE},
                )
            count: int = deleted.rowcount  # type: ignore[attr-defined]
            pruned += count
            if count < PRUNE_SLICE:
                break
        if pruned:
            log.info("forgot %d processed envelope ids of %s", pruned, self.durable)
        return pruned

    async def _guarded(self, handling: Awaitable[object]) -> None:
        """Handle messages; a failure of NATS itself (an ack, a dead-letter publish, e.g. while it
        reconnects) must not end the consumer: what was not acknowledged comes back after the ack
        wait and is handled (or dead-lettered) then."""
        try:
            await handling
        except Exception:
            log.exception("handling messages of %s failed; unacknowledged ones are redelivered", self.durable)

    async def handle(self, js: JetStreamContext, message: Msg) -> None:
        if await self._dead_lettered_if_exhausted(js, message):
            return
        try:
            envelope = _decode(message)
        except (DecodeError, PoisonMessage) as error:
            await self._dead_letter(js, message, f"undecodable: {error}")
            return
        parent = telemetry.extract_context(message.headers)
        with telemetry.tracer().start_as_current_span(
            f"{message.subject} process",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": message.subject,
                "messaging.consumer.group.name": self.durable,
                "messaging.message.id": envelope.id,
                "messaging.operation.type": "process",
            },
        ) as span:
            while True:
                try:
                    applied = await self._apply_once(envelope)
                    break
                except PoisonMessage as error:
                    span.set_status(Status(StatusCode.ERROR, str(error)))
                    await self._dead_letter(js, message, f"poison: {error}")
                    return
                except Exception as error:
                    if await self._waited_for_database([message], error):
                        if self._stopping:
                            return  # unacknowledged: redelivered to whoever consumes next
                        continue
                    span.record_exception(error)
                    span.set_status(Status(StatusCode.ERROR, type(error).__name__))
                    await self._retry_or_dead_letter(js, message, error)
                    return
        if applied:
            self.handled += 1
        else:
            self.duplicates += 1
        await message.ack()

    async def handle_batch(self, js: JetStreamContext, messages: list[Msg]) -> None:
        assert self.subscription.batch_handler is not None
        decoded: list[tuple[Msg, Envelope]] = []
        for message in messages:
            if await self._dead_lettered_if_exhausted(js, message):
                continue
            try:
                decoded.append((message, _decode(message)))
            except (DecodeError, PoisonMessage) as error:
                await self._dead_letter(js, message, f"undecodable: {error}")
        if not decoded:
            return
        # One span for the batch, linked to each producer's span (a batch has many parents).
        links = [
            Link(trace.get_current_span(telemetry.extract_context(m.headers)).get_span_context()) for m, _ in decoded
        ]
        with telemetry.tracer().start_as_current_span(
            f"{self.subscription.subject} process",
            kind=SpanKind.CONSUMER,
            links=[link for link in links if link.context.is_valid],
            attributes={
                "messaging.system": "nats",
                "messaging.destination.name": self.subscription.subject,
                "messaging.consumer.group.name": self.durable,
                "messaging.batch.message_count": len(decoded),
                "messaging.operation.type": "process",
            },
        ) as span:
            failure: Exception | None = None
            while True:
                try:
                    applied = await self._apply_batch_once([envelope for _, envelope in decoded])
                    break
                except Exception as error:
                    if await self._waited_for_database([message for message, _ in decoded], error):
                        if self._stopping:
                            return  # unacknowledged: redelivered to whoever consumes next
                        continue
                    failure = error
                    break
            if failure is not None:
                span.record_exception(failure)
                span.set_status(Status(StatusCode.ERROR, type(failure).__name__))
                log.warning("batch of %d from %s failed (%s); retrying one by one", len(decoded), self.durable, failure)
                for message, _ in decoded:
                    await self.handle(js, message)
                return
        self.handled += applied
        self.duplicates += len(decoded) - applied
        await asyncio.gather(*(message.ack() for message, _ in decoded))

    async def _apply_batch_once(self, envelopes: list[Envelope]) -> int:
        """Run the batch handler on the envelopes not applied before, recording them, in one
        transaction; returns how many were new."""
        assert self.subscription.batch_handler is not None
        async with self.db.transaction() as session:
            unique = list({envelope.id: envelope for envelope in envelopes}.values())
            first_time = await session.scalars(
                insert(processed_message)
                .values([{"consumer": self.durable, "envelope_id": envelope.id} for envelope in unique])
                .on_conflict_do_nothing()
                .returning(processed_message.c.envelope_id)
            )
            new_ids = set(first_time)
            fresh = [envelope for envelope in unique if envelope.id in new_ids]
            if fresh:
                await self.subscription.batch_handler(session, fresh)
        return len(fresh)

    async def _apply_once(self, envelope: Envelope) -> bool:
        """Run the handler unless this envelope was already applied; both in one transaction."""
        async with self.db.transaction() as session:
            first_time = await session.execute(
                insert(processed_message)
                .values(consumer=self.durable, envelope_id=envelope.id)
                .on_conflict_do_nothing()
                .returning(processed_message.c.envelope_id)
            )
            if first_time.first() is None:
                return False
            await self.subscription.handler(session, envelope)
        return True

    async def _waited_for_database(self, messages: list[Msg], error: Exception) -> bool:
        """After a failure: if the database cannot be reached, that is no fault of the messages,
        and a retry would only use up their deliveries until they are dead-lettered. Keep them
        (in progress, so they are not redelivered meanwhile) until the database answers again or
        the consumer stops; True if so (handle them again), False if the database is up (the
        handler failed: retry or dead-letter as usual). One ping per failure, none per message."""
        if await self.db.ping():
            return False
        log.warning("database unreachable (%s: %s); %s waits for it", type(error).__name__, error, self.durable)
        while not self._stopping:
            for message in messages:
                with contextlib.suppress(Exception):
                    await message.in_progress()
            if await self.db.ping():
                log.info("database reachable again; %s goes on", self.durable)
                return True
            await asyncio.sleep(min(1.0, self.policy.ack_wait_s / 3))
        return True

    async def _dead_lettered_if_exhausted(self, js: JetStreamContext, message: Msg) -> bool:
        """A message delivered more often than max_deliver never got an outcome from us: the process
        handling it died (out of memory, killed) or it outlasted the ack wait, every time. The server
        gives it one delivery more than our limit and then drops it silently; dead-letter it now."""
        delivered = message.metadata.num_delivered
        if delivered <= self.policy.max_deliver:
            return False
        await self._dead_letter(js, message, f"delivered {delivered} times without being handled")
        return True

    async def _retry_or_dead_letter(self, js: JetStreamContext, message: Msg, error: Exception) -> None:
        delivered = message.metadata.num_delivered
        if delivered >= self.policy.max_deliver:
            await self._dead_letter(js, message, f"failed {delivered} times: {type(error).__name__}: {error}")
            return
        backoff = self.policy.backoff_s
        delay = backoff[min(delivered - 1, len(backoff) - 1)] if backoff else 0
        log.warning(
            "handler for %s failed (delivery %d), retrying in %.1fs: %s",
            message.subject,
            delivered,
            delay,
            error,
        )
        await message.nak(delay=delay)

    async def _dead_letter(self, js: JetStreamContext, message: Msg, reason: str) -> None:
        sequence = message.metadata.sequence.stream if message.metadata.sequence else 0
        headers = {
            "Nats-Msg-Id": f"{self.durable}:{sequence}",
            "Tailor-Original-Subject": message.subject,
            "Tailor-Consumer": self.durable,
            "Tailor-Reason": reason[:1000],
        }
        await js.publish(dead_letter_subject(self.service), message.data, headers=headers)
        await message.ack()
        self.dead_lettered += 1
        log.error("dead-lettered a message from %s: %s", message.subject, reason)


_ID_LENGTH: int = processed_message.c.envelope_id.type.length  # type: ignore[attr-defined]


def _decode(message: Msg) -> Envelope:
    """The message's envelope; PoisonMessage if its id cannot be recorded in processed_message
    (none, too long, a NUL byte): such a message could only fail on every delivery."""
    envelope = Envelope.FromString(message.data)
    if not envelope.id:
        raise PoisonMessage("envelope has no id")
    if len(envelope.id) > _ID_LENGTH or "\x00" in envelope.id:
        raise PoisonMessage(f"envelope id {envelope.id[:80]!r} cannot be recorded")
    return envelope
