"""How consent records decide: checks, and the combination of merged customers' consents."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tailor_consent.domain.model import ALL_CHANNELS, ConsentRecord, Decision, Key, Reason


def decide(records: Mapping[Key, ConsentRecord], purpose: str, channel: str) -> Decision:
    """May the customer be processed for `purpose` on `channel`?

    A channel-specific record and a purpose-wide one (channel "") both apply to a channel check;
    the more recent one decides, so "withdraw all marketing" overrides an older email grant and a
    later email grant overrides that withdrawal. On a tie a withdrawal wins. Nothing recorded means
    no (default deny).
    """
    candidates = [records.get((purpose, channel))]
    if channel != ALL_CHANNELS:
        candidates.append(records.get((purpose, ALL_CHANNELS)))
    applicable = [record for record in candidates if record is not None]
    if not applicable:
        return Decision(False, Reason.NO_CONSENT_RECORDED)
    latest = max(applicable, key=lambda record: (record.updated_at, not record.granted))
    return Decision(latest.granted, Reason.GRANTED if latest.granted else Reason.WITHDRAWN, latest)


def supersedes(new: ConsentRecord, held: ConsentRecord | None) -> bool:
    """Does `new` replace `held`, the record stored for the same customer, purpose and channel?
    The later one decides; on equal times a withdrawal wins, as in `decide`, whichever arrived
    first (so records of one moment give the same outcome in any order). The store's upsert says
    the same in SQL (store.upsert_current)."""
    if held is None or held.updated_at < new.updated_at:
        return True
    return held.updated_at == new.updated_at and (held.granted or not new.granted)


def merge_consents(survivor: Iterable[ConsentRecord], absorbed: Iterable[ConsentRecord]) -> list[ConsentRecord]:
    """The records (of any merged customer) whose consent the survivor must take over.

    Per (purpose, channel) the most restrictive combination wins: a withdrawal held by any of the
    merged customers wins (the most recent withdrawal); otherwise the most recent grant. On equal
    times the survivor's own record wins, and then nothing changes for that key.
    """
    current = {record.key: record for record in survivor}
    by_key: dict[Key, list[ConsentRecord]] = {}
    for record in [*current.values(), *absorbed]:
        by_key.setdefault(record.key, []).append(record)
    takeovers = []
    for key, records in sorted(by_key.items()):
        denials = [record for record in records if not record.granted]
        winner = max(denials or records, key=lambda record: record.updated_at)
        if winner is not current.get(key):
            takeovers.append(winner)
    return takeovers
