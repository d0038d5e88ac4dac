"""Consent records and decisions."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

ALL_CHANNELS = ""
"""The channel value of a consent that covers every channel of its purpose."""

Key = tuple[str, str]
"""(purpose, channel)"""


class Cause(StrEnum):
    SET = "set"
    IMPORT = "import"
    MERGE = "merge"
    UNMERGE = "unmerge"


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    customer_id: str
    purpose: str
    channel: str
    granted: bool
    source: str
    legal_basis: str
    policy_version: str
    updated_at: datetime
    request_id: str
    removed: bool = False
    """Only in the audit log and consent.changed: the customer no longer holds a record for the key
    (a reversed merge had given it the one it held). Current records are never removed ones."""

    @property
    def key(self) -> Key:
        return (self.purpose, self.channel)

    def same_content(self, other: ConsentRecord) -> bool:
        """Equal apart from when it was recorded (to recognise a retried request)."""
        return replace(self, updated_at=other.updated_at) == other

    def for_customer(self, customer_id: str) -> ConsentRecord:
        return replace(self, customer_id=customer_id)


class Reason(StrEnum):
    GRANTED = "granted"
    WITHDRAWN = "withdrawn"
    NO_CONSENT_RECORDED = "no_consent_recorded"


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: Reason
    decided_by: ConsentRecord | None = None
