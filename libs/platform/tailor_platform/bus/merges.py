"""The `tailor.identity.merged` and `tailor.identity.unmerged` contracts, which services that hold
customer data consume: fold what they hold on the absorbed customers into the survivor, once per
merge; and give the restored customers back what is theirs when a merge is reversed (or
identifiers are split off into a new customer)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.identity_pb2 import IdentityMerged, IdentityUnmerged

from tailor_platform.bus.consumer import Subscription
from tailor_platform.bus.envelope import PoisonMessage, unpack
from tailor_platform.validation import Validator

IDENTITY_MERGED_SUBJECT = "tailor.identity.merged"
IDENTITY_UNMERGED_SUBJECT = "tailor.identity.unmerged"


@dataclass(frozen=True)
class Merge:
    survivor_id: str
    absorbed_ids: list[str]
    """Each once, none the survivor."""
    merge_id: str
    merged_at: datetime | None = None
    """When identity merged them (None: the message does not say)."""


@dataclass(frozen=True)
class Unmerge:
    customer_id: str
    """The customer the restored ones are separated from (the merge's survivor, or the one split)."""
    restored_ids: list[str]
    merge_id: str
    """The merge reversed; empty for a split."""
    unmerge_id: str


Fold = Callable[[AsyncSession, Merge], Awaitable[object]]
"""fold(session, merge), in the consumer's transaction."""

FoldMany = Callable[[AsyncSession, list[Merge]], Awaitable[object]]
"""fold_many(session, merges in the order they were published), in the consumer's transaction."""


def merge_of(envelope: Envelope) -> Merge:
    """The merge an envelope announces (each absorbed customer once); a message that can never be
    applied raises PoisonMessage, so it is dead-lettered at once instead of failing every retry:
    one without a survivor or another customer to absorb, with ids no customer can have, or with a
    time no datetime holds."""
    merged = unpack(envelope, IdentityMerged)
    absorbed = list(dict.fromkeys(c for c in merged.absorbed_ids if c and c != merged.survivor_id))
    if not merged.survivor_id or not absorbed:
        raise PoisonMessage("identity.merged needs a survivor_id and at least one other absorbed id")
    _check_ids("identity.merged", [merged.survivor_id, *absorbed, merged.merge_id])
    merged_at = None
    if merged.HasField("merged_at"):
        try:
            merged_at = merged.merged_at.ToDatetime(tzinfo=UTC)
        except (OverflowError, OSError, ValueError):
            raise PoisonMessage("identity.merged has a merged_at out of range") from None
    return Merge(merged.survivor_id, absorbed, merged.merge_id or envelope.id, merged_at)


def _check_ids(contract: str, ids: list[str]) -> None:
    """Ids the consumers' tables can hold (validation.MAX_ID_LENGTH, the customer id pattern);
    an empty merge id is allowed (the envelope id stands in)."""
    check = Validator()
    for position, value in enumerate(ids):
        if value:
            check.identifier(f"id[{position}]", value)
    if not check.ok:
        raise PoisonMessage(f"{contract} names an id no customer can have")


def identity_merged_subscription(fold: Fold) -> Subscription:
    """A durable subscription that calls `fold` once per merge."""

    async def handle(session: AsyncSession, envelope: Envelope) -> None:
        await fold(session, merge_of(envelope))

    return Subscription("identity-merged", IDENTITY_MERGED_SUBJECT, handle)


def identity_merges_subscription(fold_many: FoldMany) -> Subscription:
    """The same durable subscription, for a service that folds a fetched batch of merges at once
    (one round of statements for many merges). A batch holding a message that cannot be applied
    fails as a whole and is retried message by message, so only that one is dead-lettered."""

    async def handle_batch(session: AsyncSession, envelopes: list[Envelope]) -> None:
        await fold_many(session, [merge_of(envelope) for envelope in envelopes])

    return Subscription.batched("identity-merged", IDENTITY_MERGED_SUBJECT, handle_batch)


def unmerge_of(envelope: Envelope) -> Unmerge:
    """The unmerge an envelope announces (PoisonMessage when it names no customer to restore)."""
    unmerged = unpack(envelope, IdentityUnmerged)
    restored = list(dict.fromkeys(c for c in unmerged.restored_ids if c and c != unmerged.customer_id))
    if not unmerged.customer_id or not restored:
        raise PoisonMessage("identity.unmerged needs a customer_id and at least one other restored id")
    _check_ids("identity.unmerged", [unmerged.customer_id, *restored, unmerged.merge_id, unmerged.unmerge_id])
    return Unmerge(unmerged.customer_id, restored, unmerged.merge_id, unmerged.unmerge_id or envelope.id)


def identity_unmerged_subscription(separate: Callable[[AsyncSession, Unmerge], Awaitable[object]]) -> Subscription:
    """A durable subscription that calls `separate(session, unmerge)` once per unmerge."""

    async def handle(session: AsyncSession, envelope: Envelope) -> None:
        await separate(session, unmerge_of(envelope))

    return Subscription("identity-unmerged", IDENTITY_UNMERGED_SUBJECT, handle)
