"""The identity.merged / identity.unmerged contracts as consumers read them."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tailor.events.v1.identity_pb2 import IdentityMerged, IdentityUnmerged
from tailor_platform.bus.envelope import PoisonMessage, new_envelope
from tailor_platform.bus.merges import merge_of, unmerge_of


def merged(**fields: object) -> IdentityMerged:
    return IdentityMerged(**{"survivor_id": "s-1", "absorbed_ids": ["a-1"], "merge_id": "m-1", **fields})  # type: ignore[arg-type]


def test_a_merge_names_each_absorbed_customer_once() -> None:
    merge = merge_of(new_envelope("identity.merged", "identity", merged(absorbed_ids=["a-1", "a-2", "a-1", "s-1"])))
    assert (merge.survivor_id, merge.absorbed_ids, merge.merge_id) == ("s-1", ["a-1", "a-2"], "m-1")


@pytest.mark.parametrize(
    "message",
    [
        merged(survivor_id="s\x001"),
        merged(absorbed_ids=["a" * 129]),
        merged(merge_id="m 1"),
        merged(merged_at=Timestamp(seconds=2**62)),
        merged(absorbed_ids=[]),
    ],
    ids=["nul", "too-long", "space", "time-out-of-range", "nothing-absorbed"],
)
def test_a_merge_no_consumer_could_apply_is_poison(message: IdentityMerged) -> None:
    with pytest.raises(PoisonMessage):
        merge_of(new_envelope("identity.merged", "identity", message))


def test_an_unmerge_with_an_id_no_customer_can_have_is_poison() -> None:
    fine = IdentityUnmerged(customer_id="s-1", restored_ids=["a-1", "a-1"], merge_id="m-1", unmerge_id="u-1")
    assert unmerge_of(new_envelope("identity.unmerged", "identity", fine)).restored_ids == ["a-1"]
    bad = IdentityUnmerged(customer_id="s-1", restored_ids=["a\n"], merge_id="m-1", unmerge_id="u-1")
    with pytest.raises(PoisonMessage):
        unmerge_of(new_envelope("identity.unmerged", "identity", bad))
