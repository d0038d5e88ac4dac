"""Consent use cases: each is one transaction over the store, the domain rules and the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession
from tailor_platform.bus.merges import Merge, Unmerge
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database
from tailor_platform.errors import AlreadyExists

from tailor_consent import events
from tailor_consent.domain.cache import ConsentCache, Records, Redirect
from tailor_consent.domain.model import Cause, ConsentRecord, Decision, Key
from tailor_consent.domain.rules import decide, merge_consents, supersedes
from tailor_consent.domain.unmerges import (
    Reverted,
    inherited_withdrawals,
    merge_request_id,
    removal,
    revert_merge,
    unmerge_request_id,
)
from tailor_consent.store import MAX_ALIAS_CHAIN, ConsentStore


@dataclass(frozen=True)
class ImportOutcome:
    imported: int
    skipped: int


class ConsentService:
    def __init__(self, db: Database, outbox: Outbox, cache: ConsentCache, store: ConsentStore | None = None) -> None:
        self.db = db
        self.outbox = outbox
        self.cache = cache
        self.store = store or ConsentStore()

    async def set_consent(self, record: ConsentRecord) -> tuple[ConsentRecord, bool]:
        """Apply a grant or withdrawal; returns the stored record and whether this call applied it.
        A retried request returns what the first one stored."""
        asked, previous = record.customer_id, None
        async with self.db.transaction() as session:
            # A customer merged away: the consent is its survivor's (which decides for it now).
            record = replace(record, customer_id=(await self.store.current_ids(session, [asked]))[asked])
            if record.request_id in await self.store.append_audit(session, [record], Cause.SET):
                await self.store.upsert_current(session, [record])
                await events.publish_changes(self.outbox, session, [record], Cause.SET)
            else:  # a retry: the audit log already holds this request
                previous = (await self.store.audited(session, [record.request_id]))[record.request_id]
        if previous is not None:
            first_target = previous.customer_id in (asked, record.customer_id)
            if not first_target or not previous.same_content(replace(record, customer_id=previous.customer_id)):
                raise AlreadyExists(f"request_id {record.request_id!r} was already used for a different consent")
            return previous, False
        self.cache.invalidate(record.customer_id)
        return record, True

    async def import_batch(self, records: Sequence[ConsentRecord]) -> ImportOutcome:
        """Import records from another system; each applies once (by request id) and never
        overrides a newer stored consent. All of the batch commits together."""
        async with self.db.transaction() as session:
            current = await self.store.current_ids(session, (record.customer_id for record in records))
            records = [replace(record, customer_id=current[record.customer_id]) for record in records]
            new_ids = await self.store.append_audit(session, records, Cause.IMPORT)
            # A request id repeated inside the batch counts once, as its first occurrence.
            fresh = list({r.request_id: r for r in reversed(records) if r.request_id in new_ids}.values())
            latest: dict[tuple[str, str, str], ConsentRecord] = {}
            for record in fresh:
                key = (record.customer_id, record.purpose, record.channel)
                if supersedes(record, latest.get(key)):
                    latest[key] = record
            changed = set(await self.store.upsert_current(session, list(latest.values())))
            applied = [record for key, record in latest.items() if key in changed]
            await events.publish_changes(self.outbox, session, applied, Cause.IMPORT)
        for customer_id in {record.customer_id for record in applied}:
            self.cache.invalidate(customer_id)
        return ImportOutcome(imported=len(applied), skipped=len(records) - len(applied))

    async def check(self, customer_id: str, purpose: str, channel: str) -> Decision:
        return decide(await self.records(customer_id), purpose, channel)

    async def records(self, customer_id: str) -> Records:
        """The records that decide for the customer: its own, or (merged away) its survivor's."""
        for _ in range(MAX_ALIAS_CHAIN):
            cached = self.cache.get(customer_id)
            if not isinstance(cached, Redirect):
                break
            customer_id = cached.to
        if cached is not None and not isinstance(cached, Redirect):
            return cached
        ticket = self.cache.ticket(customer_id)
        async with self.db.sessions() as session:
            redirect, loaded = await self.store.current_records(session, customer_id)
        records = {record.key: record for record in loaded}
        # A merged-away customer caches only its next hop (under its own ticket); the records,
        # its chain end's, are cached when asked for under that customer's own id and ticket.
        self.cache.put(customer_id, Redirect(redirect) if redirect else records, ticket)
        return records

    async def history(self, customer_id: str, after_sequence: int, limit: int) -> list[tuple[int, str, ConsentRecord]]:
        async with self.db.sessions() as session:
            return await self.store.history(session, customer_id, after_sequence, limit)

    async def merge(self, session: AsyncSession, merge: Merge) -> list[ConsentRecord]:
        """Fold the absorbed customers' consents into the survivor, in the caller's transaction
        (the identity.merged consumer's, which also records the message as processed). A merge
        identity has already reversed (its identity.unmerged came first) is not applied."""
        survivor_id, absorbed_ids, merge_id = merge.survivor_id, merge.absorbed_ids, merge.merge_id
        if await self.store.is_reversed(session, merge_id):
            return []
        everything = await self.store.records_of(session, [survivor_id, *absorbed_ids])
        survivor = [record for record in everything if record.customer_id == survivor_id]
        absorbed = [record for record in everything if record.customer_id != survivor_id]
        now = datetime.now(UTC)
        changes = [
            # A withdrawal taken over is dated now: it outranks every grant the merged customers hold
            # (a withdrawal anywhere wins). A grant keeps its own time: dated now it would outrank a
            # later withdrawal of the other key that applies (the purpose-wide one for a channel, a
            # channel's for the purpose-wide) and allow what someone had since withdrawn.
            replace(
                taken,
                customer_id=survivor_id,
                updated_at=taken.updated_at if taken.granted else now,
                request_id=merge_request_id(merge_id, taken),
            )
            for taken in merge_consents(survivor, absorbed)
        ]
        await self.store.record_merge(session, merge_id, survivor_id, absorbed_ids, merge.merged_at)
        await events.publish_redirects(self.outbox, session, absorbed_ids, survivor_id, Cause.MERGE, now)
        for customer in absorbed_ids:
            self.cache.invalidate(customer)
        return await self._apply(session, changes, Cause.MERGE)

    async def separate(self, session: AsyncSession, unmerge: Unmerge) -> list[ConsentRecord]:
        """Follow identity.unmerged, in the consumer's transaction: a reversed merge gives the
        survivor back what it held without it; the restored customers (and a customer split off)
        take the withdrawals that cannot be attributed (domain/unmerges.py)."""
        survivor_id = unmerge.customer_id
        applied = None
        if unmerge.merge_id:
            if not await self.store.add_reversed(session, unmerge.merge_id, unmerge.unmerge_id):
                return []
            # None: the merge never reached consent, and now never will.
            applied = await self.store.applied_merge(session, unmerge.merge_id)
            if applied is not None:
                await self.store.drop_aliases(session, unmerge.merge_id)
                await events.publish_redirects(
                    self.outbox, session, unmerge.restored_ids, "", Cause.UNMERGE, datetime.now(UTC)
                )
                for restored in unmerge.restored_ids:
                    self.cache.invalidate(restored)
        # Asked once the reversal is recorded: the reversed merge no longer counts among these.
        still_merged = await self.store.merged_into(session, survivor_id) if applied is not None else []
        audit = await self.store.audit_of(session, survivor_id)
        held: dict[str, dict[Key, ConsentRecord]] = {
            customer: {} for customer in [survivor_id, *unmerge.restored_ids, *still_merged]
        }
        for record in await self.store.records_of(session, list(held)):
            held[record.customer_id][record.key] = record
        survivor = held.pop(survivor_id)
        merged_at = applied.applied_at if applied is not None else None
        changes = []
        if merged_at is not None:
            others = [record for customer in still_merged for record in held.pop(customer).values()]
            reverted = revert_merge(unmerge.merge_id, audit, survivor, others, merged_at=merged_at)
            changes = await self._revert(session, survivor_id, unmerge, reverted)
        copies = inherited_withdrawals(
            survivor.values(),
            {entry.record.request_id: entry for entry in audit},
            held,
            since=merged_at,
            own_only=bool(unmerge.merge_id),
        )
        inherited = [
            replace(copy, request_id=unmerge_request_id(unmerge.unmerge_id, copy.customer_id, copy.key))
            for copy in copies
        ]
        return changes + await self._apply(session, inherited, Cause.UNMERGE)

    async def _revert(
        self, session: AsyncSession, survivor_id: str, unmerge: Unmerge, reverted: Sequence[Reverted]
    ) -> list[ConsentRecord]:
        """Give the survivor back (or remove) the keys the reversed merge still decided."""
        now = datetime.now(UTC)
        announced: dict[Key, ConsentRecord] = {}
        replacements: list[tuple[Key, str, ConsentRecord | None]] = []
        for item in reverted:
            request_id = unmerge_request_id(unmerge.unmerge_id, survivor_id, item.key)
            if item.restored is None:
                announced[item.key] = removal(survivor_id, item.key, now, request_id)
                replacements.append((item.key, item.takeover.request_id, None))
            else:
                announced[item.key] = replace(item.restored, customer_id=survivor_id, request_id=request_id)
                replacements.append((item.key, item.takeover.request_id, announced[item.key]))
        done = await self.store.replace_current(session, survivor_id, replacements)
        return await self._apply(
            session, [record for key, record in announced.items() if key in done], Cause.UNMERGE, written=True
        )

    async def _apply(
        self, session: AsyncSession, changes: Sequence[ConsentRecord], cause: Cause, *, written: bool = False
    ) -> list[ConsentRecord]:
        """Make changes current (those not older than what is stored; unless `written` already),
        audit and announce them, in a consumer's transaction. consent.changed invalidates the
        caches again once committed and relayed; invalidating here closes the gap until then."""
        if not written:
            current = set(await self.store.upsert_current(session, changes))
            changes = [change for change in changes if (change.customer_id, *change.key) in current]
        await self.store.append_audit(session, changes, cause)
        await events.publish_changes(self.outbox, session, changes, cause)
        for customer_id in {change.customer_id for change in changes}:
            self.cache.invalidate(customer_id)
        return list(changes)
