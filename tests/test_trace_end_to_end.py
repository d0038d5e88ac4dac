"""One trace from the caller through gRPC, the database, the outbox, NATS and the consumers of
every service involved: the services run as processes and export OTLP to a receiver the test runs."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from tailor.consent.v1 import consent_pb2 as pb
from tailor.consent.v1 import consent_pb2_grpc
from tailor.identity.v1 import identity_pb2, identity_pb2_grpc
from tailor_cli.launcher import Platform
from tailor_cli.registry import service_names

from tests.otlp_receiver import OtlpReceiver, ReceivedSpan


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    otlp = OtlpReceiver().start()
    yield otlp
    otlp.stop()


@pytest.fixture(scope="module")
def platform(start_platform: Callable[..., Platform], receiver: OtlpReceiver) -> Platform:
    return start_platform(
        service_names(),
        extra_env={"TAILOR_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"},
    )


def wait_for_spans(
    receiver: OtlpReceiver, trace_id: str, done: Callable[[list[ReceivedSpan]], bool]
) -> list[ReceivedSpan]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        if done(spans):
            return spans
        time.sleep(0.1)
    raise AssertionError(f"trace incomplete: {[(s.service, s.name) for s in receiver.trace(trace_id)]}")


def one(spans: list[ReceivedSpan], kind: int, name_part: str) -> ReceivedSpan:
    matching = [span for span in spans if span.kind == kind and name_part in span.name]
    assert len(matching) == 1, f"expected one {name_part} span of kind {kind}, got {matching}"
    return matching[0]


def test_set_consent_is_one_trace_across_grpc_database_outbox_and_bus(
    platform: Platform, receiver: OtlpReceiver
) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    customer_id = f"traced-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(platform.address("consent")) as channel:
        consent_pb2_grpc.ConsentServiceStub(channel).SetConsent(
            pb.SetConsentRequest(
                customer_id=customer_id,
                purpose="marketing",
                channel="email",
                granted=True,
                source="web",
                request_id=uuid.uuid4().hex,
            ),
            metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
        )

    def complete(spans: list[ReceivedSpan]) -> bool:
        kinds = {span.kind for span in spans}
        return {Span.SPAN_KIND_SERVER, Span.SPAN_KIND_PRODUCER, Span.SPAN_KIND_CONSUMER} <= kinds

    spans = wait_for_spans(receiver, trace_id, complete)
    by_id = {span.span_id: span for span in spans}

    server = one(spans, Span.SPAN_KIND_SERVER, "SetConsent")
    assert server.service == "tailor-consent"
    assert server.parent_span_id == caller_span  # continues the caller's trace

    statements = [
        span for span in spans if span.kind == Span.SPAN_KIND_CLIENT and span.parent_span_id == server.span_id
    ]
    assert statements, "database statements are traced as children of the RPC"

    producer = one(spans, Span.SPAN_KIND_PRODUCER, "tailor.consent.changed")
    assert producer.parent_span_id == server.span_id  # the outbox carried the RPC's context
    consumer = one(spans, Span.SPAN_KIND_CONSUMER, "tailor.consent.changed")
    assert consumer.parent_span_id == producer.span_id  # a child of the publish, not a new trace
    assert all(span.parent_span_id in by_id or span.span_id == server.span_id for span in spans)


def test_identity_merge_is_one_trace_from_identity_to_consent(platform: Platform, receiver: OtlpReceiver) -> None:
    with grpc.insecure_channel(platform.address("identity")) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        customers = [
            identity.Resolve(
                identity_pb2.ResolveRequest(
                    identifiers=[identity_pb2.Identifier(type="email", value=f"{uuid.uuid4().hex[:10]}@example.com")]
                )
            ).customer_id
            for _ in range(2)
        ]
        trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
        identity.Merge(
            identity_pb2.MergeRequest(survivor_id=customers[0], absorbed_ids=[customers[1]], reason="operator"),
            metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
        )

    def complete(spans: list[ReceivedSpan]) -> bool:
        # Each process exports on its own schedule: wait for identity's spans too, not only the consumers'.
        published = any(s.kind == Span.SPAN_KIND_PRODUCER and "tailor.identity.merged" in s.name for s in spans)
        consumers = [s for s in spans if s.kind == Span.SPAN_KIND_CONSUMER and "tailor.identity.merged" in s.name]
        with_children = [c for c in consumers if any(s.parent_span_id == c.span_id for s in spans)]
        consent_done = "tailor-consent" in {c.service for c in consumers} and len(with_children) == len(consumers)
        return published and consent_done

    spans = wait_for_spans(receiver, trace_id, complete)
    server = one(spans, Span.SPAN_KIND_SERVER, "Merge")
    assert (server.service, server.parent_span_id) == ("tailor-identity", caller_span)
    producer = one(spans, Span.SPAN_KIND_PRODUCER, "tailor.identity.merged")
    assert (producer.service, producer.parent_span_id) == ("tailor-identity", server.span_id)
    consumers = [s for s in spans if s.kind == Span.SPAN_KIND_CONSUMER and "tailor.identity.merged" in s.name]
    assert "tailor-consent" in {c.service for c in consumers}  # and every other service that folds merges
    for consumer in consumers:
        assert consumer.parent_span_id == producer.span_id  # a child of the publish, not a new trace
        # the consumer's own work for the merge (its SQL) hangs under its span, in the same trace
        assert any(s.service == consumer.service and s.parent_span_id == consumer.span_id for s in spans)
    # consent announces the merged-away customer (consent.changed) in the same trace, too
    wait_for_spans(
        receiver,
        trace_id,
        lambda found: any(
            s.kind == Span.SPAN_KIND_PRODUCER and s.service == "tailor-consent" and "tailor.consent.changed" in s.name
            for s in found
        ),
    )


def test_statements_sent_straight_to_the_driver_are_traced(platform: Platform, receiver: OtlpReceiver) -> None:
    trace_id, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    with grpc.insecure_channel(platform.address("identity")) as channel:
        identity_pb2_grpc.IdentityServiceStub(channel).ResolveBatch(
            identity_pb2.ResolveBatchRequest(
                records=[
                    identity_pb2.ResolveRequest(
                        identifiers=[
                            identity_pb2.Identifier(type="email", value=f"{uuid.uuid4().hex[:10]}@example.com")
                        ]
                    )
                ]
            ),
            metadata=(("traceparent", f"00-{trace_id}-{caller_span}-01"),),
        )

    def lookup(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        return [
            s
            for s in spans
            if s.kind == Span.SPAN_KIND_CLIENT
            and "FROM identifier WHERE blind_index" in s.attributes.get("db.statement", "")
        ]

    def complete(spans: list[ReceivedSpan]) -> bool:
        # The server span ends after the statement's, and may come in a later export.
        return bool(lookup(spans)) and any(s.kind == Span.SPAN_KIND_SERVER and "ResolveBatch" in s.name for s in spans)

    spans = wait_for_spans(receiver, trace_id, complete)
    server = one(spans, Span.SPAN_KIND_SERVER, "ResolveBatch")
    [statement] = lookup(spans)  # the owners lookup goes straight to asyncpg, not through SQLAlchemy
    assert statement.parent_span_id == server.span_id
    assert statement.attributes["db.operation"] == "SELECT"


def test_health_checks_are_not_traced(platform: Platform, receiver: OtlpReceiver) -> None:
    time.sleep(0.5)
    assert not [span for span in receiver.spans if "grpc.health" in span.name]
