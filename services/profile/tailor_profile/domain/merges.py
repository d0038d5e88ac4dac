"""Folding a batch of identity merges at once: where each absorbed customer ends up.

Merges are applied in the order identity published them. A survivor may itself be absorbed by a
later merge of the batch (a chain: A into S, then S into T), and then everything of A ends on T,
exactly as applying the merges one by one would leave it. A batch in which a customer is absorbed
twice, or is named survivor after being absorbed, is not planned: the caller applies it merge by
merge, which is what those (out-of-order or re-merged) histories need.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tailor_platform.bus.merges import Merge


@dataclass(frozen=True)
class MergePlan:
    steps: list[tuple[str, list[str]]]
    """(survivor, absorbed customers) per merge, in order: what to combine into what."""
    final: dict[str, str]
    """Every absorbed customer -> the customer it ends in (its survivor, or where that went)."""
    merge_ids: dict[str, str]
    """Every absorbed customer -> the merge that absorbed it."""
    survivors: list[str]
    """The customers that hold the folded data at the end (survivors not absorbed later)."""


def plan_merges(merges: Sequence[Merge]) -> MergePlan | None:
    """The plan of a batch, or None when it must be applied merge by merge (see the module)."""
    absorbed_by: dict[str, str] = {}
    merge_ids: dict[str, str] = {}
    steps: list[tuple[str, list[str]]] = []
    for merge in merges:
        absorbed = [customer for customer in dict.fromkeys(merge.absorbed_ids) if customer != merge.survivor_id]
        if merge.survivor_id in absorbed_by or any(customer in absorbed_by for customer in absorbed):
            return None
        for customer in absorbed:
            absorbed_by[customer] = merge.survivor_id
            merge_ids[customer] = merge.merge_id
        steps.append((merge.survivor_id, absorbed))

    def end(customer: str) -> str:
        while customer in absorbed_by:
            customer = absorbed_by[customer]
        return customer

    survivors = list(dict.fromkeys(survivor for survivor, _ in steps if survivor not in absorbed_by))
    return MergePlan(steps, {customer: end(customer) for customer in absorbed_by}, merge_ids, survivors)
