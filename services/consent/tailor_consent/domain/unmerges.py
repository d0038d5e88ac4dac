"""What a reversed merge, or a split, does to consents. Pure: the service reads, this decides, the
service writes.

A merge gave the survivor the most restrictive combination of the merged customers' consents (the
records it took over are audited with cause "merge" and a request id naming the merge). Reversing
it gives the survivor back, for each (purpose, channel) the merge still decides, what it would hold
had the merge never happened: its own audit replayed without the merge's takeovers, combined as
before with the customers still merged into it; or no record at all. The restored customers keep
their own records, which a merge never touches.

What happened while the customers were one cannot be attributed: a consent recorded on the
survivor after the merge may have come from the person now restored. "After" is when consent wrote
it, not the time the record carries: an import can bring a decision dated before the merge, yet
the merge had already made the survivor's id stand for both people. Such withdrawals are kept
and copied to the restored customers. Such grants are kept by no one: the survivor goes back to
what it held without them too (without a record a check is denied), since a grant one person gave
must not let another be contacted. A split has no merge time to tell before from after, so the
customer split off takes every withdrawal the customer it leaves holds, and no grant.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from tailor_consent.domain.model import Cause, ConsentRecord, Key
from tailor_consent.domain.rules import merge_consents, supersedes

REMOVED_BY = "identity.unmerged"
"""The source of a removal."""


@dataclass(frozen=True, slots=True)
class AuditEntry:
    sequence: int
    cause: str
    record: ConsentRecord
    written_at: datetime | None = None
    """When consent wrote the entry (None: before that was kept; the record's own time stands in)."""

    @property
    def written(self) -> datetime:
        return self.written_at if self.written_at is not None else self.record.updated_at


@dataclass(frozen=True, slots=True)
class Reverted:
    """One key of the survivor: the takeover the merge left current, and what replaces it (None:
    the survivor is left without a record for the key)."""

    key: Key
    takeover: ConsentRecord
    restored: ConsentRecord | None


def merge_request_id(merge_id: str, record: ConsentRecord) -> str:
    """The request id of a record a merge made the survivor's (one per merge, origin and key)."""
    return f"{merge_request_prefix(merge_id)}{record.customer_id}:{record.purpose}:{record.channel}"


def merge_request_prefix(merge_id: str) -> str:
    return f"merge:{merge_id}:"


def unmerge_request_id(unmerge_id: str, customer_id: str, key: Key) -> str:
    purpose, channel = key
    return f"unmerge:{unmerge_id}:{customer_id}:{purpose}:{channel}"


def removal(customer_id: str, key: Key, at: datetime, request_id: str) -> ConsentRecord:
    """The audit entry (and consent.changed) of a key left without a record."""
    purpose, channel = key
    return ConsentRecord(customer_id, purpose, channel, False, REMOVED_BY, "", "", at, request_id, removed=True)


def replay(entries: Iterable[AuditEntry]) -> dict[Key, ConsentRecord]:
    """The current records a customer's audit entries leave, applied in order as the service
    applies them: a newer record replaces an older one; an unmerge's entry replaces (or removes)
    whatever is there."""
    state: dict[Key, ConsentRecord] = {}
    for entry in sorted(entries, key=lambda entry: entry.sequence):
        record = entry.record
        held = state.get(record.key)
        if entry.cause == Cause.UNMERGE:
            if record.removed:
                state.pop(record.key, None)
            else:
                state[record.key] = record
        elif supersedes(record, held):
            state[record.key] = record
    return state


def revert_merge(
    merge_id: str,
    survivor_audit: Sequence[AuditEntry],
    current: Mapping[Key, ConsentRecord],
    still_merged: Iterable[ConsentRecord],
    merged_at: datetime | None = None,
) -> list[Reverted]:
    """Per key whose current record the reversed merge took over, or is a grant set or imported
    on the survivor after `merged_at` (not attributable, see above; later withdrawals are kept):
    the survivor's own record without those, combined most restrictively with the records of the
    customers still merged into it."""
    prefix = merge_request_prefix(merge_id)
    dropped = {
        entry.record.request_id
        for entry in survivor_audit
        if (entry.cause == Cause.MERGE and entry.record.request_id.startswith(prefix))
        or (merged_at is not None and _granted_while_merged(entry, merged_at))
    }
    held_by_merge = {key: record for key, record in current.items() if record.request_id in dropped}
    if not held_by_merge:
        return []
    own = replay(entry for entry in survivor_audit if entry.record.request_id not in dropped)
    others: dict[Key, list[ConsentRecord]] = {}
    for record in still_merged:
        others.setdefault(record.key, []).append(record)
    reverted = []
    for key, takeover in sorted(held_by_merge.items()):
        mine = own.get(key)
        taken = merge_consents([mine] if mine else [], others.get(key, []))
        reverted.append(Reverted(key, takeover, taken[0] if taken else mine))
    return reverted


def _granted_while_merged(entry: AuditEntry, merged_at: datetime) -> bool:
    record = entry.record
    return record.granted and entry.cause in (Cause.SET, Cause.IMPORT) and entry.written > merged_at


def inherited_withdrawals(
    survivor_current: Iterable[ConsentRecord],
    audit: Mapping[str, AuditEntry],
    restored_current: Mapping[str, Mapping[Key, ConsentRecord]],
    *,
    since: datetime | None,
    own_only: bool,
) -> list[ConsentRecord]:
    """The survivor's withdrawals each restored customer takes over (as its own records, with
    their original time), where the restored customer holds nothing newer.

    `audit`: the survivor's audit entries by request id. `since`: only withdrawals written after it
    (the merge; None: all). `own_only`: only those set or imported on the survivor itself, not
    taken over from another customer by a merge.
    """

    def written(record: ConsentRecord) -> datetime:
        entry = audit.get(record.request_id)
        return entry.written if entry is not None else record.updated_at

    def cause(record: ConsentRecord) -> str | None:
        entry = audit.get(record.request_id)
        return entry.cause if entry is not None else None

    withdrawals = [
        record
        for record in survivor_current
        if not record.granted
        and (since is None or written(record) > since)
        and (not own_only or cause(record) in (Cause.SET, Cause.IMPORT))
    ]
    copies = []
    for customer_id, held in sorted(restored_current.items()):
        for record in withdrawals:
            mine = held.get(record.key)
            if mine is None or mine.updated_at < record.updated_at:
                copies.append(replace(record, customer_id=customer_id))
    return copies
