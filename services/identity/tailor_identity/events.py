"""What identity publishes (always through the outbox, in the transaction of the change).

- `tailor.identity.resolved`: new customer ids exist; one event per transaction, naming every
  customer it created (a message per customer was a sixth of ResolveBatch's cost).
- `tailor.identity.merged`: absorbed customers are the survivor from now on (consent, profile and
  the others fold what they hold on the absorbed ids into the survivor).
- `tailor.identity.unmerged`: a merge was reversed, or identifiers were split off into a new customer.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tailor.events.v1.envelope_pb2 import Envelope
from tailor.events.v1.identity_pb2 import IdentityMerged, IdentityResolved, IdentityUnmerged
from tailor_platform.bus.envelope import new_envelope
from tailor_platform.protobuf import now_timestamp

SOURCE = "identity"
RESOLVED = "identity.resolved"
MERGED = "identity.merged"
UNMERGED = "identity.unmerged"


def resolved(customer_ids: list[str]) -> Envelope:
    at = now_timestamp()
    message = IdentityResolved(customer_ids=customer_ids)
    message.created_at.CopyFrom(at)
    only = customer_ids[0] if len(customer_ids) == 1 else ""
    return new_envelope(RESOLVED, SOURCE, message, customer_id=only, time=at)


def merged(survivor_id: str, absorbed_ids: list[str], evidence: str, merge_id: str) -> Envelope:
    message = IdentityMerged(survivor_id=survivor_id, absorbed_ids=absorbed_ids, evidence=evidence, merge_id=merge_id)
    message.merged_at.FromDatetime(datetime.now(UTC))
    # The envelope id is the merge id: a re-publish of the same merge is dropped by JetStream.
    return new_envelope(MERGED, SOURCE, message, customer_id=survivor_id, envelope_id=f"merge-{merge_id}")


def unmerged(customer_id: str, restored_ids: list[str], merge_id: str, unmerge_id: str) -> Envelope:
    message = IdentityUnmerged(
        customer_id=customer_id, restored_ids=restored_ids, merge_id=merge_id, unmerge_id=unmerge_id
    )
    message.unmerged_at.FromDatetime(datetime.now(UTC))
    return new_envelope(UNMERGED, SOURCE, message, customer_id=customer_id, envelope_id=f"unmerge-{unmerge_id}")
