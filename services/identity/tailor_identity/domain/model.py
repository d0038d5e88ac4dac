"""The identity vocabulary: identifier types, their priority and per-customer limits, records."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class IdType(StrEnum):
    EMAIL = "email"
    PHONE = "phone"
    LOYALTY_ID = "loyalty_id"
    POS_CUSTOMER_ID = "pos_customer_id"
    DEVICE_ID = "device_id"
    EXTERNAL = "external"


ID_TYPES = frozenset(t.value for t in IdType)

PRIORITY: tuple[IdType, ...] = (
    IdType.LOYALTY_ID,
    IdType.POS_CUSTOMER_ID,
    IdType.EXTERNAL,
    IdType.EMAIL,
    IdType.PHONE,
    IdType.DEVICE_ID,
)
"""Which identifier decides when a record's identifiers point at different customers: the customer
found by the highest-priority identifier is the one the record resolves to (and the survivor)."""

DEFAULT_LIMITS: dict[str, int] = {
    IdType.LOYALTY_ID: 1,
    IdType.POS_CUSTOMER_ID: 1,
    IdType.EMAIL: 3,
    IdType.PHONE: 3,
    IdType.DEVICE_ID: 50,
    IdType.EXTERNAL: 10,
}
"""At most this many identifiers of a type per customer; a link beyond it is a conflict, not a merge."""


_RANK = {id_type.value: rank for rank, id_type in enumerate(PRIORITY)}


def priority_rank(id_type: str) -> int:
    return _RANK.get(id_type, len(PRIORITY))


class Key(NamedTuple):
    """A normalized identifier: `value` is plaintext and lives only in memory; `blind_index` (keyed
    HMAC) is what the database looks up. (A named tuple: thousands are made per batch.)"""

    id_type: str
    value: str
    namespace: str
    blind_index: bytes
    old_blind_indexes: tuple[bytes, ...] = ()
    """Its tokens under old blind index keys, while a rotation runs (looked up too)."""

    @property
    def anonymous(self) -> bool:
        return self.id_type == IdType.DEVICE_ID

    def stored_value(self) -> str:
        """What is encrypted at rest: namespace and value (namespace is empty but for external ids)."""
        return f"{self.namespace}\x1f{self.value}" if self.namespace else self.value


@dataclass(frozen=True)
class Person:
    """Normalized person attributes (empty string = unknown)."""

    given_name: str = ""
    surname: str = ""
    date_of_birth: str = ""  # YYYYMMDD
    address: str = ""
    postcode: str = ""
    city: str = ""

    def is_empty(self) -> bool:
        return not any((self.given_name, self.surname, self.date_of_birth, self.address, self.postcode, self.city))

    def to_dict(self) -> dict[str, str]:
        return {
            "g": self.given_name,
            "s": self.surname,
            "d": self.date_of_birth,
            "a": self.address,
            "p": self.postcode,
            "c": self.city,
        }

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Person:
        return cls(data["g"], data["s"], data["d"], data["a"], data["p"], data["c"])


@dataclass
class Record:
    """One record to resolve: its normalized keys and person attributes (if any)."""

    keys: list[Key] = field(default_factory=list)
    person: Person | None = None


@dataclass(frozen=True)
class Conflict:
    customer_id: str
    other_customer_id: str
    id_type: str
    reason: str
    blind_index: bytes = b""
