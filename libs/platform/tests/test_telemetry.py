import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME
from opentelemetry.sdk.trace import TracerProvider
from tailor_platform.telemetry import JsonLogFormatter, extract_context, inject_headers, resource_for

provider = TracerProvider()
tracer = provider.get_tracer("test")


def test_json_logs_carry_the_active_trace_and_span() -> None:
    record = logging.LogRecord("tailor.test", logging.INFO, __file__, 1, "hello %s", ("world",), None)
    record.tailor_customer = "c-1"
    with tracer.start_as_current_span("work") as span:
        line = json.loads(JsonLogFormatter().format(record))
    context = span.get_span_context()
    assert line["message"] == "hello world"
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    assert line["customer"] == "c-1"


def test_trace_context_round_trips_through_message_headers() -> None:
    with tracer.start_as_current_span("publish") as span:
        headers = inject_headers({"Nats-Msg-Id": "abc"})
    assert headers["traceparent"].split("-")[1] == f"{span.get_span_context().trace_id:032x}"
    remote = trace.get_current_span(extract_context(headers)).get_span_context()
    assert remote.span_id == span.get_span_context().span_id
    assert remote.is_remote


def test_the_service_name_of_the_environment_wins_over_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    assert resource_for("consent").attributes[SERVICE_NAME] == "tailor-consent"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "shop-consent")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=staging")
    attributes = resource_for("consent").attributes
    assert (attributes[SERVICE_NAME], attributes["deployment.environment"]) == ("shop-consent", "staging")
