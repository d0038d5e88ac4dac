"""The consent service as a real process (started by the launcher), called over real gRPC, with a
real PostgreSQL and NATS JetStream behind it."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import nats
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tailor.common.v1.common_pb2 import PageRequest
from tailor.consent.v1 import consent_pb2 as pb
from tailor.consent.v1 import consent_pb2_grpc
from tailor.events.v1.consent_pb2 import ConsentChanged
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.identity_pb2 import IdentityMerged, IdentityUnmerged
from tailor_cli.launcher import Platform, health_status
from tailor_platform.bus.envelope import new_envelope, unpack
from tailor_platform.db import driver_url
from tailor_platform.errors import field_violations


@pytest.fixture(scope="module")
def platform(start_platform: Callable[..., Platform]) -> Platform:
    return start_platform(["consent"])


@pytest.fixture(scope="module")
def stub(platform: Platform) -> Iterator[consent_pb2_grpc.ConsentServiceStub]:
    with grpc.insecure_channel(platform.address("consent")) as channel:
        yield consent_pb2_grpc.ConsentServiceStub(channel)


def customer() -> str:
    return f"cust-{uuid.uuid4().hex[:12]}"


def set_request(customer_id: str, purpose: str, channel: str, granted: bool, **fields: str) -> pb.SetConsentRequest:
    values = {"source": "web:preference-center", "policy_version": "2026-01", "request_id": uuid.uuid4().hex}
    values.update(fields)
    return pb.SetConsentRequest(customer_id=customer_id, purpose=purpose, channel=channel, granted=granted, **values)


def first_two_history_pages(
    stub: consent_pb2_grpc.ConsentServiceStub, customer_id: str, page_size: int
) -> tuple[pb.ConsentHistoryResponse, pb.ConsentHistoryResponse]:
    """The first page of a customer's history and the page its token leads to."""
    first = stub.ConsentHistory(
        pb.ConsentHistoryRequest(customer_id=customer_id, page=PageRequest(page_size=page_size))
    )
    page = PageRequest(page_size=page_size, page_token=first.page.next_page_token)
    return first, stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=customer_id, page=page))


def allowed(stub: consent_pb2_grpc.ConsentServiceStub, customer_id: str, purpose: str, channel: str = "") -> bool:
    response = stub.CheckConsent(pb.CheckConsentRequest(customer_id=customer_id, purpose=purpose, channel=channel))
    return bool(response.allowed)


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_default_deny_then_grant_then_withdrawal_takes_effect_at_once(
    stub: consent_pb2_grpc.ConsentServiceStub,
) -> None:
    who = customer()
    response = stub.CheckConsent(pb.CheckConsentRequest(customer_id=who, purpose="marketing", channel="email"))
    assert (response.allowed, response.reason) == (False, "no_consent_recorded")

    stub.SetConsent(set_request(who, "marketing", "email", True))
    assert allowed(stub, who, "marketing", "email")
    assert not allowed(stub, who, "marketing", "sms")

    stub.SetConsent(set_request(who, "marketing", "", False))  # withdraw marketing on every channel
    response = stub.CheckConsent(pb.CheckConsentRequest(customer_id=who, purpose="marketing", channel="email"))
    assert (response.allowed, response.reason) == (False, "withdrawn")
    assert response.decided_by.channel == ""


def test_set_consent_is_idempotent_by_request_id(stub: consent_pb2_grpc.ConsentServiceStub) -> None:
    who = customer()
    request = set_request(who, "analytics", "web", True)
    first = stub.SetConsent(request)
    again = stub.SetConsent(request)
    assert first.applied and not again.applied
    assert again.consent == first.consent
    history = stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=who))
    assert len(history.entries) == 1

    reused = set_request(who, "analytics", "web", False, request_id=request.request_id)
    with pytest.raises(grpc.RpcError) as error:
        stub.SetConsent(reused)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert allowed(stub, who, "analytics", "web")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"customer_id": ""}, "customer_id"),
        ({"customer_id": "x" * 129}, "customer_id"),
        ({"customer_id": "has space"}, "customer_id"),
        ({"purpose": "telepathy"}, "purpose"),
        ({"channel": "carrier_pigeon"}, "channel"),
        ({"request_id": ""}, "request_id"),
        ({"source": ""}, "source"),
        ({"legal_basis": "because"}, "legal_basis"),
    ],
)
def test_bad_set_consent_is_invalid_argument_naming_the_field(
    stub: consent_pb2_grpc.ConsentServiceStub, change: dict[str, str], field: str
) -> None:
    request = set_request(customer(), "marketing", "email", True)
    for name, value in change.items():
        setattr(request, name, value)
    with pytest.raises(grpc.RpcError) as error:
        stub.SetConsent(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in field_violations(error.value)] == [field]


def test_bad_check_names_every_offending_field(stub: consent_pb2_grpc.ConsentServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.CheckConsent(pb.CheckConsentRequest(customer_id="", purpose="nope", channel="fax"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert sorted(v.field for v in field_violations(error.value)) == ["channel", "customer_id", "purpose"]


def test_history_is_paged_oldest_first(stub: consent_pb2_grpc.ConsentServiceStub) -> None:
    who = customer()
    for number in range(5):
        stub.SetConsent(set_request(who, "profiling", "", number % 2 == 0))
    first, second = first_two_history_pages(stub, who, 3)
    entries = [*first.entries, *second.entries]
    assert [e.granted for e in entries] == [True, False, True, False, True]
    assert [e.cause for e in entries] == ["set"] * 5
    assert second.page.next_page_token == ""
    assert all(a.sequence < b.sequence for a, b in itertools.pairwise(entries))


def test_the_database_refuses_to_rewrite_the_audit_log(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    who = customer()
    stub.SetConsent(set_request(who, "marketing", "sms", True))

    async def tamper() -> list[str]:
        url = driver_url(platform.service_database_url("consent"))
        connection = await asyncpg.connect(url)
        refused = []
        try:
            for statement in (
                "UPDATE consent_audit SET granted = false WHERE customer_id = $1",
                "DELETE FROM consent_audit WHERE customer_id = $1",
            ):
                try:
                    await connection.execute(statement, who)
                except asyncpg.InsufficientPrivilegeError:
                    refused.append(statement.split()[0])
            try:
                await connection.execute("TRUNCATE consent_audit")
            except asyncpg.InsufficientPrivilegeError:
                refused.append("TRUNCATE")
        finally:
            await connection.close()
        return refused

    assert asyncio.run(tamper()) == ["UPDATE", "DELETE", "TRUNCATE"]
    [entry] = stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=who)).entries
    assert entry.granted


def import_item(request: pb.SetConsentRequest, recorded_at: datetime | None = None) -> pb.ImportConsentsRequest:
    item = pb.ImportConsentsRequest(record=request)
    if recorded_at is not None:
        stamp = Timestamp()
        stamp.FromDatetime(recorded_at)
        item.recorded_at.CopyFrom(stamp)
    return item


def test_bulk_import_applies_each_record_once_and_never_overrides_newer(
    stub: consent_pb2_grpc.ConsentServiceStub,
) -> None:
    now = datetime.now(UTC)
    newer_customer = customer()
    stub.SetConsent(set_request(newer_customer, "marketing", "email", False))  # stored now
    imported_customers = [customer() for _ in range(1200)]
    items = [
        import_item(set_request(who, "marketing", "email", True, request_id=f"legacy-{who}"), now - timedelta(days=30))
        for who in imported_customers
    ]
    items.append(items[0])  # the same legacy record twice
    items.append(import_item(set_request(newer_customer, "marketing", "email", True), now - timedelta(days=1)))
    items.append(import_item(set_request("", "marketing", "email", True)))
    items.append(import_item(set_request(customer(), "nonsense", "email", True)))

    summary = stub.ImportConsents(iter(items))

    assert summary.received == len(items)
    assert summary.imported == 1200
    assert summary.skipped == 2  # the repeated record, and the one older than what is stored
    assert [(e.index, e.field) for e in summary.errors] == [
        (len(items) - 2, "record.customer_id"),
        (len(items) - 1, "record.purpose"),
    ]
    assert allowed(stub, imported_customers[0], "marketing", "email")
    assert allowed(stub, imported_customers[-1], "marketing", "email")
    assert not allowed(stub, newer_customer, "marketing", "email")
    again = stub.ImportConsents(iter(items[:10]))
    assert (again.imported, again.skipped) == (0, 10)


def test_list_purposes_shows_the_configured_registry(stub: consent_pb2_grpc.ConsentServiceStub) -> None:
    response = stub.ListPurposes(pb.ListPurposesRequest())
    assert "marketing" in response.purposes and "third_party_sharing" in response.purposes
    assert set(response.channels) == {"email", "sms", "push", "phone", "in_store", "web"}


async def publish(nats_url: str, subject: str, payload: bytes, msg_id: str) -> None:
    connection = await nats.connect(nats_url)
    try:
        await connection.jetstream().publish(subject, payload, headers={"Nats-Msg-Id": msg_id})
    finally:
        await connection.close()


def merged_envelope(
    survivor: str, absorbed: list[str], merge_id: str = "", merged_at: datetime | None = None
) -> Envelope:
    event = IdentityMerged(
        survivor_id=survivor, absorbed_ids=absorbed, evidence="shared email", merge_id=merge_id or uuid.uuid4().hex
    )
    if merged_at is not None:
        event.merged_at.FromDatetime(merged_at)
    return new_envelope("identity.merged", "identity", event, customer_id=survivor)


def unmerged_envelope(customer_id: str, restored: list[str], merge_id: str) -> Envelope:
    event = IdentityUnmerged(
        customer_id=customer_id, restored_ids=restored, merge_id=merge_id, unmerge_id=uuid.uuid4().hex
    )
    return new_envelope("identity.unmerged", "identity", event, customer_id=customer_id)


def deliver(platform: Platform, envelope: Envelope, subject: str, times: int = 1) -> None:
    """Publish as identity's outbox relay does; more than once to act out a redelivery."""
    assert platform.nats_url is not None
    for attempt in range(times):
        asyncio.run(publish(platform.nats_url, subject, envelope.SerializeToString(), f"{envelope.id}-{attempt}"))


def reason(stub: consent_pb2_grpc.ConsentServiceStub, customer_id: str, purpose: str, channel: str = "") -> str:
    request = pb.CheckConsentRequest(customer_id=customer_id, purpose=purpose, channel=channel)
    return str(stub.CheckConsent(request).reason)


def entries(stub: consent_pb2_grpc.ConsentServiceStub, customer_id: str, cause: str) -> list[pb.AuditEntry]:
    history = stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=customer_id))
    return [entry for entry in history.entries if entry.cause == cause]


def test_identity_merged_folds_consents_most_restrictively_once(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(survivor, "marketing", "email", True))
    stub.SetConsent(set_request(survivor, "analytics", "", True))
    stub.SetConsent(set_request(absorbed, "marketing", "email", False))  # a denial anywhere wins
    stub.SetConsent(set_request(absorbed, "personalization", "web", True))
    assert allowed(stub, survivor, "marketing", "email")  # now cached as allowed

    envelope = merged_envelope(survivor, [absorbed])
    assert platform.nats_url is not None
    # A malformed message first: it must be dead-lettered without stopping the consumer.
    asyncio.run(publish(platform.nats_url, "tailor.identity.merged", b"garbage", uuid.uuid4().hex))
    for attempt in range(2):  # delivered twice: the effect must happen once
        asyncio.run(
            publish(
                platform.nats_url, "tailor.identity.merged", envelope.SerializeToString(), f"{envelope.id}-{attempt}"
            )
        )

    wait_until(lambda: not allowed(stub, survivor, "marketing", "email"))
    assert allowed(stub, survivor, "personalization", "web")
    assert allowed(stub, survivor, "analytics")
    merge_entries = [
        e for e in stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=survivor)).entries if e.cause == "merge"
    ]
    time.sleep(0.5)  # give a wrongful second application the chance to show up
    assert len(merge_entries) == 2
    assert (
        len(
            [
                e
                for e in stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=survivor)).entries
                if e.cause == "merge"
            ]
        )
        == 2
    )


def test_identity_unmerged_gives_each_customer_back_its_own_consents(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(survivor, "marketing", "email", True))
    stub.SetConsent(set_request(absorbed, "marketing", "email", False))  # wins in the merge
    stub.SetConsent(set_request(absorbed, "personalization", "web", True))  # the survivor had none
    merge = merged_envelope(survivor, [absorbed])
    deliver(platform, merge, "tailor.identity.merged")
    wait_until(lambda: allowed(stub, survivor, "personalization", "web"))
    assert not allowed(stub, survivor, "marketing", "email")
    # While they are one customer, a withdrawal and a grant that may come from either person.
    stub.SetConsent(set_request(survivor, "marketing", "sms", False))
    stub.SetConsent(set_request(survivor, "analytics", "", True))
    # The same, imported while they are one though dated before the merge: the id stood for both.
    dated_before = datetime.now(UTC) - timedelta(days=3)
    summary = stub.ImportConsents(
        iter(
            [
                import_item(set_request(survivor, "profiling", "", True), dated_before),
                import_item(set_request(survivor, "marketing", "push", False), dated_before),
            ]
        )
    )
    assert summary.imported == 2

    merge_id = unpack(merge, IdentityMerged).merge_id
    deliver(platform, unmerged_envelope(survivor, [absorbed], merge_id), "tailor.identity.unmerged", times=2)

    wait_until(lambda: allowed(stub, survivor, "marketing", "email"))  # its own grant is back
    assert reason(stub, survivor, "personalization", "web") == "no_consent_recorded"
    assert allowed(stub, absorbed, "personalization", "web")
    assert reason(stub, absorbed, "marketing", "email") == "withdrawn"
    assert reason(stub, absorbed, "marketing", "sms") == "withdrawn"  # the unattributable withdrawal
    assert reason(stub, survivor, "marketing", "sms") == "withdrawn"
    assert reason(stub, survivor, "analytics") == "no_consent_recorded"  # the unattributable grant: no one's
    assert reason(stub, absorbed, "analytics") == "no_consent_recorded"
    assert reason(stub, survivor, "profiling") == "no_consent_recorded"
    assert reason(stub, absorbed, "profiling") == "no_consent_recorded"
    assert reason(stub, absorbed, "marketing", "push") == "withdrawn"
    assert reason(stub, survivor, "marketing", "push") == "withdrawn"
    time.sleep(0.5)  # give a wrongful second application the chance to show up
    reverted = entries(stub, survivor, "unmerge")
    assert sorted((e.purpose, e.channel, e.granted, e.removed) for e in reverted) == [
        ("analytics", "", False, True),
        ("marketing", "email", True, False),
        ("personalization", "web", False, True),
        ("profiling", "", False, True),
    ]
    assert sorted((e.purpose, e.channel) for e in entries(stub, absorbed, "unmerge")) == [
        ("marketing", "push"),
        ("marketing", "sms"),
    ]
    own = stub.GetConsents(pb.GetConsentsRequest(customer_id=survivor)).consents
    assert sorted((c.purpose, c.channel) for c in own) == [
        ("marketing", "email"),
        ("marketing", "push"),
        ("marketing", "sms"),
    ]


def test_a_merged_away_id_is_answered_and_changed_through_its_survivor(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(absorbed, "marketing", "email", True))
    stub.SetConsent(set_request(survivor, "analytics", "", True))
    assert reason(stub, absorbed, "analytics") == "no_consent_recorded"  # cached: its own records
    merge = merged_envelope(survivor, [absorbed])
    deliver(platform, merge, "tailor.identity.merged")
    wait_until(lambda: allowed(stub, absorbed, "analytics"))  # now decided by the survivor's

    stub.SetConsent(set_request(survivor, "marketing", "email", False))  # through the survivor's id
    assert reason(stub, absorbed, "marketing", "email") == "withdrawn"
    stub.SetConsent(set_request(absorbed, "profiling", "", False))  # through the absorbed id
    assert reason(stub, survivor, "profiling") == "withdrawn"
    consents = stub.GetConsents(pb.GetConsentsRequest(customer_id=absorbed)).consents
    assert {c.customer_id for c in consents} == {survivor}
    assert [e.purpose for e in entries(stub, absorbed, "set")] == ["marketing"]  # its own log stays

    merge_id = unpack(merge, IdentityMerged).merge_id
    deliver(platform, unmerged_envelope(survivor, [absorbed], merge_id), "tailor.identity.unmerged")

    wait_until(lambda: reason(stub, absorbed, "analytics") == "no_consent_recorded")  # its own again
    assert reason(stub, absorbed, "marketing", "email") == "withdrawn"  # recorded while merged: both
    assert reason(stub, absorbed, "profiling") == "withdrawn"
    assert allowed(stub, survivor, "analytics")


def test_a_merge_reversed_before_it_arrived_is_never_applied(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(absorbed, "marketing", "email", True))
    merge = merged_envelope(survivor, [absorbed])
    deliver(
        platform,
        unmerged_envelope(survivor, [absorbed], unpack(merge, IdentityMerged).merge_id),
        "tailor.identity.unmerged",
    )
    time.sleep(0.5)  # the unmerge consumer records the reversal
    deliver(platform, merge, "tailor.identity.merged")
    later, witness = customer(), customer()
    stub.SetConsent(set_request(witness, "analytics", "", True))
    deliver(platform, merged_envelope(later, [witness]), "tailor.identity.merged")
    wait_until(lambda: allowed(stub, later, "analytics"))  # merges are consumed in order: the late one is done

    assert reason(stub, survivor, "marketing", "email") == "no_consent_recorded"
    assert entries(stub, survivor, "merge") == []


def test_while_merged_begins_when_identity_merged_not_when_consent_caught_up(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    """A grant given through the survivor's id after identity merged the two, but before the
    merge reached consent, may be either person's: on reversal no one keeps it."""
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(survivor, "marketing", "email", True))  # before the merge: its own
    time.sleep(0.01)
    merged_at = datetime.now(UTC)
    time.sleep(0.01)
    stub.SetConsent(set_request(survivor, "analytics", "", True))  # after it, the bus not caught up
    merge = merged_envelope(survivor, [absorbed], merged_at=merged_at)
    deliver(platform, merge, "tailor.identity.merged")
    wait_until(lambda: allowed(stub, absorbed, "analytics"))  # applied: answered through the survivor

    merge_id = unpack(merge, IdentityMerged).merge_id
    deliver(platform, unmerged_envelope(survivor, [absorbed], merge_id), "tailor.identity.unmerged")

    wait_until(lambda: reason(stub, survivor, "analytics") == "no_consent_recorded")
    assert allowed(stub, survivor, "marketing", "email")
    assert reason(stub, absorbed, "analytics") == "no_consent_recorded"


def test_a_customer_split_off_takes_the_withdrawals_but_no_grant(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    split_from, split_off = customer(), customer()
    stub.SetConsent(set_request(split_from, "marketing", "", False))
    stub.SetConsent(set_request(split_from, "analytics", "", True))

    deliver(platform, unmerged_envelope(split_from, [split_off], merge_id=""), "tailor.identity.unmerged")

    wait_until(lambda: reason(stub, split_off, "marketing", "email") == "withdrawn")
    assert reason(stub, split_off, "analytics") == "no_consent_recorded"
    assert allowed(stub, split_from, "analytics")


def test_every_change_is_published_as_consent_changed(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    who = customer()
    stub.SetConsent(set_request(who, "third_party_sharing", "", False, legal_basis="consent"))

    async def find() -> ConsentChanged:
        assert platform.nats_url is not None
        connection = await nats.connect(platform.nats_url)
        try:
            subscription = await connection.jetstream().pull_subscribe("tailor.consent.changed", durable=None)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    messages = await subscription.fetch(100, timeout=0.5)
                except TimeoutError:
                    continue
                for message in messages:
                    await message.ack()
                    envelope = Envelope.FromString(message.data)
                    if envelope.customer_id == who:
                        assert message.headers and message.headers["Nats-Msg-Id"] == envelope.id
                        return unpack(envelope, ConsentChanged)
            raise AssertionError("no consent.changed for the customer")
        finally:
            await connection.close()

    event = asyncio.run(find())
    assert (event.purpose, event.granted, event.cause) == ("third_party_sharing", False, "set")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"source": "web\x00form"}, "source"),
        ({"policy_version": "2026\x00"}, "policy_version"),
        ({"policy_version": "v" * 65}, "policy_version"),
        ({"source": "s" * 201}, "source"),
    ],
)
def test_text_the_database_cannot_hold_is_invalid_argument_naming_the_field(
    stub: consent_pb2_grpc.ConsentServiceStub, change: dict[str, str], field: str
) -> None:
    request = set_request(customer(), "marketing", "email", True, **change)
    with pytest.raises(grpc.RpcError) as error:
        stub.SetConsent(request)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in field_violations(error.value)] == [field]

    who = customer()
    good = import_item(set_request(who, "marketing", "email", True))
    summary = stub.ImportConsents(iter([import_item(request), good]))  # one bad record, skipped alone
    assert (summary.received, summary.imported) == (2, 1)
    assert [(e.index, e.field) for e in summary.errors] == [(0, f"record.{field}")]
    assert allowed(stub, who, "marketing", "email")


@pytest.mark.parametrize(
    "stamp",
    [
        Timestamp(seconds=253402300800),  # after 9999-12-31
        Timestamp(seconds=-62135596801),  # before 0001-01-01
        Timestamp(seconds=0, nanos=-1),
        Timestamp(seconds=0, nanos=1_000_000_000),
        Timestamp(seconds=int(time.time()) + 3600),  # in the future
    ],
)
def test_an_import_recorded_at_that_is_no_usable_time_is_a_field_error_of_that_record(
    stub: consent_pb2_grpc.ConsentServiceStub, stamp: Timestamp
) -> None:
    bad, who = customer(), customer()
    item = pb.ImportConsentsRequest(record=set_request(bad, "marketing", "email", True), recorded_at=stamp)
    summary = stub.ImportConsents(iter([item, import_item(set_request(who, "marketing", "email", True))]))
    assert (summary.received, summary.imported) == (2, 1)
    assert [(e.index, e.field) for e in summary.errors] == [(0, "recorded_at")]
    assert reason(stub, bad, "marketing", "email") == "no_consent_recorded"
    assert allowed(stub, who, "marketing", "email")


def test_an_import_at_the_earliest_time_a_timestamp_holds_is_stored(
    stub: consent_pb2_grpc.ConsentServiceStub,
) -> None:
    who = customer()
    earliest = Timestamp(seconds=-62135596800)  # 0001-01-01
    item = pb.ImportConsentsRequest(record=set_request(who, "marketing", "email", True), recorded_at=earliest)
    assert stub.ImportConsents(iter([item])).imported == 1
    [entry] = stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=who)).entries
    assert entry.recorded_at == earliest
    assert allowed(stub, who, "marketing", "email")


def test_history_gives_no_page_token_after_an_exactly_full_last_page(
    stub: consent_pb2_grpc.ConsentServiceStub,
) -> None:
    who = customer()
    for number in range(4):
        stub.SetConsent(set_request(who, "profiling", "", number % 2 == 0))
    first, second = first_two_history_pages(stub, who, 2)
    assert (len(first.entries), len(second.entries)) == (2, 2)
    assert first.page.next_page_token and second.page.next_page_token == ""


@pytest.mark.parametrize("token", ["²", "9223372036854775808", "-1", "abc", "1\x00"])
def test_a_page_token_that_is_not_ours_is_invalid_argument(
    stub: consent_pb2_grpc.ConsentServiceStub, token: str
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=customer(), page=PageRequest(page_token=token)))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in field_violations(error.value)] == ["page.page_token"]


def test_a_withdrawal_and_a_grant_of_the_same_moment_leave_the_withdrawal_in_any_order(
    stub: consent_pb2_grpc.ConsentServiceStub,
) -> None:
    moment = datetime.now(UTC) - timedelta(days=2)
    apart, together = customer(), customer()
    # In two imports: the withdrawal first, then a grant of the same moment.
    stub.ImportConsents(iter([import_item(set_request(apart, "marketing", "email", False), moment)]))
    later = stub.ImportConsents(iter([import_item(set_request(apart, "marketing", "email", True), moment)]))
    assert (later.imported, later.skipped) == (0, 1)
    # In one import, in the same order.
    summary = stub.ImportConsents(
        iter(
            [
                import_item(set_request(together, "marketing", "email", False), moment),
                import_item(set_request(together, "marketing", "email", True), moment),
            ]
        )
    )
    assert (summary.imported, summary.skipped) == (1, 1)
    for who in (apart, together):
        assert reason(stub, who, "marketing", "email") == "withdrawn"
        assert len(stub.ConsentHistory(pb.ConsentHistoryRequest(customer_id=who)).entries) == 2  # both audited


def test_a_merge_never_lets_an_older_grant_outrank_a_later_withdrawal(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(absorbed, "marketing", "email", True))  # older grants
    stub.SetConsent(set_request(absorbed, "analytics", "", True))
    stub.SetConsent(set_request(survivor, "marketing", "", False))  # later: no marketing at all
    stub.SetConsent(set_request(survivor, "analytics", "web", False))  # later: no analytics on the web
    assert not allowed(stub, survivor, "marketing", "email")

    deliver(platform, merged_envelope(survivor, [absorbed]), "tailor.identity.merged")
    wait_until(lambda: reason(stub, absorbed, "marketing") == "withdrawn")  # answered through the survivor

    assert reason(stub, survivor, "marketing", "email") == "withdrawn"
    assert reason(stub, survivor, "analytics", "web") == "withdrawn"
    assert allowed(stub, survivor, "analytics", "email")  # the grant is taken over where nothing withdrew it
    assert allowed(stub, absorbed, "analytics", "sms")


def test_a_record_stamped_while_a_long_import_runs_is_not_in_the_future(
    stub: consent_pb2_grpc.ConsentServiceStub,
) -> None:
    first, second = customer(), customer()

    def items() -> Iterator[pb.ImportConsentsRequest]:
        yield import_item(set_request(first, "marketing", "email", True))
        time.sleep(0.5)  # the stream goes on; the next record is stamped by the caller's clock now
        yield import_item(set_request(second, "marketing", "email", True), datetime.now(UTC))

    summary = stub.ImportConsents(items())
    assert list(summary.errors) == []
    assert (summary.received, summary.imported) == (2, 2)
    assert allowed(stub, second, "marketing", "email")


def test_a_merge_naming_an_absorbed_customer_twice_is_applied_once(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    survivor, absorbed = customer(), customer()
    stub.SetConsent(set_request(survivor, "marketing", "email", True))
    stub.SetConsent(set_request(absorbed, "marketing", "email", False))

    deliver(platform, merged_envelope(survivor, [absorbed, absorbed]), "tailor.identity.merged")

    wait_until(lambda: reason(stub, survivor, "marketing", "email") == "withdrawn")
    assert [e.purpose for e in entries(stub, survivor, "merge")] == ["marketing"]
    assert stub.GetConsents(pb.GetConsentsRequest(customer_id=absorbed)).consents[0].customer_id == survivor


# Last: it restarts the service (on another port than the module's stub).
def test_health_follows_nats_and_data_survives_a_restart(
    platform: Platform, stub: consent_pb2_grpc.ConsentServiceStub
) -> None:
    who = customer()
    stub.SetConsent(set_request(who, "marketing", "push", True))
    assert platform.nats is not None
    platform.nats.stop()
    wait_until(lambda: health_status(platform.address("consent")) == "NOT_SERVING", timeout_s=15)
    platform.nats.start()
    wait_until(lambda: health_status(platform.address("consent")) == "SERVING", timeout_s=20)

    assert platform.stop_service("consent") == 0  # SIGTERM: a clean, graceful exit
    platform.wait_serving(platform.start_service("consent"))
    with grpc.insecure_channel(platform.address("consent")) as channel:
        restarted = consent_pb2_grpc.ConsentServiceStub(channel)
        assert allowed(restarted, who, "marketing", "push")
