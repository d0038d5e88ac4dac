"""Identity use cases against a real PostgreSQL: resolution, rules, concurrency, merge and unmerge,
encryption at rest, outbox events."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from sqlalchemy import text
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.identity_pb2 import IdentityMerged, IdentityResolved
from tailor.identity.v1 import identity_pb2 as pb
from tailor_identity.api import IdentityApi
from tailor_identity.domain.crypto import Keyring
from tailor_identity.domain.keys import KeyMaker
from tailor_identity.domain.model import Record
from tailor_identity.service import IdentityService
from tailor_platform.db import Database
from tailor_platform.errors import FailedPrecondition

from . import conftest
from .conftest import ANN, keyring

WORKERS = int(os.environ.get("IDENTITY_TEST_WORKERS", "12"))


def record(keys: KeyMaker, *ids: tuple[str, str], person: dict[str, str] | None = None) -> Record:
    found = [keys.key(t, v) for t, v in ids]
    return Record(found, keys.person(**person) if person else None)


async def events_of(db: Database) -> list[Envelope]:
    async with db.sessions() as session:
        rows = await session.execute(text("SELECT payload FROM outbox ORDER BY id"))
        return [Envelope.FromString(row.payload) for row in rows]


async def test_shared_keys_resolve_to_one_customer(identity: IdentityService) -> None:
    k = identity.keys
    [first] = await identity.resolve_batch([record(k, ("email", "Ann.Lee@Example.com"), ("device_id", "d-1"))])
    assert first.created and first.matched_by == "new"
    [again] = await identity.resolve_batch(
        [record(k, ("email", " ann.lee@example.com "), ("phone", "+1 415 555 0100"))]
    )
    assert again.customer_id == first.customer_id and not again.created and again.matched_by == "email"
    [by_phone] = await identity.resolve_batch([record(k, ("phone", "(415) 555-0100"))])
    assert by_phone.customer_id == first.customer_id and by_phone.matched_by == "phone"


async def test_one_resolved_event_names_every_customer_a_batch_created(identity: IdentityService) -> None:
    k = identity.keys
    results = await identity.resolve_batch(
        [
            record(k, ("email", "one@example.com")),
            record(k, ("email", "two@example.com")),
            record(k, ("email", "one@example.com")),
        ]
    )
    [event] = [e for e in await events_of(identity.db) if e.type == "identity.resolved"]
    payload = IdentityResolved()
    event.data.Unpack(payload)
    assert list(payload.customer_ids) == [results[0].customer_id, results[1].customer_id]
    assert event.customer_id == ""  # several customers: none is the envelope's
    [single] = await identity.resolve_batch([record(k, ("email", "three@example.com"))])
    last = [e for e in await events_of(identity.db) if e.type == "identity.resolved"][-1]
    assert last.customer_id == single.customer_id


async def test_batch_joins_records_and_merges_existing_customers(identity: IdentityService) -> None:
    k = identity.keys
    a, b = await identity.resolve_batch([record(k, ("email", "a@example.com")), record(k, ("loyalty_id", "L-1"))])
    assert a.customer_id != b.customer_id
    results = await identity.resolve_batch(
        [
            record(k, ("device_id", "dev-9"), ("email", "new@example.com")),
            record(k, ("email", "new@example.com"), ("email", "a@example.com")),
            record(k, ("email", "a@example.com"), ("loyalty_id", "L-1")),
        ]
    )
    # The loyalty customer has the highest-priority key: it survives and absorbs the email customer.
    assert {r.customer_id for r in results} == {b.customer_id}
    assert results[2].merged_ids == [a.customer_id]
    graph = await identity.graph(a.customer_id)
    assert graph.customer.status == "merged" and graph.customer.merged_into == b.customer_id
    merged = [e for e in await events_of(identity.db) if e.type == "identity.merged"]
    assert len(merged) == 1
    payload = IdentityMerged()
    merged[0].data.Unpack(payload)
    assert payload.survivor_id == b.customer_id and list(payload.absorbed_ids) == [a.customer_id]


async def test_limits_turn_a_link_into_a_conflict(identity: IdentityService) -> None:
    k = identity.keys
    [a] = await identity.resolve_batch([record(k, ("loyalty_id", "L-1"), ("email", "x@example.com"))])
    [b] = await identity.resolve_batch([record(k, ("loyalty_id", "L-2"))])
    [c] = await identity.resolve_batch([record(k, ("email", "x@example.com"), ("loyalty_id", "L-2"))])
    assert c.customer_id == b.customer_id  # loyalty decides; the email stays with its customer
    assert c.conflicts and "at most 1 loyalty_id" in c.conflicts[0].reason
    graph = await identity.graph(a.customer_id)
    assert graph.customer.status == "active"
    assert [row.reason for row in graph.conflicts] == [c.conflicts[0].reason]


async def test_the_conflicts_of_a_merged_customer_show_on_its_survivor_until_unmerged(
    identity: IdentityService,
) -> None:
    k = identity.keys
    [a] = await identity.resolve_batch([record(k, ("loyalty_id", "L-1"), ("email", "x@example.com"))])
    await identity.resolve_batch([record(k, ("loyalty_id", "L-2"))])
    [refused] = await identity.resolve_batch([record(k, ("email", "x@example.com"), ("loyalty_id", "L-2"))])
    [survivor] = await identity.resolve_batch([record(k, ("email", "y@example.com"))])
    merge_id = await identity.merge(survivor.customer_id, [a.customer_id], "same person")
    on_survivor = await identity.graph(survivor.customer_id)
    assert [row.reason for row in on_survivor.conflicts] == [refused.conflicts[0].reason]
    assert [row.reason for row in (await identity.graph(a.customer_id)).conflicts] == [refused.conflicts[0].reason]
    await identity.unmerge(survivor.customer_id, merge_id, "not the same person")
    assert (await identity.graph(survivor.customer_id)).conflicts == []
    assert len((await identity.graph(a.customer_id)).conflicts) == 1


async def test_device_id_joins_at_most_one_known_customer(identity: IdentityService) -> None:
    k = identity.keys
    [anonymous] = await identity.resolve_batch([record(k, ("device_id", "d-7"))])
    [known] = await identity.resolve_batch([record(k, ("device_id", "d-7"), ("email", "p@example.com"))])
    assert known.customer_id == anonymous.customer_id  # an anonymous device joins its first known customer
    [other] = await identity.resolve_batch([record(k, ("email", "q@example.com"))])
    [shared] = await identity.resolve_batch([record(k, ("device_id", "d-7"), ("email", "q@example.com"))])
    assert shared.customer_id == other.customer_id and not shared.merged_ids
    assert "device_id may join at most one known customer" in shared.conflicts[0].reason


async def test_concurrent_overlapping_resolves_never_split_a_key(identity: IdentityService) -> None:
    k = identity.keys
    people = 20

    async def resolve(worker: int) -> list[str]:
        batch = [
            record(
                k,
                ("email", f"p{(worker + i) % people}@example.com"),
                ("phone", f"+1415555{(worker * 7 + i) % people:04d}"),
            )
            for i in range(people)
        ]
        return [r.customer_id for r in await identity.resolve_batch(batch)]

    await asyncio.gather(*(resolve(worker) for worker in range(WORKERS)))
    async with identity.db.sessions() as session:
        duplicates = await session.scalar(
            text("SELECT count(*) FROM (SELECT blind_index FROM identifier GROUP BY 1 HAVING count(*) > 1) d")
        )
        owners = await session.execute(text("SELECT count(DISTINCT customer_id) FROM identifier"))
        active = await session.scalar(text("SELECT count(*) FROM customer WHERE status = 'active'"))
    assert duplicates == 0
    # Every key resolves to exactly one active customer, and one lookup per key agrees.
    distinct_owners = owners.scalar_one()
    assert distinct_owners == active
    for i in range(people):
        [r] = await identity.resolve_batch([record(k, ("email", f"p{i}@example.com"))])
        graph = await identity.graph(r.customer_id)
        assert graph.customer.status == "active"


async def test_unmerge_restores_exactly_the_state_before_the_merge(identity: IdentityService) -> None:
    k = identity.keys
    person = ANN
    [a] = await identity.resolve_batch([record(k, ("email", "a@example.com"), ("device_id", "d-a"), person=person)])
    [b] = await identity.resolve_batch([record(k, ("phone", "+14155550111"), ("loyalty_id", "L-b"))])

    async def state() -> list[tuple[object, ...]]:
        async with identity.db.sessions() as session:
            identifiers = await session.execute(text("SELECT id, customer_id FROM identifier ORDER BY id"))
            persons = await session.execute(text("SELECT id, customer_id FROM person ORDER BY id"))
            customers = await session.execute(text("SELECT id, status, merged_into FROM customer ORDER BY id"))
            return [tuple(r) for r in [*identifiers, *persons, *customers]]

    before = await state()
    merge_id = await identity.merge(b.customer_id, [a.customer_id], "same person, confirmed by phone")
    assert await state() != before
    [after_merge] = await identity.resolve_batch([record(k, ("email", "a@example.com"))])
    assert after_merge.customer_id == b.customer_id
    await identity.unmerge(b.customer_id, merge_id, "customer says otherwise")
    assert await state() == before
    graph = await identity.graph(b.customer_id)
    assert [(m.kind, m.reverted_by is not None) for m in graph.merges] == [("merge", True), ("unmerge", False)]
    with pytest.raises(FailedPrecondition):
        await identity.unmerge(b.customer_id, merge_id, "again")


async def test_split_moves_identifiers_to_a_new_customer(identity: IdentityService) -> None:
    k = identity.keys
    [a] = await identity.resolve_batch([record(k, ("email", "a@example.com"), ("device_id", "shared-tablet"))])
    _, [new_id] = await identity.split(a.customer_id, [k.key("device_id", "shared-tablet")], "shared device")
    [again] = await identity.resolve_batch([record(k, ("device_id", "shared-tablet"))])
    assert again.customer_id == new_id != a.customer_id


async def test_link_merges_and_records_evidence(identity: IdentityService) -> None:
    k = identity.keys
    [web] = await identity.resolve_batch([record(k, ("device_id", "cookie-1"))])
    [account] = await identity.resolve_batch([record(k, ("email", "login@example.com"))])
    result = await identity.link(
        account.customer_id, [k.key("device_id", "cookie-1"), k.key("external", "42", "shop")], "login"
    )
    assert result.merged_ids == [web.customer_id]
    graph = await identity.graph(account.customer_id)
    assert {(link.id_type, link.value, link.namespace) for link in graph.links} == {
        ("email", "login@example.com", ""),
        ("device_id", "cookie-1", ""),
        ("external", "42", "shop"),
    }
    assert {link.row.source for link in graph.links if link.id_type == "external"} == {"link"}


async def test_nothing_is_stored_in_plaintext(identity: IdentityService) -> None:
    k = identity.keys
    person = {
        "given_name": "Zebediah",
        "surname": "Quxworth",
        "date_of_birth": "19700101",
        "address": "9 Elm Road",
        "postcode": "9999",
        "city": "Springfield",
    }
    await identity.resolve_batch(
        [record(k, ("email", "secret.person@example.com"), ("phone", "+14155550199"), person=person)]
    )
    async with identity.db.sessions() as session:
        dump: list[str] = []
        for table in ("identifier", "person", "person_block", "customer", "outbox", "match_pattern"):
            rows = await session.execute(text(f"SELECT * FROM {table}"))
            dump.extend(repr(tuple(row)) for row in rows)
    blob = "\n".join(dump).lower()
    for secret in ("secret", "example.com", "4155550199", "zebediah", "quxworth", "elm", "springfield", "19700101"):
        assert secret not in blob


async def test_rekey_reencrypts_with_the_active_key(database: Database, identity: IdentityService) -> None:
    k = identity.keys
    [a] = await identity.resolve_batch(
        [record(k, ("email", "r@example.com"), person={"given_name": "Rita", "surname": "Ko"})]
    )
    rotated = IdentityService(database, identity.outbox, KeyMaker(keyring(active=2)))
    outcome = await rotated.rekey(limit=1)
    assert (outcome.rekeyed, outcome.remaining, outcome.active_key_id) == (1, 1, 2)
    outcome = await rotated.rekey(limit=100)
    assert (outcome.rekeyed, outcome.remaining) == (1, 0)
    graph = await rotated.graph(a.customer_id)
    assert [link.value for link in graph.links] == ["r@example.com"]
    [again] = await rotated.resolve_batch([record(k, ("email", "r@example.com"))])
    assert again.customer_id == a.customer_id


async def test_blind_index_key_rotation(database: Database, identity: IdentityService) -> None:
    rita = {"given_name": "Rita", "surname": "Ko", "date_of_birth": "1980-02-01", "postcode": "2000"}
    [a] = await identity.resolve_batch([record(identity.keys, ("email", "r@example.com"), person=rita)])
    new_index_key = bytes(range(3, 35))
    rotating = KeyMaker(Keyring(keyring().keys, 1, new_index_key, 2, {1: conftest.BLIND_KEY}))
    during = IdentityService(database, identity.outbox, rotating)

    # Before ReKey: rows indexed under the old key are still found through their old token.
    [again] = await during.resolve_batch([record(rotating, ("email", "R@Example.com"))])
    assert (again.customer_id, again.created) == (a.customer_id, False)
    assert await during.owner_of(rotating.key("email", "r@example.com")) == a.customer_id
    # The same person seen again is recognised under its old fingerprint, not stored twice.
    [seen] = await during.resolve_batch([record(rotating, ("email", "r@example.com"), person=rita)])
    assert seen.customer_id == a.customer_id
    async with database.sessions() as session:
        assert await session.scalar(text("SELECT count(*) FROM person")) == 1

    assert (await during.rekey(limit=1)).remaining == 1
    assert (await during.rekey(limit=100)).remaining == 0
    after = KeyMaker(Keyring(keyring().keys, 1, new_index_key, 2))  # the old index key is gone
    rotated = IdentityService(database, identity.outbox, after)
    [found] = await rotated.resolve_batch([record(after, ("email", "r@example.com"))])
    assert (found.customer_id, found.created) == (a.customer_id, False)
    async with database.sessions() as session:
        identifier = (await session.execute(text("SELECT blind_index, index_key_id FROM identifier"))).one()
        person = (await session.execute(text("SELECT id, fingerprint, index_key_id FROM person"))).one()
        blocks = await session.scalars(
            text("SELECT block_key FROM person_block WHERE person_id = :p"), {"p": person.id}
        )
        block_keys = sorted(bytes(block) for block in blocks)
    assert (bytes(identifier.blind_index), identifier.index_key_id) == (
        after.key("email", "r@example.com").blind_index,
        2,
    )
    normalized = after.person(**rita)
    assert (bytes(person.fingerprint), person.index_key_id) == (after.fingerprint(normalized), 2)
    assert block_keys == sorted(after.block_indexes(normalized))
    assert [link.value for link in (await rotated.graph(a.customer_id)).links] == ["r@example.com"]


async def test_unmerging_the_first_of_a_chain_of_merges_then_the_second_restores_each_customer(
    identity: IdentityService,
) -> None:
    """a into b, then b into c; reversing a-into-b first (b is merged by then) and b-into-c after
    gives every customer back its own identifiers: the second reversal must not take a's rows
    (which the first one has already given back) to b."""
    k = identity.keys
    a, b, c = await identity.resolve_batch([record(k, ("email", f"{name}@example.com")) for name in ("a", "b", "c")])
    first = await identity.merge(b.customer_id, [a.customer_id], "call center")
    second = await identity.merge(c.customer_id, [b.customer_id], "call center")
    await identity.unmerge(b.customer_id, first, "a is someone else")
    [found] = await identity.resolve_batch([record(k, ("email", "a@example.com"))])
    assert found.customer_id == a.customer_id
    await identity.unmerge(c.customer_id, second, "b is someone else too")
    for customer, name in ((a, "a"), (b, "b"), (c, "c")):
        graph = await identity.graph(customer.customer_id)
        assert graph.customer.status == "active"
        assert [link.value for link in graph.links] == [f"{name}@example.com"]


async def test_a_chain_of_merges_in_one_batch_is_logged_and_reversed_as_if_made_one_by_one(
    identity: IdentityService,
) -> None:
    """One batch merges a into b, then b into c (written in one statement per table): the log says
    the second merge moved a's identifier too (b held it by then), and reversing both gives every
    customer back its own identifiers."""
    k = identity.keys
    a, b, c = await identity.resolve_batch([record(k, ("email", f"{name}@example.com")) for name in ("a", "b", "c")])
    into_b, into_c = await identity.resolve_batch(
        [
            record(k, ("email", "b@example.com"), ("email", "a@example.com")),
            record(k, ("email", "c@example.com"), ("email", "b@example.com")),
        ]
    )
    assert (into_b.merged_ids, into_c.merged_ids) == ([a.customer_id], [b.customer_id])
    assert (await identity.graph(a.customer_id)).customer.merged_into == b.customer_id
    assert sorted(link.value for link in (await identity.graph(c.customer_id)).links) == [
        f"{name}@example.com" for name in ("a", "b", "c")
    ]
    log = {
        entry.absorbed_ids[0]: entry
        for survivor in (b, c)
        for entry in (await identity.graph(survivor.customer_id)).merges
        if entry.survivor_id == survivor.customer_id
    }
    assert len(log[a.customer_id].snapshot[a.customer_id]["identifiers"]) == 1
    assert len(log[b.customer_id].snapshot[b.customer_id]["identifiers"]) == 2
    await identity.unmerge(b.customer_id, log[a.customer_id].id, "a is someone else")
    await identity.unmerge(c.customer_id, log[b.customer_id].id, "b is someone else too")
    for customer, name in ((a, "a"), (b, "b"), (c, "c")):
        graph = await identity.graph(customer.customer_id)
        assert graph.customer.status == "active"
        assert [link.value for link in graph.links] == [f"{name}@example.com"]


async def test_a_customer_is_never_merged_into_itself(identity: IdentityService) -> None:
    k = identity.keys
    [a] = await identity.resolve_batch([record(k, ("email", "self@example.com"))])
    with pytest.raises(FailedPrecondition):
        await identity.merge(a.customer_id, [a.customer_id], "oops")
    graph = await identity.graph(a.customer_id)
    assert graph.customer.status == "active" and not graph.merges


async def test_link_reports_only_the_identifiers_it_newly_attached(identity: IdentityService) -> None:
    k = identity.keys
    api = IdentityApi(identity, k)
    [own] = await identity.resolve_batch([record(k, ("email", "own@example.com"), ("email", "own2@example.com"))])
    [other] = await identity.resolve_batch(
        [record(k, ("email", "o1@example.com"), ("email", "o2@example.com"), ("loyalty_id", "L-o"))]
    )
    await identity.link(own.customer_id, [k.key("loyalty_id", "L-own")], "registration")

    def ident(kind: str, value: str) -> pb.Identifier:
        return pb.Identifier(type=kind, value=value)

    # Already its own (twice): nothing new.
    same = pb.LinkRequest(
        customer_id=own.customer_id,
        identifiers=[ident("email", "own@example.com"), ident("email", "OWN@example.com")],
    )
    assert (await api.Link(same, None)).linked == 0  # type: ignore[arg-type]
    # Two keys of a customer that cannot be merged in (two loyalty ids): one conflict, none linked.
    refused = pb.LinkRequest(
        customer_id=own.customer_id,
        identifiers=[ident("email", "o1@example.com"), ident("email", "o2@example.com")],
    )
    response = await api.Link(refused, None)  # type: ignore[arg-type]
    assert len(response.conflicts) == 1 and response.linked == 0
    assert (await identity.graph(other.customer_id)).customer.status == "active"
    # One new key and one already owned: one linked.
    mixed = pb.LinkRequest(
        customer_id=own.customer_id,
        identifiers=[ident("email", "own2@example.com"), ident("device_id", "d-new")],
    )
    assert (await api.Link(mixed, None)).linked == 1  # type: ignore[arg-type]


async def test_link_of_another_customers_identifiers_obeys_the_limits_and_the_device_rule(
    identity: IdentityService,
) -> None:
    """Every identifier given to Link belongs to one other customer: merging it in is still subject
    to the rules (its identifier counts must be read, and it must be locked)."""
    k = identity.keys
    [own] = await identity.resolve_batch([record(k, ("loyalty_id", "L-1"), ("email", "own@example.com"))])
    [other] = await identity.resolve_batch([record(k, ("loyalty_id", "L-2"), ("email", "other@example.com"))])
    result = await identity.link(own.customer_id, [k.key("email", "other@example.com")], "login")
    assert not result.merged_ids and "at most 1 loyalty_id" in result.conflicts[0].reason
    assert (await identity.graph(other.customer_id)).customer.status == "active"

    [known] = await identity.resolve_batch([record(k, ("device_id", "tablet"), ("email", "k@example.com"))])
    result = await identity.link(own.customer_id, [k.key("device_id", "tablet")], "login")
    assert not result.merged_ids and "device_id may join at most one known customer" in result.conflicts[0].reason
    assert (await identity.graph(known.customer_id)).customer.status == "active"


async def test_a_customer_given_back_and_merged_elsewhere_keeps_its_rows_when_an_older_merge_is_reversed(
    identity: IdentityService,
) -> None:
    """a into b, b into c; a-into-b reversed (a's rows go back to a), then a merged into c itself.
    Reversing b-into-c must give b its own rows only: a's, in b's snapshot of that merge, are with c
    through a's own merge now."""
    k = identity.keys
    a, b, c = await identity.resolve_batch([record(k, ("email", f"{name}@example.com")) for name in ("a", "b", "c")])
    first = await identity.merge(b.customer_id, [a.customer_id], "call center")
    second = await identity.merge(c.customer_id, [b.customer_id], "call center")
    await identity.unmerge(b.customer_id, first, "a is someone else")
    await identity.merge(c.customer_id, [a.customer_id], "a is c after all")
    await identity.unmerge(c.customer_id, second, "b is someone else")
    assert [link.value for link in (await identity.graph(b.customer_id)).links] == ["b@example.com"]
    assert [link.value for link in (await identity.graph(c.customer_id)).links] == ["a@example.com", "c@example.com"]


async def test_an_operators_reason_is_not_logged(identity: IdentityService, caplog: pytest.LogCaptureFixture) -> None:
    k = identity.keys
    a, b = await identity.resolve_batch([record(k, ("email", "a@example.com")), record(k, ("email", "b@example.com"))])
    with caplog.at_level(logging.DEBUG):
        await identity.merge(b.customer_id, [a.customer_id], "she wrote from jane.doe@example.org, +1 415 555 0100")
    assert caplog.records
    assert "jane.doe" not in caplog.text and "555" not in caplog.text


async def test_a_conflict_the_batch_itself_resolved_is_not_recorded(identity: IdentityService) -> None:
    """A device refused between two known customers, who a later record of the same batch joins by
    an email: no conflict of the survivor with itself is left behind."""
    k = identity.keys
    [known] = await identity.resolve_batch([record(k, ("email", "k@example.com"), ("device_id", "d-k"))])
    results = await identity.resolve_batch(
        [
            record(k, ("email", "n@example.com"), ("device_id", "d-n")),
            record(k, ("email", "k@example.com"), ("device_id", "d-n")),  # refused: device only, both known
            record(k, ("email", "k@example.com"), ("email", "n@example.com")),  # joined by an email
        ]
    )
    assert {r.customer_id for r in results} == {known.customer_id}
    assert all(c.customer_id != c.other_customer_id for r in results for c in r.conflicts)
    graph = await identity.graph(known.customer_id)
    assert [(row.customer_id, row.other_customer_id) for row in graph.conflicts] == []


async def test_a_record_whose_new_customer_a_later_record_joins_to_an_existing_one_is_not_reported_new(
    identity: IdentityService,
) -> None:
    k = identity.keys
    [existing] = await identity.resolve_batch([record(k, ("email", "x@example.com"))])
    first, second = await identity.resolve_batch(
        [record(k, ("email", "new@example.com")), record(k, ("email", "new@example.com"), ("email", "x@example.com"))]
    )
    assert first.customer_id == second.customer_id == existing.customer_id
    assert not first.created and first.matched_by == "batch"
    assert second.matched_by == "email"
