"""What consent publishes and consumes.

Publishes `tailor.consent.changed` (through the outbox) for every change of a customer's consent.
Consumes `tailor.identity.merged` and `tailor.identity.unmerged` (durable, once per merge or
unmerge; the subscriptions are tailor_platform.bus.merges', the handlers ConsentService.merge and
ConsentService.separate) and listens to
`tailor.consent.changed` on every replica to keep its CheckConsent cache exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.consent_pb2 import ConsentChanged
from tailor.events.v1.envelope_pb2 import Envelope
from tailor_platform.bus.envelope import new_envelope, unpack
from tailor_platform.bus.listener import Listener
from tailor_platform.bus.outbox import Outbox

from tailor_consent.domain.cache import ConsentCache
from tailor_consent.domain.model import Cause, ConsentRecord

CONSENT_CHANGED = "consent.changed"
CONSENT_CHANGED_SUBJECT = "tailor.consent.changed"


def consent_changed(record: ConsentRecord, cause: Cause) -> ConsentChanged:
    message = ConsentChanged(
        customer_id=record.customer_id,
        purpose=record.purpose,
        channel=record.channel,
        granted=record.granted,
        source=record.source,
        legal_basis=record.legal_basis,
        policy_version=record.policy_version,
        cause=cause.value,
        removed=record.removed,
    )
    message.changed_at.FromDatetime(record.updated_at)
    return message


async def publish_changes(
    outbox: Outbox, session: AsyncSession, records: Sequence[ConsentRecord], cause: Cause
) -> None:
    envelopes = [
        new_envelope(
            CONSENT_CHANGED,
            outbox.source,
            consent_changed(record, cause),
            customer_id=record.customer_id,
            time=record.updated_at,
        )
        for record in records
    ]
    await outbox.add_many(session, envelopes)


async def publish_redirects(
    outbox: Outbox, session: AsyncSession, customer_ids: Sequence[str], merged_into: str, cause: Cause, at: datetime
) -> None:
    """A merge (merged_into: the survivor) or its reversal (merged_into empty) changed which
    customer's consents decide for these."""
    envelopes = []
    for customer_id in customer_ids:
        message = ConsentChanged(customer_id=customer_id, cause=cause.value, merged_into=merged_into)
        message.changed_at.FromDatetime(at)
        envelopes.append(new_envelope(CONSENT_CHANGED, outbox.source, message, customer_id=customer_id, time=at))
    await outbox.add_many(session, envelopes)


def cache_listener(cache: ConsentCache) -> Listener:
    async def on_change(envelope: Envelope) -> None:
        cache.invalidate(envelope.customer_id or unpack(envelope, ConsentChanged).customer_id)

    async def on_gap() -> None:
        cache.clear()

    return Listener(CONSENT_CHANGED_SUBJECT, on_change, on_gap)
