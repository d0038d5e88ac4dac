"""Deterministic resolution of a batch, planned in memory before anything is written.

The planner starts from what the database says (which customer owns each key the batch mentions,
and how many identifiers of each type those customers hold) and walks the records in order. Each
record resolves to the customer found by its highest-priority key; other customers its keys point
at are merged into that one unless a rule forbids it (a per-type limit, or an anonymous device id
that would join a second known customer), in which case a conflict is recorded instead. Keys
nobody owns are attached, within the limits. Customers created in this batch are provisional:
when a later record (or a probabilistic match) joins them to another customer they are simply
aliased, so only real customers are ever written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from tailor_identity.domain.model import DEFAULT_LIMITS, PRIORITY, Conflict, IdType, Key, Record, priority_rank


@dataclass(slots=True)
class Outcome:
    """The result of one record; `customer_id` may be provisional until `Planner.final` maps it."""

    customer_id: str
    matched_by: str
    merged_ids: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    probability: float = 0.0
    needs_matching: bool = False


@dataclass(frozen=True)
class PlannedMerge:
    survivor_id: str
    absorbed_id: str
    evidence: str


Moved = dict[str, list[int]]
"""The rows a merge moved: {"identifiers": [ids], "persons": [ids]}."""


def nothing_moved() -> Moved:
    return {"identifiers": [], "persons": []}


def final_owners(merges: Sequence[PlannedMerge]) -> dict[str, str]:
    """Each absorbed customer's owner once every merge is made: merges may chain (B into A, then A
    into C: B's rows end with C)."""
    into = {merge.absorbed_id: merge.survivor_id for merge in merges}
    owners = {}
    for absorbed, owner in into.items():
        while owner in into:
            owner = into[owner]
        owners[absorbed] = owner
    return owners


def merge_snapshots(merges: Sequence[PlannedMerge], held: Mapping[str, Moved]) -> list[dict[str, Moved]]:
    """What each merge moved had the merges been made one after the other, from `held`, the rows
    each absorbed customer held before any of them: its own rows, and those earlier merges moved
    onto it (as an unmerge expects to find in the log)."""
    holding = {customer: {kind: list(ids) for kind, ids in rows.items()} for customer, rows in held.items()}
    snapshots = []
    for merge in merges:
        moved = holding.pop(merge.absorbed_id, nothing_moved())
        gaining = holding.setdefault(merge.survivor_id, nothing_moved())
        for kind, ids in moved.items():
            gaining.setdefault(kind, []).extend(ids)
        snapshots.append({merge.absorbed_id: {kind: sorted(ids) for kind, ids in moved.items()}})
    return snapshots


class Planner:
    def __init__(
        self,
        owners: Mapping[bytes, str],
        counts: Mapping[str, Counter[str]],
        new_id: Callable[[], str],
        limits: Mapping[str, int] = DEFAULT_LIMITS,
    ) -> None:
        self.owners: dict[bytes, str] = dict(owners)
        self.counts: dict[str, Counter[str]] = {customer: Counter(c) for customer, c in counts.items()}
        self.limits = limits
        self._new_id = new_id
        self.created: list[str] = []
        self._created_set: set[str] = set()
        self._alias: dict[str, str] = {}
        self.attached: list[tuple[Key, str]] = []
        self.merges: list[PlannedMerge] = []
        self.conflicts: list[Conflict] = []

    # -- customers -------------------------------------------------------------------------------

    def find(self, customer_id: str) -> str:
        while customer_id in self._alias:
            customer_id = self._alias[customer_id]
        return customer_id

    def is_new(self, customer_id: str) -> bool:
        return customer_id in self._created_set

    def is_known(self, customer_id: str) -> bool:
        """Known = holds at least one identifier that is not an anonymous device id."""
        return any(n for id_type, n in self.counts.get(customer_id, Counter()).items() if id_type != IdType.DEVICE_ID)

    def new_customer(self) -> str:
        customer_id = self._new_id()
        self.created.append(customer_id)
        self._created_set.add(customer_id)
        self.counts[customer_id] = Counter()
        return customer_id

    def materialized(self) -> list[str]:
        """Customers created by this batch that were not joined into another one."""
        return [customer for customer in self.created if customer not in self._alias]

    # -- rules -----------------------------------------------------------------------------------

    def limit_violation(self, customer_id: str, added: Counter[str]) -> str | None:
        held = self.counts.get(customer_id, Counter())
        for id_type, n in added.items():
            limit = self.limits.get(id_type)
            if limit is not None and held[id_type] + n > limit:
                return f"limit: at most {limit} {id_type} per customer"
        return None

    def merge_refusal(self, survivor: str, absorbed: str, evidence: list[Key]) -> str | None:
        only_devices = bool(evidence) and all(key.anonymous for key in evidence)
        if only_devices and self.is_known(survivor) and self.is_known(absorbed):
            return "device_id may join at most one known customer"
        return self.limit_violation(survivor, self.counts.get(absorbed, Counter()))

    def absorb(self, survivor: str, absorbed: str, evidence: str) -> None:
        self.counts[survivor] = self.counts.get(survivor, Counter()) + self.counts.pop(absorbed, Counter())
        self._alias[absorbed] = survivor
        if not self.is_new(absorbed):
            self.merges.append(PlannedMerge(survivor, absorbed, evidence))

    def attach(self, customer_id: str, key: Key) -> Conflict | None:
        reason = self.limit_violation(customer_id, Counter({key.id_type: 1}))
        if reason is not None:
            return Conflict(customer_id, "", key.id_type, reason, key.blind_index)
        self.owners[key.blind_index] = customer_id
        self.counts.setdefault(customer_id, Counter())[key.id_type] += 1
        self.attached.append((key, customer_id))
        return None

    # -- records ---------------------------------------------------------------------------------

    def resolve(self, record: Record) -> Outcome:
        """Plan one record: choose its customer, merge or refuse the others, attach new keys."""
        known = self._single_owner(record.keys)
        if known is not None:
            return known
        keys = sorted(_unique(record.keys), key=lambda k: priority_rank(k.id_type))
        found: dict[str, list[Key]] = {}
        for key in keys:
            owner = self.owners.get(key.blind_index)
            if owner is not None:
                found.setdefault(self.find(owner), []).append(key)
        if not found:
            outcome = Outcome(self.new_customer(), "new", needs_matching=record.person is not None)
        else:
            # Existing customers first (they survive), then by the priority of the key that found them.
            ordered = sorted(found, key=lambda c: (self.is_new(c), priority_rank(found[c][0].id_type)))
            primary = ordered[0]
            outcome = Outcome(primary, found[primary][0].id_type)
            for other in ordered[1:]:
                self._join(primary, other, found[other], outcome)
        self._attach_unowned(outcome, keys)
        return outcome

    def _single_owner(self, keys: list[Key]) -> Outcome | None:
        """The common case, decided fast: every key is already owned by one and the same customer."""
        customer = None
        best_type = ""
        best_rank = len(PRIORITY) + 1
        for key in keys:
            owner = self.owners.get(key.blind_index)
            if owner is None:
                return None
            if self._alias:
                owner = self.find(owner)
            if customer is not None and owner != customer:
                return None
            customer = owner
            rank = priority_rank(key.id_type)
            if rank < best_rank:
                best_type, best_rank = key.id_type, rank
        if customer is None:
            return None
        return Outcome(customer, best_type)

    def link(self, customer_id: str, keys: list[Key]) -> Outcome:
        """An explicit link (login, registration): the keys' customers join `customer_id`."""
        keys = sorted(_unique(keys), key=lambda k: priority_rank(k.id_type))
        found: dict[str, list[Key]] = {}
        for key in keys:
            owner = self.owners.get(key.blind_index)
            if owner is not None and self.find(owner) != customer_id:
                found.setdefault(self.find(owner), []).append(key)
        outcome = Outcome(customer_id, "link")
        for other in found:
            self._join(customer_id, other, found[other], outcome)
        self._attach_unowned(outcome, keys)
        return outcome

    def _attach_unowned(self, outcome: Outcome, keys: list[Key]) -> None:
        customer = self.find(outcome.customer_id)
        for key in keys:
            if key.blind_index not in self.owners:
                conflict = self.attach(customer, key)
                if conflict is not None:
                    outcome.conflicts.append(conflict)
        self.conflicts.extend(outcome.conflicts)

    def _join(self, primary: str, other: str, evidence: list[Key], outcome: Outcome) -> None:
        reason = self.merge_refusal(primary, other, evidence)
        if reason is not None:
            outcome.conflicts.append(Conflict(primary, other, evidence[0].id_type, reason, evidence[0].blind_index))
            return
        self.absorb(primary, other, f"shared {', '.join(sorted({k.id_type for k in evidence}))}")
        if not self.is_new(other):
            outcome.merged_ids.append(other)

    def final(self, outcome: Outcome) -> tuple[str, bool]:
        """(customer id, created by this batch) once the whole batch is planned."""
        customer = self.find(outcome.customer_id)
        return customer, self.is_new(customer)


def _unique(keys: list[Key]) -> list[Key]:
    seen: dict[bytes, Key] = {}
    for key in keys:
        seen.setdefault(key.blind_index, key)
    return list(seen.values())
