"""`tailor identity ...` against the identity service as its own process: an operator works the
review queue, looks at the graph, reverses the merge; bad input and failed calls read as one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from tailor.identity.v1 import identity_pb2 as pb
from tailor.identity.v1 import identity_pb2_grpc
from tailor_cli.launcher import Platform
from tailor_identity import cli
from typer.testing import CliRunner, Result

ANN = pb.PersonAttributes(given_name="Ann", surname="Lee", date_of_birth="1980-01-02", postcode="2000")


@pytest.fixture(scope="module")
def platform(start_platform: Callable[..., Platform]) -> Platform:
    # Every compared pair goes to review: the commands, not the model, are under test.
    review_everything = {"TAILOR_IDENTITY_AUTO_MERGE_PROBABILITY": "1.0", "TAILOR_IDENTITY_REVIEW_PROBABILITY": "1e-12"}
    return start_platform(["identity"], extra_env=review_everything)


@pytest.fixture(scope="module")
def stub(platform: Platform) -> Iterator[identity_pb2_grpc.IdentityServiceStub]:
    with grpc.insecure_channel(platform.address("identity")) as channel:
        yield identity_pb2_grpc.IdentityServiceStub(channel)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide enough that customer ids are never folded across lines in the tables."""
    monkeypatch.setattr(cli, "console", Console(width=400))


def run(platform: Platform, *args: str) -> Result:
    return CliRunner().invoke(cli.app, [*args, "--address", platform.address("identity")])


def resolve(stub: identity_pb2_grpc.IdentityServiceStub, email: str) -> str:
    request = pb.ResolveRequest(identifiers=[pb.Identifier(type="email", value=email)], person=ANN)
    response: pb.ResolveResponse = stub.Resolve(request, timeout=10)
    return response.customer_id


def test_an_operator_reviews_a_candidate_reads_the_graph_and_reverses_the_merge(
    platform: Platform, stub: identity_pb2_grpc.IdentityServiceStub
) -> None:
    first, second = resolve(stub, "ann@example.com"), resolve(stub, "lee@example.com")
    [candidate] = stub.FindCandidates(pb.FindCandidatesRequest(customer_id=second), timeout=10).candidates

    queue = run(platform, "candidates")
    assert queue.exit_code == 0, queue.output
    assert f" {candidate.candidate_id} " in queue.output and second in queue.output and "surname exact" in queue.output

    accepted = run(platform, "review", str(candidate.candidate_id), "--accept", "--reason", "same person")
    assert accepted.exit_code == 0, accepted.output
    merge_id = accepted.output.split("merge ")[1].split(",")[0]
    assert f"candidate {candidate.candidate_id} accepted" in accepted.output and f"survivor {first}" in accepted.output
    assert "nothing to review" in run(platform, "candidates", first).output

    shown = run(platform, "graph", "--email", "lee@example.com")
    assert shown.exit_code == 0, shown.output
    assert f"customer {first} · active" in shown.output
    assert "ann@example.com" in shown.output and "lee@example.com" in shown.output
    assert merge_id in shown.output and "same person" in shown.output

    reversed_ = run(platform, "unmerge", first, "--merge-id", merge_id, "--reason", "not the same after all")
    assert reversed_.exit_code == 0, reversed_.output
    assert f"active again {second}" in reversed_.output
    assert f"customer {second} · active" in run(platform, "graph", "--id", "email:lee@example.com").output


def test_an_operator_splits_identifiers_off_into_a_new_customer(
    platform: Platform, stub: identity_pb2_grpc.IdentityServiceStub
) -> None:
    customer = resolve(stub, "pat@example.com")
    phone = pb.Identifier(type="phone", value="+14155550199")
    stub.Link(pb.LinkRequest(customer_id=customer, identifiers=[phone], evidence="call center"), timeout=10)

    split = run(platform, "unmerge", customer, "--id", "phone:+14155550199", "--reason", "a shared phone")
    assert split.exit_code == 0, split.output
    new_customer = split.output.rsplit("active again ", 1)[1].strip()
    assert new_customer and new_customer != customer
    assert f"customer {new_customer} · active" in run(platform, "graph", "--id", "phone:+1 415 555 0199").output


def test_failed_calls_and_bad_input_read_as_one_line_not_a_traceback(
    platform: Platform, stub: identity_pb2_grpc.IdentityServiceStub
) -> None:
    unknown = run(platform, "graph", "--email", "nobody@example.com")
    assert (unknown.exit_code, unknown.output.strip()) == (1, "NOT_FOUND: no customer has this identifier")

    customer = resolve(stub, "solo@example.com")
    itself = run(platform, "merge", customer, customer, "--reason", "oops")
    assert itself.exit_code == 1
    assert "INVALID_ARGUMENT" in itself.output and "absorbed_ids[0]: must differ from survivor_id" in itself.output

    assert run(platform, "graph", "--id", "no-colon").exit_code == 2  # usage error, before any call
    assert run(platform, "merge", customer, "other").exit_code == 2  # --reason is required


def test_graph_and_queue_views_show_namespaces_conflicts_and_refused_links() -> None:
    at = Timestamp(seconds=1_790_000_000)
    found = pb.GetGraphResponse(
        customer_id="c-1",
        status="active",
        person_records=2,
        links=[
            pb.IdentifierLink(
                identifier=pb.Identifier(type="external", namespace="crm", value="C-17"),
                source="link",
                evidence="registration",
                linked_at=at,
            )
        ],
        conflicts=[pb.Conflict(customer_id="c-1", identifier_type="loyalty_id", reason="limit 1", created_at=at)],
    )
    console = Console(record=True, width=200)
    console.print(cli.graph_view(found))
    console.print(
        cli.candidates_table(
            [pb.Candidate(customer_id="c-1", other_customer_id="c-2", status="conflict", reason="a second loyalty id")]
        )
    )
    text = console.export_text()
    assert "customer c-1 · active · 2 person record(s)" in text
    assert "crm:C-17" in text and "registration" in text and "2026-09-21 14:13:20 UTC" in text
    assert "conflicts (links a rule refused)" in text and "limit 1" in text
    assert "merges" not in text  # no history, no empty table
    assert "a second loyalty id" in text and "nothing to review" not in text
