"""Consent use cases: each is one transaction over the store, the domain rules and the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database
from tailor_platform.errors import AlreadyExists

from tailor_consent import events
from tailor_consent.domain.cache import ConsentCache, Records
from tailor_consent.domain.model import Cause, ConsentRecord, Decision
from tailor_consent.domain.rules import decide, merge_consents
from tailor_consent.store import ConsentStore


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
        previous = None
        async with self.db.transaction() as session:
            if record.request_id in await self.store.append_audit(session, [record], Cause.SET):
                await self.store.upsert_current(session, [record])
                await events.publish_changes(self.outbox, session, [record], Cause.SET)
            else:  # a retry: the audit log already holds this request
                previous = (await self.store.audited(session, [record.request_id]))[record.request_id]
        if previous is not None:
            if not previous.same_content(record):
                raise AlreadyExists(f"request_id {record.request_id!r} was already used for a different consent")
            return previous, False
        self.cache.invalidate(record.customer_id)
        return record, True

    async def import_batch(self, records: Sequence[ConsentRecord]) -> ImportOutcome:
        """Import records from another system; each applies once (by request id) and never
        overrides a newer stored consent. All of the batch commits together."""
        async with self.db.transaction() as session:
            new_ids = await self.store.append_audit(session, records, Cause.IMPORT)
            # A request id repeated inside the batch counts once, as its first occurrence.
            fresh = list({r.request_id: r for r in reversed(records) if r.request_id in new_ids}.values())
            latest: dict[tuple[str, str, str], ConsentRecord] = {}
            for record in fresh:
                key = (record.customer_id, record.purpose, record.channel)
                if key not in latest or latest[key].updated_at <= record.updated_at:
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
        cached = self.cache.get(customer_id)
        if cached is not None:
            return cached
        ticket = self.cache.ticket(customer_id)
        async with self.db.sessions() as session:
            loaded = await self.store.records_of(session, [customer_id])
        records = {record.key: record for record in loaded}
        self.cache.put(customer_id, records, ticket)
        return records

    async def history(self, customer_id: str, after_sequence: int, limit: int) -> list[tuple[int, str, ConsentRecord]]:
        async with self.db.sessions() as session:
            return await self.store.history(session, customer_id, after_sequence, limit)

    async def merge(
        self, session: AsyncSession, survivor_id: str, absorbed_ids: Sequence[str], merge_id: str
    ) -> list[ConsentRecord]:
        """Fold the absorbed customers' consents into the survivor, in the caller's transaction
        (the identity.merged consumer's, which also records the message as processed)."""
        everything = await self.store.records_of(session, [survivor_id, *absorbed_ids])
        survivor = [record for record in everything if record.customer_id == survivor_id]
        absorbed = [record for record in everything if record.customer_id != survivor_id]
        now = datetime.now(UTC)
        changes = [
            replace(
                taken,
                customer_id=survivor_id,
                # Now, not the original time: the combination is what the survivor holds from now on.
                updated_at=now,
                request_id=f"merge:{merge_id}:{taken.customer_id}:{taken.purpose}:{taken.channel}",
            )
            for taken in merge_consents(survivor, absorbed)
        ]
        await self.store.append_audit(session, changes, Cause.MERGE)
        await self.store.upsert_current(session, changes)
        await events.publish_changes(self.outbox, session, changes, Cause.MERGE)
        # consent.changed invalidates again once committed and relayed; this closes the gap here.
        self.cache.invalidate(survivor_id)
        return changes
