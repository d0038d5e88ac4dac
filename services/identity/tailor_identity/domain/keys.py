"""From raw request values to what resolution works with: normalized keys with their blind index,
and normalized person attributes with their fingerprint and blocking keys."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tailor_identity.domain import matching
from tailor_identity.domain.crypto import Keyring
from tailor_identity.domain.model import ID_TYPES, Key, Person
from tailor_identity.domain.normalize import (
    EmailRules,
    normalize_address,
    normalize_date,
    normalize_identifier,
    normalize_name,
    normalize_postcode,
)

PERSON_CONTEXT = b"person"
_KINDS = {id_type: f"{id_type}|" for id_type in ID_TYPES}
"""The blind index kind of each type without a namespace (built once: the resolve hot path)."""
DEFAULT_EMAIL_RULES = EmailRules()
MAX_ATTRIBUTE_LENGTH = 200


@dataclass(frozen=True)
class KeyMaker:
    keyring: Keyring
    email_rules: EmailRules = DEFAULT_EMAIL_RULES
    phone_region: str = "US"

    def key(self, id_type: str, value: str, namespace: str = "") -> Key:
        """ValueError (safe to show) for an unknown type or a value that does not normalize."""
        if id_type not in ID_TYPES:
            raise ValueError(f"unknown identifier type; expected one of: {', '.join(sorted(ID_TYPES))}")
        normalized, space = normalize_identifier(
            id_type, value, namespace, email_rules=self.email_rules, phone_region=self.phone_region
        )
        kind = _KINDS.get(id_type, "") if not space else f"{id_type}|{space}"
        keyring = self.keyring
        if keyring.rotating_index:
            old = keyring.old_blind_indexes(kind, normalized)
            return Key(id_type, normalized, space, keyring.blind_index(kind, normalized), old)
        return Key(id_type, normalized, space, keyring.blind_index(kind, normalized))

    def stored_key_index(self, id_type: str, stored_value: str) -> bytes:
        """The blind index under the active key of an identifier as stored (see Key.stored_value)."""
        namespace, _, value = stored_value.rpartition("\x1f")
        return self.keyring.blind_index(f"{id_type}|{namespace}", value)

    def person(
        self,
        given_name: str = "",
        surname: str = "",
        date_of_birth: str = "",
        address: str = "",
        postcode: str = "",
        city: str = "",
    ) -> Person:
        """ValueError naming the field for a malformed date or an over-long value."""
        for name, value in (
            ("given_name", given_name),
            ("surname", surname),
            ("address", address),
            ("postcode", postcode),
            ("city", city),
        ):
            if len(value) > MAX_ATTRIBUTE_LENGTH:
                raise ValueError(f"{name}: must be at most {MAX_ATTRIBUTE_LENGTH} characters")
        dob = ""
        if date_of_birth.strip():
            try:
                dob = normalize_date(date_of_birth)
            except ValueError as error:
                raise ValueError(f"date_of_birth: {error}") from None
        return Person(
            normalize_name(given_name),
            normalize_name(surname),
            dob,
            normalize_address(address),
            normalize_postcode(postcode),
            normalize_name(city),
        )

    def person_plaintext(self, person: Person) -> bytes:
        return json.dumps(person.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def fingerprint(self, person: Person) -> bytes:
        return self.keyring.blind_index("person", self.person_plaintext(person).decode())

    def old_fingerprints(self, person: Person) -> tuple[bytes, ...]:
        """While a blind index rotation runs: the person's fingerprints under the old keys (a
        record stored before is still under one of them until ReKey moves it)."""
        if not self.keyring.rotating_index:
            return ()
        return self.keyring.old_blind_indexes("person", self.person_plaintext(person).decode())

    def block_indexes(self, person: Person) -> list[bytes]:
        return [self.keyring.blind_index("block", key) for key in matching.block_keys(person)]

    def old_block_indexes(self, person: Person) -> dict[bytes, bytes]:
        """While a blind index rotation runs: each block token under an old key -> the active one."""
        if not self.keyring.rotating_index:
            return {}
        return {
            old: self.keyring.blind_index("block", key)
            for key in matching.block_keys(person)
            for old in self.keyring.old_blind_indexes("block", key)
        }

    def decrypt_person(self, key_id: int, ciphertext: bytes) -> Person:
        return Person.from_dict(json.loads(self.keyring.decrypt(key_id, ciphertext, PERSON_CONTEXT)))
