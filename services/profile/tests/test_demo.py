"""The demo population: deterministic, consistent with its ground truth, and valid input."""

from __future__ import annotations

import dataclasses
import json
import random
import threading
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import typer
from tailor.profile.v1 import profile_pb2 as pb
from tailor.profile.v1 import profile_pb2_grpc
from tailor_platform.validation import Validator
from tailor_profile.cli import show_profile
from tailor_profile.demo import cli as demo_cli
from tailor_profile.demo.cli import demo_data, example_commands
from tailor_profile.demo.generator import PURCHASES, DemoConfig, make_person, person_events, population
from tailor_profile.demo.truth import linkable_people, person_of
from tailor_profile.testing import INTAKE, make_event
from typer.testing import CliRunner

CONFIG = DemoConfig(people=40, seed=7, days=120, end=datetime(2026, 6, 1, tzinfo=UTC), sessions_per_week=1.5)


def serialized(config: DemoConfig) -> list[bytes]:
    return [event.SerializeToString(deterministic=True) for event in population(config).events()]


def test_the_same_seed_gives_the_same_events_and_another_seed_others() -> None:
    assert serialized(CONFIG) == serialized(CONFIG)
    other = DemoConfig(people=40, seed=8, days=120, end=CONFIG.end, sessions_per_week=1.5)
    assert serialized(other) != serialized(CONFIG)


def test_every_identifier_an_event_carries_belongs_to_its_person_in_the_ground_truth() -> None:
    people = population(CONFIG)
    events = list(people.events())
    truth = people.truth()
    owners = truth["identifier_owner"]
    fields = {"anonymous_id": "device_id", "email": "email", "phone": "phone", "loyalty_id": "loyalty_id"}
    fields["pos_customer_id"] = "pos_customer_id"
    for event in events:
        person = event.id.rsplit("-", 1)[0]
        for field, kind in fields.items():
            value = getattr(event.identifiers, field)
            if value:
                assert owners[f"{kind}:{value}"] == person
    assert truth["people"] == 40
    assert sum(p["events"] for p in truth["persons"]) == len(events)


def test_churned_people_stop_buying_and_every_event_is_valid_input() -> None:
    people = population(CONFIG)
    events = list(people.events())
    churn = {p.person_id: p.churn_at for p in people.people if p.churn_at}
    assert churn, "the sample should contain churners"
    end = int(CONFIG.end.timestamp())
    for event in events:
        check = Validator()
        assert INTAKE.facts(check, event, end) is not None, check.violations
        churned_at = churn.get(event.id.rsplit("-", 1)[0])
        if churned_at is not None and event.type in PURCHASES:
            assert event.timestamp.ToDatetime(UTC) <= churned_at
    kinds = {event.type for event in events}
    assert {"order_completed", "pos_purchase", "add_to_cart", "store_visit", "loyalty_earned"} <= kinds


def test_the_demo_data_command_writes_events_and_ground_truth(tmp_path: Path) -> None:
    """Registered the way tailor_cli registers it: `app.command("demo-data")(demo_data)`."""
    app = typer.Typer()
    app.command("demo-data")(demo_data)
    app.command("profile")(show_profile)
    result = CliRunner().invoke(
        app, ["demo-data", "--people", "5", "--days", "30", "--end", "2026-06-01", "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    truth = json.loads((tmp_path / "truth.json").read_text())
    assert len(lines) == sum(person["events"] for person in truth["persons"]) > 0
    assert example_commands(tmp_path / "truth.json")[0].startswith("tailor profile --email ")
    # the long work (half a minute for 1,000 people) shows its progress
    assert "generating people" in result.output and "5/5" in result.output
    assert "writing events" in result.output
    assert f"{len(lines)}/{len(lines)}" in result.output


def test_people_are_linkable_only_when_the_identifiers_on_their_events_connect() -> None:
    at = datetime(2026, 6, 1, tzinfo=UTC)

    def event(event_id: str, anonymous_id: str = "", email: str = "", loyalty_id: str = "") -> pb.Event:
        found = make_event("page_view", at, page_view=pb.PageView(url="/"))
        found.id = event_id
        found.identifiers.CopyFrom(pb.Identifiers(anonymous_id=anonymous_id, email=email, loyalty_id=loyalty_id))
        return found

    events = [
        # Connected through a chain: device, then device + email, then email + loyalty card.
        event("person-1-000001", anonymous_id="d-1"),
        event("person-1-000002", anonymous_id="d-1", email="one@example.com"),
        event("person-1-000003", email="one@example.com", loyalty_id="l-1"),
        # A second device that never logs in: nothing ties it to the person.
        event("person-2-000001", anonymous_id="d-2", email="two@example.com"),
        event("person-2-000002", anonymous_id="d-3"),
    ]
    assert person_of("person-2-000002") == "person-2"
    assert linkable_people(events) == {"person-1"}
    assert linkable_people(events[:4]) == {"person-1", "person-2"}


def test_loyalty_balances_never_go_below_zero_and_the_truth_counts_the_orders_that_are_events() -> None:
    """Seed and size where random vouchers used to exceed the points earned (people 28 and 62) and a
    purchase just past the end was counted among the orders (person 46)."""
    config = DemoConfig(people=62, seed=20261125, days=365, end=datetime(2026, 6, 1, tzinfo=UTC))
    people = population(config)
    for person in people.people:
        events = person_events(person, config)
        balance = 0
        for event in events:
            if event.type == "loyalty_earned":
                balance += event.loyalty.points
            elif event.type == "loyalty_redeemed":
                balance -= event.loyalty.points
                assert balance >= 0, (person.person_id, event.id)
        assert person.orders == sum(event.type in PURCHASES for event in events), person.person_id


def test_a_session_begun_just_before_the_churn_ends_without_a_purchase() -> None:
    config = DemoConfig(people=1, seed=3, days=120, end=datetime(2026, 6, 1, tzinfo=UTC), sessions_per_week=3)
    person = make_person(random.Random(1), 1, config)
    person.churn_at = None
    events = person_events(person, config)
    sale = next(event for event in events if event.type == "pos_purchase")
    visit = next(event for event in reversed(events[: events.index(sale)]) if event.type == "store_visit")
    churn_at = visit.timestamp.ToDatetime(UTC) + timedelta(seconds=1)
    churned = dataclasses.replace(person, churn_at=churn_at)
    after = [event for event in person_events(churned, config) if event.type in PURCHASES]
    assert all(event.timestamp.ToDatetime(UTC) <= churn_at for event in after)
    assert churned.orders == len(after)


def test_bad_options_end_with_a_message_not_a_traceback(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command("demo-data")(demo_data)
    app.command("profile")(show_profile)
    runner = CliRunner()
    base = ["demo-data", "--people", "2", "--days", "7"]
    for options in (
        ["--end", "2026-13-01"],
        ["--end", "2999-01-01", "--send", "127.0.0.1:1"],
        ["--churn-share", "1.5"],
        ["--people", "-3"],
        ["--days", "10000"],
        ["--days", "100000000"],
        ["--end", "1999-06-01"],
    ):
        result = runner.invoke(app, [*base, *options, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2, (options, result.output, result.exception)
    blocked = tmp_path / "file"
    blocked.write_text("")
    result = runner.invoke(app, [*base, "--end", "2026-06-01", "--out", str(blocked / "demo")])
    assert result.exit_code == 1 and not isinstance(result.exception, OSError), result.output


class FlakyProfile(profile_pb2_grpc.ProfileServiceServicer):
    """Fails the first delivery of every other batch as a restarting worker would; keeps what it accepts."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.failed: set[str] = set()
        self.received: list[str] = []
        self.aborted = 0

    def IngestEvents(self, request: pb.IngestEventsRequest, context: grpc.ServicerContext) -> pb.IngestEventsResponse:
        first = request.events[0].id
        with self.lock:
            fail = int(first.rsplit("-", 1)[1]) % 2 == 0 and first not in self.failed
            self.failed.add(first)
            self.aborted += fail
            if not fail:
                self.received += [event.id for event in request.events]
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "worker restarting")
        return pb.IngestEventsResponse(accepted=len(request.events))


def test_streaming_sends_a_batch_again_after_a_transient_failure_and_loses_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(demo_cli, "RETRY_PAUSES_S", (0.0, 0.0, 0.0), raising=False)
    monkeypatch.setattr(demo_cli, "BATCH", 50)
    events = list(population(CONFIG).events())[:420]
    servicer = FlakyProfile()  # type: ignore[abstract]  # only IngestEvents is called
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    profile_pb2_grpc.add_ProfileServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        counts = demo_cli.send(f"127.0.0.1:{port}", events)
    finally:
        server.stop(None)
    assert servicer.aborted > 0 and counts["accepted"] == len(events)
    assert sorted(servicer.received) == sorted(event.id for event in events)  # each once: none lost
