"""Consent tables and queries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Delete,
    Identity,
    Index,
    MetaData,
    String,
    Update,
    and_,
    delete,
    false,
    func,
    not_,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from tailor_platform.db import NAMING_CONVENTION

from tailor_consent.domain.model import Cause, ConsentRecord, Key
from tailor_consent.domain.unmerges import AuditEntry

CustomerKey = tuple[str, str, str]
"""(customer_id, purpose, channel)"""


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class ConsentRow(Base):
    """The current consent of a customer for a purpose (and channel; "" = every channel)."""

    __tablename__ = "consent"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(64), primary_key=True)
    channel: Mapped[str] = mapped_column(String(64), primary_key=True)
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(200))
    legal_basis: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    request_id: Mapped[str] = mapped_column(String(200))

    def record(self) -> ConsentRecord:
        return ConsentRecord(
            self.customer_id,
            self.purpose,
            self.channel,
            self.granted,
            self.source,
            self.legal_basis,
            self.policy_version,
            self.updated_at,
            self.request_id,
        )


class AuditRow(Base):
    """Append-only: the database refuses UPDATE, DELETE and TRUNCATE (see the first migration)."""

    __tablename__ = "consent_audit"
    __table_args__ = (Index("ix_consent_audit_customer_sequence", "customer_id", "sequence"),)

    sequence: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    purpose: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(64))
    granted: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(String(200))
    legal_basis: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str] = mapped_column(String(200), unique=True)
    cause: Mapped[str] = mapped_column(String(16))
    recorded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When this entry was written, by the database's clock (recorded_at is when the decision was
    # made, which an import may place long before). None: written before the column existed.
    written_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), server_default=func.clock_timestamp())
    removed: Mapped[bool] = mapped_column(Boolean, server_default=false())

    def record(self) -> ConsentRecord:
        return ConsentRecord(
            self.customer_id,
            self.purpose,
            self.channel,
            self.granted,
            self.source,
            self.legal_basis,
            self.policy_version,
            self.recorded_at,
            self.request_id,
            self.removed,
        )


class AppliedMergeRow(Base):
    """Merges folded in, and when (a reversal copies the withdrawals recorded since)."""

    __tablename__ = "applied_merge"

    merge_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # When the merge took effect (see record_merge); compared with the audit's written_at.
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AliasRow(Base):
    """A customer merged into another: its consents are decided by the survivor's (following
    chains: A into S, then S into T). Gone when the merge is reversed."""

    __tablename__ = "customer_alias"
    __table_args__ = (
        Index("ix_customer_alias_survivor_id", "survivor_id"),
        Index("ix_customer_alias_merge_id", "merge_id"),
    )

    absorbed_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    survivor_id: Mapped[str] = mapped_column(String(128))
    merge_id: Mapped[str] = mapped_column(String(128))


MAX_ALIAS_CHAIN = 32
"""Merge chains are short; a longer one would be a cycle (a bug upstream), not followed further."""

CURRENT_QUERY = text(
    "WITH RECURSIVE chain(id, depth) AS (SELECT CAST(:c AS text), 0 UNION ALL "
    "SELECT a.survivor_id, chain.depth + 1 FROM chain JOIN customer_alias a ON a.absorbed_id = chain.id "
    f"WHERE chain.depth < {MAX_ALIAS_CHAIN}), "
    "target AS (SELECT id FROM chain ORDER BY depth DESC LIMIT 1) "
    "SELECT (SELECT survivor_id FROM customer_alias WHERE absorbed_id = :c) AS redirect, c.* "
    "FROM target t LEFT JOIN consent c ON c.customer_id = t.id"
)
"""A customer's next hop (its survivor, if merged away) and the records of the customer at the end
of its chain, in one round trip (CheckConsent's cache miss)."""


class ReversedMergeRow(Base):
    """Merges identity reversed (an identity.merged for one of them arriving late is not applied)."""

    __tablename__ = "reversed_merge"

    merge_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    unmerge_id: Mapped[str] = mapped_column(String(128))
    reversed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


def _record_of(row: Mapping[Any, Any]) -> ConsentRecord:
    """A current record from a row of the consent table read as text SQL."""
    return ConsentRecord(
        row["customer_id"],
        row["purpose"],
        row["channel"],
        row["granted"],
        row["source"],
        row["legal_basis"],
        row["policy_version"],
        row["updated_at"],
        row["request_id"],
    )


def _columns(record: ConsentRecord) -> dict[str, object]:
    return {
        "customer_id": record.customer_id,
        "purpose": record.purpose,
        "channel": record.channel,
        "granted": record.granted,
        "source": record.source,
        "legal_basis": record.legal_basis,
        "policy_version": record.policy_version,
        "request_id": record.request_id,
    }


class ConsentStore:
    """Queries; every method runs in the caller's session (and so in its transaction)."""

    async def records_of(self, session: AsyncSession, customer_ids: Sequence[str]) -> list[ConsentRecord]:
        rows = await session.scalars(select(ConsentRow).where(ConsentRow.customer_id.in_(customer_ids)))
        return [row.record() for row in rows]

    async def audited(self, session: AsyncSession, request_ids: Iterable[str]) -> dict[str, ConsentRecord]:
        """The audit entries already written for these request ids."""
        rows = await session.scalars(select(AuditRow).where(AuditRow.request_id.in_(list(request_ids))))
        return {row.request_id: row.record() for row in rows}

    async def append_audit(self, session: AsyncSession, records: Sequence[ConsentRecord], cause: Cause) -> set[str]:
        """Append audit entries; returns the request ids that were new (others were there already)."""
        if not records:
            return set()
        inserted = await session.scalars(
            insert(AuditRow)
            .values(
                [
                    {**_columns(r), "cause": cause.value, "recorded_at": r.updated_at, "removed": r.removed}
                    for r in records
                ]
            )
            .on_conflict_do_nothing(index_elements=["request_id"])
            .returning(AuditRow.request_id)
        )
        return set(inserted)

    async def upsert_current(self, session: AsyncSession, records: Sequence[ConsentRecord]) -> list[CustomerKey]:
        """Make these records current unless a newer one is stored; returns the keys that changed.
        At most one record per (customer, purpose, channel)."""
        if not records:
            return []
        values = insert(ConsentRow).values([{**_columns(r), "updated_at": r.updated_at} for r in records])
        excluded = values.excluded
        statement = values.on_conflict_do_update(
            index_elements=["customer_id", "purpose", "channel"],
            set_={
                "granted": excluded.granted,
                "source": excluded.source,
                "legal_basis": excluded.legal_basis,
                "policy_version": excluded.policy_version,
                "updated_at": excluded.updated_at,
                "request_id": excluded.request_id,
            },
            # rules.supersedes: the later record; on equal times a withdrawal wins.
            where=or_(
                ConsentRow.updated_at < excluded.updated_at,
                and_(ConsentRow.updated_at == excluded.updated_at, or_(ConsentRow.granted, not_(excluded.granted))),
            ),
        ).returning(ConsentRow.customer_id, ConsentRow.purpose, ConsentRow.channel)
        changed = await session.execute(statement)
        return [(row.customer_id, row.purpose, row.channel) for row in changed]

    async def history(
        self, session: AsyncSession, customer_id: str, after_sequence: int, limit: int
    ) -> list[tuple[int, str, ConsentRecord]]:
        rows = await session.scalars(
            select(AuditRow)
            .where(AuditRow.customer_id == customer_id, AuditRow.sequence > after_sequence)
            .order_by(AuditRow.sequence)
            .limit(limit)
        )
        return [(row.sequence, row.cause, row.record()) for row in rows]

    async def current(self, session: AsyncSession, keys: Sequence[CustomerKey]) -> list[ConsentRecord]:
        """The stored records for (customer, purpose, channel) keys."""
        if not keys:
            return []
        rows = await session.scalars(
            select(ConsentRow).where(tuple_(ConsentRow.customer_id, ConsentRow.purpose, ConsentRow.channel).in_(keys))
        )
        return [row.record() for row in rows]

    async def current_records(self, session: AsyncSession, customer_id: str) -> tuple[str | None, list[ConsentRecord]]:
        """The customer it was merged into (None: not merged away), and the records that decide
        for it: its own, or those of the customer at the end of its merge chain."""
        rows = (await session.execute(CURRENT_QUERY, {"c": customer_id})).mappings().all()
        records = [_record_of(row) for row in rows if row["customer_id"] is not None]
        return (rows[0]["redirect"] if rows else None), records

    async def current_ids(self, session: AsyncSession, customer_ids: Iterable[str]) -> dict[str, str]:
        """Each customer id -> the customer that decides for it now (itself, or the end of its
        merge chain)."""
        asked = list(dict.fromkeys(customer_ids))
        rows = await session.execute(
            text(
                "WITH RECURSIVE chain(asked, id, depth) AS (SELECT k, k, 0 FROM unnest(CAST(:c AS text[])) AS k "
                "UNION ALL SELECT chain.asked, a.survivor_id, chain.depth + 1 FROM chain "
                "JOIN customer_alias a ON a.absorbed_id = chain.id "
                f"WHERE chain.depth < {MAX_ALIAS_CHAIN}) "
                "SELECT DISTINCT ON (asked) asked, id FROM chain ORDER BY asked, depth DESC"
            ),
            {"c": asked},
        )
        return {row.asked: row.id for row in rows}

    async def audit_of(self, session: AsyncSession, customer_id: str) -> list[AuditEntry]:
        """A customer's whole audit log, oldest first (a reversal replays it)."""
        rows = await session.scalars(
            select(AuditRow).where(AuditRow.customer_id == customer_id).order_by(AuditRow.sequence)
        )
        return [AuditEntry(row.sequence, row.cause, row.record(), row.written_at) for row in rows]

    async def replace_current(
        self, session: AsyncSession, customer_id: str, replacements: Sequence[tuple[Key, str, ConsentRecord | None]]
    ) -> set[Key]:
        """(key, expected request id, record or None to remove): replace (or remove) the customer's
        record for the key, but only while it is still the expected one (a change made meanwhile
        wins). Returns the keys replaced."""
        done = set()
        for (purpose, channel), expected, record in replacements:
            where = (
                ConsentRow.customer_id == customer_id,
                ConsentRow.purpose == purpose,
                ConsentRow.channel == channel,
                ConsentRow.request_id == expected,
            )
            statement: Delete | Update
            if record is None:
                statement = delete(ConsentRow).where(*where)
            else:
                statement = update(ConsentRow).where(*where).values(**_columns(record), updated_at=record.updated_at)
            if (await session.execute(statement.returning(ConsentRow.purpose))).first() is not None:
                done.add((purpose, channel))
        return done

    # -- merges and their reversals -------------------------------------------------------------

    async def record_merge(
        self,
        session: AsyncSession,
        merge_id: str,
        survivor_id: str,
        absorbed_ids: Sequence[str],
        merged_at: datetime | None,
    ) -> None:
        """The merge is applied; its absorbed customers are decided by the survivor from now on.
        It took effect when identity merged them (`merged_at`), or now by the database's clock if
        that is earlier (clocks differ) or identity did not say: whichever counts more as "while
        merged" (domain/unmerges.py)."""
        now = func.clock_timestamp()
        applied_at = now if merged_at is None else func.least(merged_at, now)
        await session.execute(
            insert(AppliedMergeRow)
            .values(merge_id=merge_id, applied_at=applied_at)
            .on_conflict_do_nothing(index_elements=["merge_id"])
        )
        aliases = insert(AliasRow).values(
            [{"absorbed_id": absorbed, "survivor_id": survivor_id, "merge_id": merge_id} for absorbed in absorbed_ids]
        )
        await session.execute(
            aliases.on_conflict_do_update(
                index_elements=["absorbed_id"],
                set_={"survivor_id": aliases.excluded.survivor_id, "merge_id": aliases.excluded.merge_id},
            )
        )

    async def drop_aliases(self, session: AsyncSession, merge_id: str) -> None:
        """The merge is reversed: its absorbed customers decide for themselves again."""
        await session.execute(delete(AliasRow).where(AliasRow.merge_id == merge_id))

    async def applied_merge(self, session: AsyncSession, merge_id: str) -> AppliedMergeRow | None:
        return await session.get(AppliedMergeRow, merge_id)

    async def merged_into(self, session: AsyncSession, survivor_id: str) -> list[str]:
        """The customers merged into this survivor (by merges not reversed)."""
        rows = await session.scalars(select(AliasRow.absorbed_id).where(AliasRow.survivor_id == survivor_id))
        return list(rows)

    async def is_reversed(self, session: AsyncSession, merge_id: str) -> bool:
        return await session.get(ReversedMergeRow, merge_id) is not None

    async def add_reversed(self, session: AsyncSession, merge_id: str, unmerge_id: str) -> bool:
        """Record the reversal; False when it was recorded already."""
        added = await session.scalars(
            insert(ReversedMergeRow)
            .values(merge_id=merge_id, unmerge_id=unmerge_id)
            .on_conflict_do_nothing(index_elements=["merge_id"])
            .returning(ReversedMergeRow.merge_id)
        )
        return added.first() is not None
