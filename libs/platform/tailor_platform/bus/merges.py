"""The `tailor.identity.merged` contract, which every service that holds customer data consumes:
fold what it holds on the absorbed customers into the survivor, once per merge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.identity_pb2 import IdentityMerged

from tailor_platform.bus.consumer import Subscription
from tailor_platform.bus.envelope import PoisonMessage, unpack

IDENTITY_MERGED_SUBJECT = "tailor.identity.merged"

Fold = Callable[[AsyncSession, str, list[str], str], Awaitable[object]]
"""fold(session, survivor_id, absorbed_ids, merge_id), in the consumer's transaction."""


def identity_merged_subscription(fold: Fold) -> Subscription:
    """A durable subscription that calls `fold` once per merge; a message without a survivor or
    without another customer to absorb can never be applied and is dead-lettered."""

    async def handle(session: AsyncSession, envelope: Envelope) -> None:
        merged = unpack(envelope, IdentityMerged)
        absorbed = [customer for customer in merged.absorbed_ids if customer and customer != merged.survivor_id]
        if not merged.survivor_id or not absorbed:
            raise PoisonMessage("identity.merged needs a survivor_id and at least one other absorbed id")
        await fold(session, merged.survivor_id, absorbed, merged.merge_id or envelope.id)

    return Subscription("identity-merged", IDENTITY_MERGED_SUBJECT, handle)
