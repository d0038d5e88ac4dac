"""The `tailor.identity.merged` contract, which every service that holds customer data consumes:
fold what it holds on the absorbed customers into the survivor, once per merge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.identity_pb2 import IdentityMerged

from tailor_platform.bus.consumer import Subscription
from tailor_platform.bus.envelope import PoisonMessage, unpack

IDENTITY_MERGED_SUBJECT = "tailor.identity.merged"


@dataclass(frozen=True)
class Merge:
    survivor_id: str
    absorbed_ids: list[str]
    merge_id: str


Fold = Callable[[AsyncSession, str, list[str], str], Awaitable[object]]
"""fold(session, survivor_id, absorbed_ids, merge_id), in the consumer's transaction."""

FoldMany = Callable[[AsyncSession, list[Merge]], Awaitable[object]]
"""fold_many(session, merges in the order they were published), in the consumer's transaction."""


def merge_of(envelope: Envelope) -> Merge:
    """The merge an envelope announces; a message without a survivor or without another customer
    to absorb can never be applied (PoisonMessage: it is dead-lettered)."""
    merged = unpack(envelope, IdentityMerged)
    absorbed = [customer for customer in merged.absorbed_ids if customer and customer != merged.survivor_id]
    if not merged.survivor_id or not absorbed:
        raise PoisonMessage("identity.merged needs a survivor_id and at least one other absorbed id")
    return Merge(merged.survivor_id, absorbed, merged.merge_id or envelope.id)


def identity_merged_subscription(fold: Fold) -> Subscription:
    """A durable subscription that calls `fold` once per merge."""

    async def handle(session: AsyncSession, envelope: Envelope) -> None:
        merge = merge_of(envelope)
        await fold(session, merge.survivor_id, merge.absorbed_ids, merge.merge_id)

    return Subscription("identity-merged", IDENTITY_MERGED_SUBJECT, handle)


def identity_merges_subscription(fold_many: FoldMany) -> Subscription:
    """The same durable subscription, for a service that folds a fetched batch of merges at once
    (one round of statements for many merges). A batch holding a message that cannot be applied
    fails as a whole and is retried message by message, so only that one is dead-lettered."""

    async def handle_batch(session: AsyncSession, envelopes: list[Envelope]) -> None:
        await fold_many(session, [merge_of(envelope) for envelope in envelopes])

    return Subscription.batched("identity-merged", IDENTITY_MERGED_SUBJECT, handle_batch)
