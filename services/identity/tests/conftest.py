"""Fixtures: an identity service over a fresh, migrated database on the session's PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from tailor_identity.domain.crypto import Keyring
from tailor_identity.domain.keys import KeyMaker
from tailor_identity.service import IdentityService
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database

TEST_KEYS = {1: bytes(range(32)), 2: bytes(range(1, 33))}
BLIND_KEY = bytes(range(2, 34))


ANN = {  # one person's attributes, as a record carries them
    "given_name": "Ann",
    "surname": "Lee",
    "date_of_birth": "1980-01-02",
    "address": "1 Main St",
    "postcode": "2000",
    "city": "Sydney",
}


def keyring(active: int = 1) -> Keyring:
    return Keyring(dict(TEST_KEYS), active, BLIND_KEY)


@pytest.fixture
def identity_url(fresh_database: Callable[[str], str]) -> str:
    return fresh_database("identity")


@pytest.fixture
async def database(identity_url: str) -> AsyncIterator[Database]:
    db = Database(identity_url, pool_size=20)
    yield db
    await db.dispose()


@pytest.fixture
def identity(database: Database) -> IdentityService:
    return IdentityService(database, Outbox(database, "identity"), KeyMaker(keyring()))
