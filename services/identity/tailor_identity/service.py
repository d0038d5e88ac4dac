"""Identity use cases. Each is one transaction over the store, the domain rules and the outbox;
resolution retries its whole batch when a concurrent transaction got in the way (a key taken since
we looked, a customer merged since we looked, a deadlock), so no key ever gets two customers."""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database, driver_connection, sqlstate, while_running
from tailor_platform.errors import FailedPrecondition, NotFound
from tailor_platform.lru import LruCache

from tailor_identity import events
from tailor_identity.domain import matching
from tailor_identity.domain.keys import PERSON_CONTEXT, KeyMaker
from tailor_identity.domain.matching import MatchModel, Pattern, Thresholds
from tailor_identity.domain.model import DEFAULT_LIMITS, Conflict, Key, Person, Record
from tailor_identity.domain.rekey import TABLES, ReKeyCursor
from tailor_identity.domain.resolution import Outcome, PlannedMerge, Planner, final_owners, merge_snapshots
from tailor_identity.store import (
    IdentifierRow,
    IdentityStore,
    LoggedMerge,
    NewIdentifier,
    NewPerson,
    PersonRow,
    RekeyedPerson,
    StaleRow,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_ATTEMPTS = 12
U_SAMPLE = 2000
REFIT_GROWTH = 1.05
DEFAULT_PERSON_CACHE_SIZE = 100_000
EXACT_PERSON_COUNT = 10_000
"""Person records are counted exactly up to this many, then estimated (see store.estimate_persons)."""
DEFAULT_MAX_BLOCK_SIZE = 25
"""Blocks of more stored persons than this are not searched (see IdentityService.max_block_size).
A key that many persons share hardly tells a pair apart, and each record has more selective keys:
on the demo population of 100,000 people (few cities, house numbers up to 200) blocks of 25 to 50
persons were three quarters of the persons read per record (45 a record at 50, 11 at 25) and no
true pair depended on them; FEBRL4's blocks are all smaller, so its results are unchanged."""
DEFAULT_OVERSIZED_CACHE_SIZE = 200_000
"""Oversized block keys remembered (about 130 bytes each)."""
PATTERN_SAVE_INTERVAL_S = 1.0
RETRYABLE_SQLSTATES = {"40001", "40P01", "23505"}  # serialization failure, deadlock, unique violation


class Contention(Exception):
    """The database changed under a transaction in a way that invalidates its plan: retry it."""


@dataclass(slots=True)
class Resolution:
    customer_id: str
    created: bool
    matched_by: str
    merged_ids: list[str] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    probability: float = 0.0
    linked: int = 0
    """Link only: how many of the identifiers were newly attached to the customer."""


@dataclass(frozen=True)
class GraphLink:
    row: IdentifierRow
    id_type: str
    value: str
    namespace: str


@dataclass
class Graph:
    customer: Any
    links: list[GraphLink]
    merges: list[Any]
    conflicts: list[Any]
    person_records: int


@dataclass(frozen=True)
class ReKeyOutcome:
    rekeyed: int
    remaining: int
    active_key_id: int
    active_index_key_id: int
    cursor: str
    """Where the next call of the run goes on; empty when the run has read every row."""


def new_customer_id() -> str:
    return str(uuid.uuid4())


def _retryable(error: BaseException) -> bool:
    return isinstance(error, Contention) or sqlstate(error) in RETRYABLE_SQLSTATES


class PatternTally:
    """How many compared pairs had each agreement pattern (EM's data): the store's totals as last
    read, plus what this process compared since.

    New counts are saved in the background, about once a second, in a short transaction of their
    own. Updating the shared counter rows inside every resolve transaction made concurrent batches
    queue on their row locks: it was the statement with the most time in PostgreSQL in the profile
    benchmark. A graceful stop saves them (the service's shutdown step); a crash loses the
    counts not yet saved, which only means EM learns from slightly fewer pairs."""

    def __init__(self, db: Database, store: IdentityStore) -> None:
        self.db = db
        self.store = store
        self._totals: Counter[str] | None = None
        self._unsaved: Counter[str] = Counter()
        self._saving: asyncio.Task[None] | None = None

    async def totals(self, session: AsyncSession) -> Counter[str]:
        if self._totals is None:
            self._totals = Counter(await self.store.pattern_counts(session))
        return self._totals

    def add(self, counts: Counter[str]) -> None:
        if not counts:
            return
        if self._totals is not None:
            self._totals.update(counts)
        self._unsaved.update(counts)
        if self._saving is None or self._saving.done():
            self._saving = asyncio.create_task(self._save())

    async def flush(self) -> None:
        """Wait until everything counted so far is saved."""
        while self._saving is not None and not self._saving.done():
            await self._saving

    async def _save(self) -> None:
        while self._unsaved:
            # Coalesce the counts of the batches of the next moment into one short transaction.
            await asyncio.sleep(PATTERN_SAVE_INTERVAL_S)
            counts, self._unsaved = self._unsaved, Counter()
            try:
                async with self.db.transaction() as session:
                    await self.store.add_pattern_counts(session, counts)
                    stored = Counter(await self.store.pattern_counts(session))
            except Exception:
                log.warning("saving match pattern counts failed; retrying", exc_info=True)
                self._unsaved.update(counts)
                await asyncio.sleep(1.0)
                continue
            # The store's totals include other processes' pairs; add ours not yet saved.
            self._totals = stored + self._unsaved


@dataclass
class _Match:
    """A person record of the batch waiting for probabilistic matching, and what it was compared to."""

    index: int
    person: Person
    compared: list[tuple[str, Pattern]] = field(default_factory=list)  # (customer id, pattern)


class IdentityService:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        keys: KeyMaker,
        *,
        thresholds: Thresholds | None = None,
        limits: dict[str, int] | None = None,
        store: IdentityStore | None = None,
        person_cache_size: int = DEFAULT_PERSON_CACHE_SIZE,
        max_block_size: int = DEFAULT_MAX_BLOCK_SIZE,
        oversized_cache_size: int = DEFAULT_OVERSIZED_CACHE_SIZE,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.keys = keys
        self.thresholds = thresholds or Thresholds()
        self.limits = limits or dict(DEFAULT_LIMITS)
        self.store = store or IdentityStore()
        # Decrypted person records by row id: matching reads the same block members batch after
        # batch, and decrypting them was a fifth of its time. Plaintext stays in this process's
        # memory only (never written anywhere); size 0 turns the cache off.
        self.persons: LruCache[int, Person] = LruCache(person_cache_size)
        # A block key shared by more stored persons than this (a common name's sound with a birth
        # year, a house number in a big city) tells too little to compare a record with all of
        # them; left out, matching costs the same per record whether a thousand or ten million
        # persons are stored. The other, more selective keys of the record are still searched.
        self.max_block_size = max_block_size
        # Blocks found oversized: counting one again costs max_block_size + 1 index entries each
        # time a record has its key, and adding records to it is of no use. In the profile
        # benchmark's population a third of the keys of a batch of new people are oversized.
        self.oversized_blocks: LruCache[bytes, bool] = LruCache(oversized_cache_size)
        # EM over blocked pairs (m and the number of true matches) and u from random pairs combine
        # into the scoring model.
        self.model = MatchModel()
        self._em = MatchModel()
        self._u_random = self.model.u
        self._u_basis = 0
        self._u_loaded = False
        self._fitted_pairs = 0
        self._many_persons = False
        self.pattern_tally = PatternTally(db, self.store)
        self.retries = 0

    # -- resolution ------------------------------------------------------------------------------

    async def resolve_batch(self, records: Sequence[Record]) -> list[Resolution]:
        """Resolve records in one transaction: all of them or (on an error) none."""
        if not records:
            return []
        compared: Counter[str] = Counter()

        async def attempt(session: AsyncSession) -> list[Resolution]:
            compared.clear()
            return await self._resolve(session, records, compared)

        results = await self._with_retries(attempt)
        self.pattern_tally.add(compared)  # pairs of a committed batch only (an attempt may roll back)
        return results

    async def _with_retries(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        for attempt in range(MAX_ATTEMPTS):
            try:
                async with self.db.transaction() as session:
                    return await work(session)
            except Exception as error:
                if not _retryable(error) or attempt == MAX_ATTEMPTS - 1:
                    raise
                self.retries += 1
                await asyncio.sleep(random.uniform(0, 0.005 * 2 ** min(attempt, 6)))
        raise AssertionError("unreachable")

    async def _planner(
        self,
        session: AsyncSession,
        groups: Sequence[Sequence[Key]],
        also_lock: Sequence[str] = (),
        adds_person: Sequence[bool] = (),
    ) -> Planner:
        """What the database says about the keys of these records. Customers that the batch may
        change (attach a key or a person record to, merge) are locked until commit, in one
        statement in id order, and their identifier counts loaded; customers only read are not
        locked (a concurrent merge of one is announced by its event)."""
        owners = await self._owners(session, [key for keys in groups for key in keys])
        changing = set(also_lock)
        owner_of = owners.get
        for index, keys in enumerate(groups):
            found = {owner_of(key.blind_index) for key in keys}
            if (
                len(found) == 1
                and None not in found
                and not (index < len(adds_person) and adds_person[index])
                # A Link (also_lock) merges the keys' customer in unless it is the linked one: that
                # customer changes, and its counts are what the limits and the device rule check.
                and (not also_lock or found <= changing)
            ):
                continue  # the common case: every key already belongs to the same customer, nothing changes
            changing.update(customer for customer in found if customer is not None)
        involved = sorted(changing)
        statuses = await self.store.lock_customers(session, involved)
        if any(statuses.get(customer) != "active" for customer in involved if customer not in also_lock):
            raise Contention("a customer was merged since we looked")
        counts = await self.store.type_counts(session, involved)
        return Planner(owners, counts, new_customer_id, self.limits)

    async def _owners(self, session: AsyncSession, keys: Sequence[Key]) -> dict[bytes, str]:
        """Owner by (active) blind index; while the blind index key rotates, a key still stored
        under an old token is found by that token."""
        if not self.keys.keyring.rotating_index:
            return await self.store.owners(session, [key.blind_index for key in keys])
        active_of = {old: key.blind_index for key in keys for old in key.old_blind_indexes}
        found = await self.store.owners(session, [key.blind_index for key in keys] + list(active_of))
        return {active_of.get(token, token): owner for token, owner in found.items()}

    async def _resolve(
        self, session: AsyncSession, records: Sequence[Record], compared: Counter[str]
    ) -> list[Resolution]:
        # Block keys of every person record, made once (matching and storing both need them) while
        # PostgreSQL looks up the owners of the batch's keys: the transaction is opened first, so
        # that the lookup is the planner's first round trip.
        await driver_connection(session)
        planner, blocks = await while_running(
            self._planner(
                session,
                [record.keys for record in records],
                adds_person=[record.person is not None for record in records],
            ),
            lambda: {
                i: self.keys.block_indexes(record.person)
                for i, record in enumerate(records)
                if record.person is not None
            },
        )
        outcomes = [planner.resolve(record) for record in records]
        review = await self._match(session, records, outcomes, planner, blocks, compared)
        await self._write(
            session, planner, source="resolve", persons=lambda: self._new_persons(records, outcomes, planner, blocks)
        )
        await self.store.add_candidates(
            session,
            [(planner.find(a), planner.find(b), p, w, matching.describe(pattern)) for a, b, p, w, pattern in review],
        )
        return self._results(outcomes, planner)

    def _results(self, outcomes: list[Outcome], planner: Planner) -> list[Resolution]:
        results = []
        reported: set[str] = set()
        for outcome in outcomes:
            customer, new = planner.final(outcome)
            # "batch": another record of the batch decided it; it made the customer this one made
            # first, or it joined the customer this one made to a customer that existed ("new"
            # next to created=False would say both).
            by_batch = customer in reported if new else outcome.matched_by == "new"
            results.append(
                Resolution(
                    customer_id=customer,
                    created=new and customer not in reported,
                    matched_by="batch" if by_batch else outcome.matched_by,
                    merged_ids=outcome.merged_ids,
                    conflicts=_final_conflicts(planner, outcome.conflicts),
                    probability=outcome.probability,
                )
            )
            if new:
                reported.add(customer)
        return results

    async def _write(
        self,
        session: AsyncSession,
        planner: Planner,
        *,
        source: str,
        evidence: str = "",
        persons: Callable[[], list[NewPerson]] = list,
    ) -> None:
        """Write what the planner decided: customers, keys, merges, conflicts, their events, and
        the person records `persons` makes. The keys are encrypted while the customers are
        inserted, and the person records made while the keys are."""
        created = planner.materialized()
        _, new_keys = await while_running(
            self.store.insert_customers(session, created), lambda: self._new_identifiers(planner, source, evidence)
        )
        # A key taken meanwhile fails the insert: the batch is retried (23505).
        _, new_persons = await while_running(self.store.insert_identifiers(session, new_keys), persons)
        envelopes: list[Envelope] = [events.resolved(created)] if created else []
        envelopes += await self._merge_planned(session, planner.merges)
        await self.store.add_conflicts(
            session,
            [
                (c.customer_id, c.other_customer_id, c.id_type, c.blind_index, c.reason)
                for c in _final_conflicts(planner, planner.conflicts)
            ],
        )
        await self.outbox.add_many(session, envelopes)
        await self.store.insert_persons(session, new_persons)

    def _new_identifiers(self, planner: Planner, source: str, evidence: str) -> list[NewIdentifier]:
        """The keys the planner attached, encrypted."""
        return [
            NewIdentifier(
                key.blind_index,
                key.id_type,
                self.keys.keyring.encrypt(key.stored_value().encode(), key.id_type.encode()),
                self.keys.keyring.active_id,
                planner.find(customer),
                source,
                evidence,
                self.keys.keyring.blind_index_key_id,
            )
            # In blind-index order: concurrent batches then wait for each other's keys in the same
            # order on the unique index instead of deadlocking (and waiting a second to find out).
            for key, customer in sorted(planner.attached, key=lambda item: item[0].blind_index)
        ]

    async def _merge_planned(self, session: AsyncSession, merges: Sequence[PlannedMerge]) -> list[Envelope]:
        """A batch's merges in four statements however many there are; each is logged with what it
        moved as if they had been made one after the other (as `_merge_one` would: merges chain)."""
        if not merges:
            return []
        held = await self.store.move_customers(session, final_owners(merges))
        await self.store.set_merged(session, [(merge.absorbed_id, merge.survivor_id) for merge in merges])
        logged = [
            LoggedMerge(str(uuid.uuid4()), merge.survivor_id, merge.absorbed_id, "resolution", merge.evidence, snapshot)
            for merge, snapshot in zip(merges, merge_snapshots(merges, held), strict=True)
        ]
        await self.store.log_merges(session, logged)
        for entry in logged:
            log.info("merged 1 customer(s) into %s (merge %s)", entry.survivor_id, entry.log_id)
        return [events.merged(m.survivor_id, [m.absorbed_id], m.evidence, m.log_id) for m in logged]

    async def _merge_one(
        self, session: AsyncSession, survivor: str, absorbed: list[str], reason: str, evidence: str
    ) -> tuple[str, Envelope]:
        merge_id = str(uuid.uuid4())
        snapshot = await self.store.move_customers(session, dict.fromkeys(absorbed, survivor))
        await self.store.set_merged(session, [(customer, survivor) for customer in absorbed])
        await self.store.add_log(
            session,
            log_id=merge_id,
            kind="merge",
            survivor_id=survivor,
            absorbed_ids=absorbed,
            reason=reason,
            evidence=evidence,
            snapshot=snapshot,
        )
        # Not the evidence: an operator's reason is free text, and may well quote an email address.
        log.info("merged %d customer(s) into %s (merge %s)", len(absorbed), survivor, merge_id)
        return merge_id, events.merged(survivor, absorbed, evidence, merge_id)

    def _new_persons(
        self, records: Sequence[Record], outcomes: list[Outcome], planner: Planner, blocks: dict[int, list[bytes]]
    ) -> list[NewPerson]:
        """The batch's person records, encrypted, each with its (final) customer and block keys."""
        persons = []
        oversized = self.oversized_blocks
        for index, (record, outcome) in enumerate(zip(records, outcomes, strict=True)):
            if record.person is None:
                continue
            persons.append(
                NewPerson(
                    planner.find(outcome.customer_id),
                    self.keys.fingerprint(record.person),
                    self.keys.keyring.encrypt(self.keys.person_plaintext(record.person), PERSON_CONTEXT),
                    self.keys.keyring.active_id,
                    # Not in blocks known to be oversized: they are never searched again.
                    [key for key in blocks[index] if oversized.get(key) is None],
                    self.keys.keyring.blind_index_key_id,
                    self.keys.old_fingerprints(record.person),
                )
            )
        return persons

    # -- probabilistic matching ------------------------------------------------------------------

    async def _match(
        self,
        session: AsyncSession,
        records: Sequence[Record],
        outcomes: list[Outcome],
        planner: Planner,
        blocks: dict[int, list[bytes]],
        compared: Counter[str],
    ) -> list[tuple[str, str, float, float, Pattern]]:
        """Match records that no key resolved against stored person records and earlier records of
        the batch; join them at or above the auto-merge threshold; return review candidates.
        `compared` receives the agreement patterns of the pairs compared (EM's data)."""
        waiting = [
            _Match(i, record.person)
            for i, record in enumerate(records)
            if record.person is not None and outcomes[i].needs_matching
        ]
        if not waiting:
            return []
        old_blocks = {old: active for m in waiting for old, active in self.keys.old_block_indexes(m.person).items()}
        searched = [key for m in waiting for key in blocks[m.index]]
        stored = await self._stored_persons(session, searched, old_blocks)
        self._compare(records, outcomes, waiting, blocks, stored)
        compared.update(matching.pattern_key(p) for m in waiting for _, p in m.compared)
        await self._estimate_u(session, [m.person for m in waiting])
        await self._refit(session, compared, len(waiting))
        await self._prepare_targets(session, waiting, planner)
        return self._decide(outcomes, waiting, planner)

    async def _prepare_targets(self, session: AsyncSession, waiting: list[_Match], planner: Planner) -> None:
        """Stored customers a record may be joined to are changed by it: lock them and load their
        identifier counts (for the limits) like the deterministic path does."""
        targets = {
            customer
            for match in waiting
            for customer, pattern in match.compared
            if not planner.is_new(customer)
            and customer not in planner.counts
            and self.model.probability(pattern) >= self.thresholds.auto_merge
        }
        if not targets:
            return
        statuses = await self.store.lock_customers(session, sorted(targets))
        if any(statuses.get(customer) != "active" for customer in targets):
            raise Contention("a matched customer was merged since we looked")
        planner.counts.update(await self.store.type_counts(session, sorted(targets)))

    async def _stored_persons(
        self, session: AsyncSession, block_keys: list[bytes], old_blocks: dict[bytes, bytes]
    ) -> dict[bytes, list[tuple[str, Person]]]:
        """Stored persons by (active) block key; `old_blocks` maps tokens under old blind index
        keys to the active ones while a rotation runs."""
        by_block: dict[bytes, list[tuple[str, Person]]] = {}
        decrypted: dict[int, Person] = {}
        for block_key, row in await self._block_members(session, block_keys + list(old_blocks)):
            if row.id not in decrypted:
                decrypted[row.id] = self._person(row)
            by_block.setdefault(old_blocks.get(block_key, block_key), []).append((row.customer_id, decrypted[row.id]))
        return by_block

    async def _block_members(self, session: AsyncSession, block_keys: list[bytes]) -> list[tuple[bytes, PersonRow]]:
        """(block key, stored person) for the persons of each block that is not oversized. A block
        found oversized is not asked for again: blocks only ever gain persons (a key rotation moves
        them to the block's key under the new index key, which is searched), so it stays oversized.
        (An erasure that deletes person rows would have to clear `oversized_blocks`.)"""
        oversized = self.oversized_blocks
        searched = [key for key in block_keys if oversized.get(key) is None]
        found = await self.store.persons_in_blocks(session, searched, self.max_block_size)
        for key in found.oversized:
            oversized.put(key, True)
        return found.members

    def _person(self, row: PersonRow) -> Person:
        """A stored person record in plaintext (person rows never change their attributes, so a
        cached one is never stale; rows gone are simply never asked for again)."""
        person = self.persons.get(row.id)
        if person is None:
            person = self.keys.decrypt_person(row.key_id, row.ciphertext)
            self.persons.put(row.id, person)
        return person

    def _compare(
        self,
        records: Sequence[Record],
        outcomes: list[Outcome],
        waiting: list[_Match],
        blocks: dict[int, list[bytes]],
        by_block: dict[bytes, list[tuple[str, Person]]],
    ) -> None:
        """Comparison patterns of each waiting record with every stored person and every earlier
        person of the batch that shares a block key with it (each pair once)."""
        waiting_at = {m.index: m for m in waiting}
        for index, record in enumerate(records):
            if record.person is None:
                continue
            keys = blocks[index]
            match = waiting_at.get(index)
            if match is not None:
                seen: set[int] = set()
                for key in keys:
                    for customer, other in by_block.get(key, ()):
                        if id(other) not in seen:
                            seen.add(id(other))
                            match.compared.append((customer, matching.compare(match.person, other)))
            for key in keys:
                by_block.setdefault(key, []).append((outcomes[index].customer_id, record.person))

    async def _estimate_u(self, session: AsyncSession, batch: list[Person]) -> None:
        """u from random pairs of stored (and this batch's) person records; re-estimated while the
        store is small and has at least doubled since, then kept (a sample of U_SAMPLE is plenty).
        The estimate is stored: other workers and later restarts start from it."""
        if self._u_basis >= U_SAMPLE:
            return
        if not self._u_loaded:
            kept = await self.store.stored_u(session)
            self._u_loaded = True
            if kept is not None and kept[1] > self._u_basis:
                self._u_random, self._u_basis = kept
                if self._u_basis >= U_SAMPLE:
                    return
        stored = await self.store.count_persons(session, U_SAMPLE)
        if stored + len(batch) < 2 * self._u_basis:
            return
        rows = await self.store.sample_persons(session, U_SAMPLE)
        sample = [self.keys.decrypt_person(row.key_id, row.ciphertext) for row in rows] + batch[: U_SAMPLE - len(rows)]
        self._u_random = await asyncio.to_thread(matching.estimate_u, sample)
        self._u_basis = len(sample)
        await self.store.store_u(session, self._u_random, self._u_basis)

    async def _refit(self, session: AsyncSession, new_counts: Counter[str], batch_persons: int) -> None:
        """Re-estimate the model from every pair compared so far (this batch included).

        EM over the blocked pairs estimates m and how many of them are true matches; its u is
        biased (blocked pairs agree on the blocking fields by construction), so scoring uses u from
        random pairs instead, and as prior the chance that two random records match: expected
        matches over all possible pairs of stored records."""
        if not new_counts:
            return
        stored = await self.pattern_tally.totals(session) + new_counts
        pairs = sum(stored.values())
        # EM is Python over every pattern: re-run it once the compared pairs grew by REFIT_GROWTH,
        # not for every batch (a few more pairs barely move the estimates).
        if pairs >= self._fitted_pairs * REFIT_GROWTH or not self._fitted_pairs:
            data = {matching.parse_pattern(key): count for key, count in stored.items()}
            self._em = await asyncio.to_thread(matching.fit_em, data, self._em, 60)
            self._fitted_pairs = pairs
        # Person records are never fewer than once counted (only an erasure would remove some).
        persons = await self.store.estimate_persons(session, 0 if self._many_persons else EXACT_PERSON_COUNT)
        self._many_persons = self._many_persons or persons >= EXACT_PERSON_COUNT
        records = persons + batch_persons
        self.model = MatchModel(
            m=self._em.m,
            u=self._u_random,
            prior=matching.random_pair_prior(self._em.prior * self._em.pairs, records),
            pairs=self._em.pairs,
        )

    def _decide(
        self, outcomes: list[Outcome], waiting: list[_Match], planner: Planner
    ) -> list[tuple[str, str, float, float, Pattern]]:
        review: list[tuple[str, str, float, float, Pattern]] = []
        for match in waiting:
            outcome = outcomes[match.index]
            own = planner.find(outcome.customer_id)
            best: dict[str, tuple[float, Pattern]] = {}
            for customer, pattern in match.compared:
                target = planner.find(customer)
                if target == own:
                    continue
                probability = self.model.probability(pattern)
                if target not in best or best[target][0] < probability:
                    best[target] = (probability, pattern)
            if not best:
                continue
            target, (probability, pattern) = max(best.items(), key=lambda item: item[1][0])
            weight = self.model.weight(pattern)
            if probability >= self.thresholds.auto_merge and planner.is_new(own):
                refusal = planner.merge_refusal(target, own, [])
                if refusal is None:
                    planner.absorb(target, own, f"probabilistic {probability:.4f}")
                    outcome.matched_by = "probabilistic"
                    outcome.probability = probability
                    continue
                outcome.conflicts.append(Conflict(target, own, "person", refusal))
            if probability >= self.thresholds.review:
                review.append((own, target, probability, weight, pattern))
        return review

    # -- explicit links, merges, unmerges --------------------------------------------------------

    async def link(self, customer_id: str, keys: Sequence[Key], evidence: str) -> Resolution:
        async def work(session: AsyncSession) -> Resolution:
            planner = await self._planner(session, [keys], also_lock=[customer_id])
            await self._require_active(session, customer_id)
            before = {key.blind_index: planner.owners.get(key.blind_index) for key in keys}
            outcome = planner.link(customer_id, list(keys))
            await self._write(session, planner, source="link", evidence=evidence[:200])
            # Newly the customer's: keys it did not hold, attached or brought by a customer merged
            # in (not those it held already, repeated ones, or those a refused merge left elsewhere).
            linked = sum(
                1
                for token, owner in before.items()
                if owner != customer_id and planner.find(planner.owners.get(token, "")) == customer_id
            )
            return Resolution(customer_id, False, "link", outcome.merged_ids, outcome.conflicts, linked=linked)

        result: Resolution = await self._with_retries(work)
        return result

    async def _require_active(self, session: AsyncSession, customer_id: str) -> None:
        row = await self.store.customer(session, customer_id)
        if row is None:
            raise NotFound(f"no customer {customer_id}")
        if row.status != "active":
            raise FailedPrecondition(f"customer {customer_id} was merged into {row.merged_into}")

    async def merge(self, survivor_id: str, absorbed_ids: Sequence[str], reason: str) -> str:
        return await self._with_retries(
            lambda session: self._operator_merge(session, survivor_id, absorbed_ids, reason)
        )

    async def _operator_merge(
        self, session: AsyncSession, survivor_id: str, absorbed_ids: Sequence[str], reason: str
    ) -> str:
        """A merge an operator (or an accepted review candidate) asked for; the rules still apply."""
        if survivor_id in absorbed_ids:
            # Would mark the survivor merged into itself: every key it holds would then belong to
            # a customer no resolve can use (each attempt sees it merged and retries).
            raise FailedPrecondition(f"cannot merge customer {survivor_id} into itself")
        absorbed_ids = list(dict.fromkeys(absorbed_ids))  # a repeat would leave an empty snapshot
        everyone = [survivor_id, *absorbed_ids]
        statuses = await self.store.lock_customers(session, everyone)
        for customer in everyone:
            if statuses.get(customer) != "active":
                await self._require_active(session, customer)
        counts = await self.store.type_counts(session, everyone)
        planner = Planner({}, counts, new_customer_id, self.limits)
        for absorbed in absorbed_ids:
            refusal = planner.merge_refusal(survivor_id, absorbed, [])
            if refusal is not None:
                raise FailedPrecondition(f"cannot merge {absorbed}: {refusal}")
            planner.absorb(survivor_id, absorbed, "operator")
        merge_id, envelope = await self._merge_one(
            session, survivor_id, list(absorbed_ids), reason, f"operator: {reason}"
        )
        await self.outbox.add_many(session, [envelope])
        return merge_id

    async def unmerge(self, customer_id: str, merge_id: str, reason: str) -> tuple[str, list[str]]:
        """Reverse a merge: the absorbed customers get back exactly the rows they held before it."""

        async def work(session: AsyncSession) -> tuple[str, list[str]]:
            entry = await self.store.log_entry(session, merge_id, lock=True)
            if entry is None or entry.kind != "merge":
                raise NotFound(f"no merge {merge_id}")
            if entry.survivor_id != customer_id:
                raise FailedPrecondition(f"merge {merge_id} has survivor {entry.survivor_id}, not {customer_id}")
            if entry.reverted_by:
                raise FailedPrecondition(f"merge {merge_id} was already reversed by {entry.reverted_by}")
            restored = list(entry.absorbed_ids)
            moved = await self._give_back(session, entry, customer_id)
            await self.store.set_status(session, restored, "active", None)
            unmerge_id = str(uuid.uuid4())
            await self.store.add_log(
                session,
                log_id=unmerge_id,
                kind="unmerge",
                survivor_id=customer_id,
                absorbed_ids=restored,
                reason=reason,
                evidence=f"reverses {merge_id}",
                snapshot=moved,
                reverts=merge_id,
            )
            await self.outbox.add_many(session, [events.unmerged(customer_id, restored, merge_id, unmerge_id)])
            return unmerge_id, restored

        result: tuple[str, list[str]] = await self._with_retries(work)
        return result

    async def _give_back(self, session: AsyncSession, entry: Row[Any], survivor: str) -> dict[str, Any]:
        """Move what a merge moved back to its absorbed customers; what was moved, by customer.

        The rows are with the survivor, or with whoever absorbed the survivor since (a into b, then
        b into c: a's rows are with c, and reversing a-into-b first is allowed). Rows that a
        reversal logged after the merge gave back stay where they are: reversing b-into-c after
        a-into-b must not take a's rows (in b's snapshot, given back to a since) to b. So do rows
        that are elsewhere by now (split off)."""
        holder = await self.store.current_survivor(session, survivor)
        statuses = await self.store.lock_customers(session, [survivor, holder, *entry.absorbed_ids])
        if statuses.get(holder) != "active":
            raise Contention("the survivor was merged since we looked")
        given_back = await self.store.given_back_since(session, entry.created_at)
        moved = {}
        for absorbed in entry.absorbed_ids:
            rows = {
                kind: [i for i in ids if i not in given_back[kind]] for kind, ids in entry.snapshot[absorbed].items()
            }
            moved[absorbed] = await self.store.move_rows(
                session, absorbed, rows["identifiers"], rows["persons"], held_by=holder
            )
        return moved

    async def split(self, customer_id: str, keys: Sequence[Key], reason: str) -> tuple[str, list[str]]:
        """Move identifiers off a customer into a new customer (logged; Merge puts them back)."""

        async def work(session: AsyncSession) -> tuple[str, list[str]]:
            await self.store.lock_customers(session, [customer_id])
            await self._require_active(session, customer_id)
            tokens = [token for key in keys for token in (key.blind_index, *key.old_blind_indexes)]
            rows = await self.store.identifiers_by_index(session, tokens)
            mine = [row.id for row in rows if row.customer_id == customer_id]
            if len(mine) != len({key.blind_index for key in keys}):
                raise FailedPrecondition(f"not every identifier belongs to customer {customer_id}")
            new_id = new_customer_id()
            await self.store.insert_customers(session, [new_id])
            await self.store.move_rows(session, new_id, mine, [], held_by=customer_id)
            split_id = str(uuid.uuid4())
            await self.store.add_log(
                session,
                log_id=split_id,
                kind="split",
                survivor_id=customer_id,
                absorbed_ids=[new_id],
                reason=reason,
                evidence=f"{len(mine)} identifier(s) split off",
                snapshot={new_id: {"identifiers": mine, "persons": []}},
            )
            await self.outbox.add_many(
                session, [events.resolved([new_id]), events.unmerged(customer_id, [new_id], "", split_id)]
            )
            return split_id, [new_id]

        result: tuple[str, list[str]] = await self._with_retries(work)
        return result

    # -- review queue ----------------------------------------------------------------------------

    async def find_candidates(self, customer_id: str, after_id: int, limit: int) -> tuple[list[Any], list[Any]]:
        """Probable duplicates of the customer (scored now against stored person records and kept
        in the review queue) and the conflicts that involve it; without a customer, the open
        candidates of the whole review queue."""
        if not customer_id:
            async with self.db.sessions() as session:
                return await self.store.open_candidates(session, after_id, limit), []
        async with self.db.transaction() as session:
            if await self.store.customer(session, customer_id) is None:
                raise NotFound(f"no customer {customer_id}")
            await self._score_customer(session, customer_id)
            candidates = await self.store.candidates_of(session, customer_id, after_id, limit)
            conflicts = await self.store.conflicts_of(session, customer_id) if after_id == 0 else []
        return candidates, conflicts

    async def _score_customer(self, session: AsyncSession, customer_id: str) -> None:
        mine = [
            self.keys.decrypt_person(row.key_id, row.ciphertext)
            for row in await self.store.persons_of(session, customer_id)
        ]
        if not mine:
            return
        # The blocks are made from the records again rather than read: person_block has no index by
        # person, and made afresh they include each block's token under old blind index keys
        # while a rotation runs (other customers' records may still be stored under those).
        blocks = {key for person in mine for key in self.keys.block_indexes(person)}
        blocks.update(old for person in mine for old in self.keys.old_block_indexes(person))
        others = await self._block_members(session, list(blocks))
        best: dict[str, tuple[float, Pattern]] = {}
        for _, row in others:
            if row.customer_id == customer_id:
                continue
            other = self._person(row)
            for person in mine:
                pattern = matching.compare(person, other)
                probability = self.model.probability(pattern)
                if row.customer_id not in best or best[row.customer_id][0] < probability:
                    best[row.customer_id] = (probability, pattern)
        await self.store.add_candidates(
            session,
            [
                (customer_id, other, p, self.model.weight(pattern), matching.describe(pattern))
                for other, (p, pattern) in best.items()
                if self.thresholds.review <= p < self.thresholds.auto_merge
            ],
        )

    async def resolve_candidate(self, candidate_id: int, accept: bool, reason: str) -> tuple[Any, str]:
        """Accept (merge the pair, in the same transaction) or reject a review candidate."""

        async def work(session: AsyncSession) -> tuple[Any, str]:
            row = await self.store.candidate(session, candidate_id)
            if row is None:
                raise NotFound(f"no candidate {candidate_id}")
            if row.status != "open":
                raise FailedPrecondition(f"candidate {candidate_id} was already {row.status}")
            merge_id = ""
            if accept:
                why = reason or f"review candidate {candidate_id}"
                merge_id = await self._operator_merge(session, row.other_customer_id, [row.customer_id], why)
            await self.store.decide_candidate(session, candidate_id, "accepted" if accept else "rejected", reason)
            return await self.store.candidate(session, candidate_id), merge_id

        return await self._with_retries(work)

    # -- reads -----------------------------------------------------------------------------------

    async def owner_of(self, key: Key) -> str:
        async with self.db.sessions() as session:
            owners = await self._owners(session, [key])
        if key.blind_index not in owners:
            raise NotFound("no customer has this identifier")
        return owners[key.blind_index]

    async def graph(self, customer_id: str) -> Graph:
        async with self.db.sessions() as session:
            customer = await self.store.customer(session, customer_id)
            if customer is None:
                raise NotFound(f"no customer {customer_id}")
            rows = await self.store.identifiers_of(session, customer_id)
            merges = await self.store.history(session, customer_id)
            conflicts = await self.store.conflicts_of(session, customer_id)
            persons = await self.store.persons_of(session, customer_id)
        links = [self._link(row) for row in rows]
        return Graph(customer, links, merges, conflicts, len(persons))

    def _link(self, row: IdentifierRow) -> GraphLink:
        stored = self.keys.keyring.decrypt(row.key_id, row.ciphertext, row.id_type.encode()).decode()
        namespace, _, value = stored.rpartition("\x1f")
        return GraphLink(row, row.id_type, value, namespace)

    # -- key rotation ----------------------------------------------------------------------------

    async def rekey(self, limit: int, cursor: ReKeyCursor | None = None) -> ReKeyOutcome:
        """Re-encrypt and re-index up to `limit` rows still under an old encryption or blind index
        key with the active keys: the stale rows after `cursor` (None: from the start of a run)."""
        keyring = self.keys.keyring
        active = (keyring.active_id, keyring.blind_index_key_id)
        async with self.db.transaction() as session:
            remaining = cursor.remaining if cursor else await self.store.count_stale(session, *active)
            first, after_id = (TABLES.index(cursor.table), cursor.after_id) if cursor else (0, 0)
            rekeyed = 0
            for table in TABLES[first:]:
                rows = await self.store.stale_rows(session, table, *active, after_id, limit - rekeyed)
                if table == "identifier" and rows:
                    await self.store.rewrite_identifiers(session, rows, *self._rekeyed_identifiers(rows), *active)
                elif rows:
                    await self.store.rewrite_persons(session, rows, self._rekeyed_persons(rows), *active)
                rekeyed += len(rows)
                if rekeyed == limit:
                    following = ReKeyCursor(table, rows[-1].id, max(0, remaining - rekeyed))
                    return ReKeyOutcome(rekeyed, following.remaining, *active, cursor=str(following))
                after_id = 0
            # The run has read every row: count what is left (rows other runs or writers held).
            remaining = await self.store.count_stale(session, *active)
        return ReKeyOutcome(rekeyed, remaining, *active, cursor="")

    def _rekeyed_identifiers(self, rows: Sequence[StaleRow]) -> tuple[list[bytes], list[bytes]]:
        """Ciphertexts and blind indexes under the active keys (the context is the identifier type)."""
        keyring = self.keys.keyring
        ciphertexts, blind_indexes = [], []
        for row in rows:
            value = keyring.decrypt(row.key_id, row.ciphertext, row.context.encode())
            ciphertexts.append(keyring.encrypt(value, row.context.encode()))
            blind_indexes.append(self.keys.stored_key_index(row.context, value.decode()))
        return ciphertexts, blind_indexes

    def _rekeyed_persons(self, rows: Sequence[StaleRow]) -> list[RekeyedPerson]:
        keys = self.keys
        active_index = keys.keyring.blind_index_key_id
        rekeyed = []
        for row in rows:
            person = keys.decrypt_person(row.key_id, row.ciphertext)
            rekeyed.append(
                RekeyedPerson(
                    keys.keyring.encrypt(keys.person_plaintext(person), PERSON_CONTEXT),
                    keys.fingerprint(person),
                    keys.block_indexes(person) if row.index_key_id != active_index else None,
                )
            )
        return rekeyed


def _final_conflicts(planner: Planner, conflicts: list[Conflict]) -> list[Conflict]:
    """The conflicts with the customers they end up between once the batch is planned; a refused
    join of two customers that a later record of the batch joined anyway is no conflict left."""
    final = []
    for conflict in conflicts:
        customer = planner.find(conflict.customer_id)
        other = planner.find(conflict.other_customer_id) if conflict.other_customer_id else ""
        if customer != other:
            final.append(Conflict(customer, other, conflict.id_type, conflict.reason, conflict.blind_index))
    return final
