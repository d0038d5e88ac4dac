"""Which customer each event belongs to once identity separated customers again."""

from __future__ import annotations

from tailor_profile.domain.unmerges import (
    IdentifierKey,
    StoredEventIds,
    alias_changes,
    attribute_changes,
    attribute_returns,
    event_moves,
    owner_now,
)

EMAIL_A = IdentifierKey("email", "a@example.com")
DEVICE_A = IdentifierKey("device_id", "device-a")
EMAIL_S = IdentifierKey("email", "s@example.com")
LOYALTY_T = IdentifierKey("loyalty_id", "L-1")
UNKNOWN = IdentifierKey("phone", "+15550000000")
OWNERS = {EMAIL_A: "a", DEVICE_A: "a", EMAIL_S: "s", LOYALTY_T: "t"}


def test_an_event_goes_to_who_owns_its_identifiers_now() -> None:
    assert owner_now("s", [EMAIL_A, DEVICE_A], OWNERS) == "a"
    assert owner_now("s", [EMAIL_S], OWNERS) == "s"


def test_the_evidence_that_joined_two_customers_stays_where_it_is() -> None:
    assert owner_now("s", [DEVICE_A, EMAIL_S], OWNERS) == "s"
    assert owner_now("a", [DEVICE_A, EMAIL_S], OWNERS) == "a"


def test_the_strongest_identifier_decides_between_other_owners() -> None:
    assert owner_now("s", [DEVICE_A, LOYALTY_T], OWNERS) == "t"  # loyalty id before device id
    assert owner_now("s", [EMAIL_A, LOYALTY_T], OWNERS) == "t"


def test_an_event_whose_identifiers_identity_does_not_know_stays() -> None:
    assert owner_now("s", [UNKNOWN], OWNERS) == "s"
    assert owner_now("s", [], OWNERS) == "s"
    assert owner_now("s", [UNKNOWN, EMAIL_A], OWNERS) == "a"


def test_only_the_events_that_move_are_listed() -> None:
    events = [
        StoredEventIds("e1", "s", [EMAIL_A]),
        StoredEventIds("e2", "s", [EMAIL_S]),
        StoredEventIds("e3", "a", [EMAIL_A]),
        StoredEventIds("e4", "a", [EMAIL_S, UNKNOWN]),
    ]
    assert event_moves(events, OWNERS) == {"e1": "a", "e4": "s"}


def test_aliases_follow_identity_and_customers_active_again_lose_theirs() -> None:
    point, drop = alias_changes({"a": "a", "x": "a", "y": "s"})
    assert point == {"x": "a", "y": "s"}
    assert drop == ["a"]


def test_attributes_go_back_to_the_customer_their_origin_is_now() -> None:
    origins = {"s": {"s", "a", "x"}, "a": {"a"}}
    active_of = {"s": "s", "a": "a", "x": "a"}  # x was merged into a before a was merged into s

    assert attribute_returns(origins, active_of) == {("s", "a"): "a", ("s", "x"): "a"}
    assert attribute_returns({"s": {"unknown"}}, {}) == {}


def test_attribute_changes_name_what_changed_and_what_is_gone() -> None:
    before = {"s": {"city": "Paris", "given_name": "Ana"}, "a": {}}
    after = {"s": {"city": "Lyon"}, "a": {"city": "Paris", "given_name": "Ana"}}

    assert attribute_changes(before, after) == {
        "a": {"attribute.city": "Paris", "attribute.given_name": "Ana"},
        "s": {"attribute.city": "Lyon", "attribute.given_name": ""},
    }
    assert attribute_changes(after, after) == {}
