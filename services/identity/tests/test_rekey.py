"""Re-keying runs: a cursor through the stale rows, the count at the end, and person blocks."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from tailor_identity.domain.crypto import Keyring
from tailor_identity.domain.keys import KeyMaker
from tailor_identity.domain.rekey import ReKeyCursor
from tailor_identity.service import IdentityService, ReKeyOutcome
from tailor_platform.db import Database
from tailor_platform.errors import FailedPrecondition

from . import conftest
from .conftest import keyring
from .test_service import record

PEOPLE = [
    {"given_name": "Rita", "surname": "Ko", "date_of_birth": "1980-02-01", "postcode": "2000"},
    {"given_name": "Omar", "surname": "Said", "date_of_birth": "1975-11-30", "postcode": "3050"},
]


def test_a_cursor_reads_back_what_it_wrote() -> None:
    cursor = ReKeyCursor("person", 41, 7)
    assert ReKeyCursor.parse(str(cursor)) == cursor


@pytest.mark.parametrize("text_", ["", "person/1", "customer/1/2", "person/-1/2", "identifier/x/2", "a/b/c/d"])
def test_anything_else_is_not_a_cursor(text_: str) -> None:
    with pytest.raises(ValueError, match="is not a cursor returned by ReKey"):
        ReKeyCursor.parse(text_)


async def store_people(identity: IdentityService) -> None:
    """5 identifiers and 2 person records."""
    k = identity.keys
    await identity.resolve_batch(
        [
            record(k, ("email", "rita@example.com"), ("device_id", "d-1"), person=PEOPLE[0]),
            record(k, ("email", "omar@example.com"), ("phone", "+14155550199"), ("device_id", "d-2"), person=PEOPLE[1]),
        ]
    )


async def blocks(database: Database) -> list[tuple[bytes, int]]:
    async with database.sessions() as session:
        rows = await session.execute(text("SELECT block_key, person_id FROM person_block ORDER BY 1, 2"))
        return [(bytes(row.block_key), row.person_id) for row in rows]


async def run(service: IdentityService, limit: int) -> list[ReKeyOutcome]:
    """Calls following the cursor until the run has read every row."""
    outcomes = [await service.rekey(limit)]
    while outcomes[-1].cursor:
        outcomes.append(await service.rekey(limit, ReKeyCursor.parse(outcomes[-1].cursor)))
    return outcomes


async def test_a_run_follows_its_cursor_through_identifiers_then_persons(
    database: Database, identity: IdentityService
) -> None:
    await store_people(identity)
    stored_blocks = await blocks(database)
    rotated = IdentityService(database, identity.outbox, KeyMaker(keyring(active=2)))

    outcomes = await run(rotated, limit=2)

    assert [(o.rekeyed, o.remaining) for o in outcomes] == [(2, 5), (2, 3), (2, 1), (1, 0)]
    assert [o.cursor.split("/")[0] for o in outcomes] == ["identifier", "identifier", "person", ""]
    async with database.sessions() as session:
        keys = await session.execute(
            text("SELECT key_id FROM identifier UNION ALL SELECT key_id FROM person"),
        )
        assert {row.key_id for row in keys} == {2}
    # Only the encryption key changed: the blocks (blind index tokens) are what they were.
    assert await blocks(database) == stored_blocks


async def test_rows_written_under_an_old_key_behind_the_cursor_are_found_at_the_end(
    database: Database, identity: IdentityService
) -> None:
    """A worker still on the old keys (a rolling restart) writes behind the run: the run's last
    call counts every stale row, and a new run picks the straggler up."""
    await store_people(identity)
    rotated = IdentityService(database, identity.outbox, KeyMaker(keyring(active=2)))
    first = await rotated.rekey(limit=6)  # every identifier and one person record
    assert first.cursor.startswith("person/")
    await identity.resolve_batch([record(identity.keys, ("email", "late@example.com"))])  # under key 1

    last = await rotated.rekey(limit=5, cursor=ReKeyCursor.parse(first.cursor))
    assert (last.rekeyed, last.remaining, last.cursor) == (1, 1, "")
    again = await run(rotated, limit=5)
    assert [(o.rekeyed, o.remaining, o.cursor) for o in again] == [(1, 0, "")]
    [late] = await rotated.resolve_batch([record(rotated.keys, ("email", "late@example.com"))])
    assert not late.created


async def test_a_new_blind_index_key_replaces_every_block(database: Database, identity: IdentityService) -> None:
    await store_people(identity)
    rotating = KeyMaker(Keyring(keyring().keys, 1, bytes(range(3, 35)), 2, {1: conftest.BLIND_KEY}))
    rotated = IdentityService(database, identity.outbox, rotating)

    outcomes = await run(rotated, limit=3)

    assert outcomes[-1].remaining == 0
    async with database.sessions() as session:
        ids = list(await session.scalars(text("SELECT id FROM person ORDER BY id")))
    expected = sorted(
        (block, person_id)
        for person_id, person in zip(ids, PEOPLE, strict=True)
        for block in rotating.block_indexes(rotating.person(**person))
    )
    assert await blocks(database) == expected


async def test_an_old_key_dropped_too_early_is_named_and_nothing_is_rewritten(
    database: Database, identity: IdentityService
) -> None:
    await store_people(identity)
    only_new = KeyMaker(Keyring({2: conftest.TEST_KEYS[2]}, 2, conftest.BLIND_KEY))
    rotated = IdentityService(database, identity.outbox, only_new)

    with pytest.raises(FailedPrecondition, match="TAILOR_IDENTITY_OLD_ENCRYPTION_KEYS"):
        await rotated.rekey(limit=10)

    async with database.sessions() as session:
        keys = await session.execute(text("SELECT key_id FROM identifier UNION ALL SELECT key_id FROM person"))
        assert {row.key_id for row in keys} == {1}
