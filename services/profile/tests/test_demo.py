"""The demo population: deterministic, consistent with its ground truth, and valid input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from tailor.profile.v1 import profile_pb2 as pb
from tailor_platform.validation import Validator
from tailor_profile.cli import show_profile
from tailor_profile.demo.cli import demo_data, example_commands
from tailor_profile.demo.generator import PURCHASES, DemoConfig, population
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
