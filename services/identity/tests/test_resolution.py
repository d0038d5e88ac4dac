"""The deterministic planner: priorities, limits, the device rule, provisional customers."""

from __future__ import annotations

import itertools
from collections import Counter

from tailor_identity.domain.model import Key, Record
from tailor_identity.domain.resolution import Moved, PlannedMerge, Planner, final_owners, merge_snapshots


def key(id_type: str, value: str) -> Key:
    return Key(id_type, value, "", f"{id_type}:{value}".encode())


def planner(owners: dict[Key, str] | None = None, counts: dict[str, Counter[str]] | None = None) -> Planner:
    ids = (f"new-{i}" for i in itertools.count())
    return Planner({k.blind_index: c for k, c in (owners or {}).items()}, counts or {}, lambda: next(ids))


def test_records_sharing_a_key_in_one_batch_get_one_new_customer() -> None:
    plan = planner()
    first = plan.resolve(Record([key("email", "a")]))
    second = plan.resolve(Record([key("email", "a"), key("phone", "1")]))
    assert plan.final(first) == plan.final(second) == ("new-0", True)
    assert plan.materialized() == ["new-0"]
    assert [(k.id_type, c) for k, c in plan.attached] == [("email", "new-0"), ("phone", "new-0")]


def test_highest_priority_key_decides_and_survives() -> None:
    plan = planner(
        {key("email", "a"): "E", key("loyalty_id", "1"): "L"}, {"E": Counter(email=1), "L": Counter(loyalty_id=1)}
    )
    outcome = plan.resolve(Record([key("email", "a"), key("loyalty_id", "1")]))
    assert (outcome.customer_id, outcome.matched_by, outcome.merged_ids) == ("L", "loyalty_id", ["E"])
    assert [(m.survivor_id, m.absorbed_id) for m in plan.merges] == [("L", "E")]


def test_a_merge_that_breaks_a_limit_is_a_conflict() -> None:
    plan = planner(
        {key("loyalty_id", "1"): "A", key("loyalty_id", "2"): "B"},
        {"A": Counter(loyalty_id=1), "B": Counter(loyalty_id=1)},
    )
    outcome = plan.resolve(Record([key("loyalty_id", "1"), key("loyalty_id", "2")]))
    assert not plan.merges and outcome.conflicts[0].other_customer_id == "B"
    assert "at most 1 loyalty_id" in outcome.conflicts[0].reason


def test_new_keys_beyond_the_limit_are_not_attached() -> None:
    plan = planner()
    outcome = plan.resolve(Record([key("email", str(i)) for i in range(5)]))
    assert len(plan.attached) == 3 and len(outcome.conflicts) == 2


def test_device_joins_anonymous_but_not_a_second_known_customer() -> None:
    owners = {key("device_id", "d"): "ANON", key("email", "a"): "KNOWN"}
    plan = planner(owners, {"ANON": Counter(device_id=1), "KNOWN": Counter(email=1)})
    outcome = plan.resolve(Record([key("device_id", "d"), key("email", "a")]))
    assert outcome.merged_ids == ["ANON"]
    owners = {key("device_id", "d"): "K1", key("email", "b"): "K2"}
    plan = planner(owners, {"K1": Counter(device_id=1, email=1), "K2": Counter(email=1)})
    outcome = plan.resolve(Record([key("device_id", "d"), key("email", "b")]))
    assert outcome.customer_id == "K2" and not outcome.merged_ids
    assert outcome.conflicts[0].reason == "device_id may join at most one known customer"


def test_link_pulls_other_customers_in() -> None:
    plan = planner({key("device_id", "d"): "ANON"}, {"ANON": Counter(device_id=1), "ME": Counter(email=1)})
    outcome = plan.link("ME", [key("device_id", "d"), key("phone", "1")])
    assert outcome.merged_ids == ["ANON"] and [c for _, c in plan.attached] == ["ME"]


def test_chained_merges_end_with_the_last_survivor_and_each_logs_what_its_customer_held_then() -> None:
    merges = [
        PlannedMerge("b", "a", "shared email"),
        PlannedMerge("c", "b", "shared email"),
        PlannedMerge("e", "d", ""),
    ]
    assert final_owners(merges) == {"a": "c", "b": "c", "d": "e"}
    held: dict[str, Moved] = {
        "a": {"identifiers": [1], "persons": [10]},
        "b": {"identifiers": [3, 2], "persons": []},
        "d": {"identifiers": [], "persons": []},
    }
    assert merge_snapshots(merges, held) == [
        {"a": {"identifiers": [1], "persons": [10]}},
        {"b": {"identifiers": [1, 2, 3], "persons": [10]}},
        {"d": {"identifiers": [], "persons": []}},
    ]
