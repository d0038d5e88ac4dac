"""Profile use cases: ingestion, identity merges, attributes, and reads.

Ingesting a batch: validate every event (bad ones are rejected alone), resolve all of them with ONE
identity.ResolveBatch call, then one transaction of a few set-based statements: lock the customers,
follow merge aliases, load the customers' trait states, insert the events (a known id is a
duplicate and changes nothing) while folding them in, save the states, and write profile.updated
with the traits that changed to the outbox. When identity is unreachable the valid events are
stored in `pending_event` instead and resolved by `resolve_pending` when it is back: nothing is
dropped.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NamedTuple, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.ext.asyncio import AsyncSession
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.identity.v1.identity_pb2 import Identifier, ResolveRequest
from tailor.profile.v1 import profile_pb2 as pb
from tailor_platform.bus.envelope import new_envelope
from tailor_platform.bus.merges import Merge, Unmerge
from tailor_platform.bus.outbox import Outbox
from tailor_platform.db import Database, sqlstate, while_running
from tailor_platform.protobuf import now_timestamp
from tailor_platform.validation import Validator

from tailor_profile import events
from tailor_profile.clients import IdentityClient, ServiceUnavailable
from tailor_profile.domain.merges import plan_merges
from tailor_profile.domain.model import EventFacts
from tailor_profile.domain.traits import (
    Traits,
    TraitSettings,
    TraitState,
    apply,
    changed_traits,
    combine,
    evaluate,
    prune,
    replay,
)
from tailor_profile.domain.unmerges import (
    IdentifierKey,
    StoredEventIds,
    alias_changes,
    attribute_changes,
    attribute_returns,
    event_moves,
)
from tailor_profile.intake import Candidate, Intake, Rejection, identity_records, resolve_key, resolve_request
from tailor_profile.store import AttributeValue, EventRow, HeldEvent, ProfileStore, SavedState, StoredEvent

log = logging.getLogger(__name__)

T = TypeVar("T")
DEADLOCK_RETRIES = 3
DEADLOCK = "40P01"


class Status(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"
    QUEUED = "queued"


class EventOutcome(NamedTuple):
    """What became of one event of a batch."""

    position: int
    """The event's place in its batch."""
    event_id: str
    status: Status
    customer_id: str = ""
    field: str = ""
    reason: str = ""


@dataclass(frozen=True)
class ProfileView:
    customer_id: str
    state: TraitState | None
    traits: Traits | None
    attributes: list[AttributeValue]
    now: int


class Resolved(NamedTuple):
    candidate: Candidate
    customer_id: str


class TraitChange(NamedTuple):
    customer_id: str
    traits: dict[str, Any]
    """Name -> new value of the traits that changed."""
    events: int
    """The new events that changed them."""


class Folded(NamedTuple):
    states: dict[str, TraitState]
    changes: list[TraitChange]


class ProfileService:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        identity: IdentityClient,
        intake: Intake,
        settings: TraitSettings,
        store: ProfileStore | None = None,
    ) -> None:
        self.db = db
        self.outbox = outbox
        self.identity = identity
        self.intake = intake
        self.settings = settings
        self.store = store or ProfileStore()

    # -- ingestion ----------------------------------------------------------------------------

    async def ingest(self, batch: Sequence[pb.Event], session: AsyncSession | None = None) -> list[EventOutcome]:
        """Ingest a batch; one outcome per event, in order. With `session` (a bus consumer's), all
        writes join that transaction; otherwise the batch commits on its own."""
        now = datetime.now(UTC)
        candidates, rejections = self.intake.check_batch(batch, now)
        outcomes = [_rejected(r) for r in rejections]
        candidates, repeats = _first_of_each_id(candidates)
        stored = await self._resolve_and_store(candidates, now, session) if candidates else []
        outcomes += stored + _repeat_outcomes(repeats, stored)
        return sorted(outcomes, key=lambda outcome: outcome.position)

    async def _resolve_and_store(
        self, candidates: list[Candidate], now: datetime, session: AsyncSession | None, *, queue: bool = True
    ) -> list[EventOutcome]:
        """Resolve through identity and store; when identity is unreachable, queue the events
        (or, with `queue=False`, raise ServiceUnavailable: the caller keeps them where they are)."""
        requests, slot_of = _distinct_requests(candidates)
        try:
            response = await self.identity.resolve_batch(requests)
        except ServiceUnavailable as error:
            if not queue:
                raise
            log.warning("identity unreachable, queueing %d events: %s", len(candidates), error)
            return await self._in_transaction(session, lambda s: self._queue(s, candidates))
        failed = {error.index: error for error in response.errors}
        outcomes = []
        resolved = []
        for candidate, slot in zip(candidates, slot_of, strict=True):
            customer_id = response.results[slot].customer_id if slot < len(response.results) else ""
            problem = failed.get(slot)
            if problem is not None or not customer_id:
                field = f"identifiers.{problem.field}" if problem is not None and problem.field else "identifiers"
                reason = problem.description if problem is not None else "identity resolved no customer"
                outcome = EventOutcome(candidate.position, candidate.event.id, Status.REJECTED, "", field, reason)
                outcomes.append(outcome)
            else:
                resolved.append(Resolved(candidate, customer_id))
        stored = await self._in_transaction(session, lambda s: self.store_resolved(s, resolved, now))
        return outcomes + stored

    async def _in_transaction(self, session: AsyncSession | None, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        if session is not None:
            return await work(session)
        for attempt in range(DEADLOCK_RETRIES):
            try:
                async with self.db.transaction() as own:
                    return await work(own)
            except Exception as error:
                if sqlstate(error) != DEADLOCK or attempt == DEADLOCK_RETRIES - 1:
                    raise
                log.info("deadlock between batches; retrying")
        raise AssertionError("unreachable")

    async def _queue(self, session: AsyncSession, candidates: list[Candidate]) -> list[EventOutcome]:
        known = await self.store.stored_event_ids(session, [c.event.id for c in candidates])
        waiting = [c for c in candidates if c.event.id not in known]
        await self.store.add_pending(session, [(c.event.id, c.event.SerializeToString()) for c in waiting])
        return [
            EventOutcome(c.position, c.event.id, Status.DUPLICATE if c.event.id in known else Status.QUEUED)
            for c in candidates
        ]

    async def store_resolved(
        self, session: AsyncSession, resolved: Sequence[Resolved], now: datetime
    ) -> list[EventOutcome]:
        """Append resolved events to their customers' timelines and fold them into the traits.

        The fold is computed while PostgreSQL inserts the events, as if all of them were new (as
        they almost always are); the insert says which were, and if some were not (re-sent), the
        new ones alone are folded again into the states as stored."""
        if not resolved:
            return []
        customers = {r.customer_id for r in resolved}
        await self.store.lock_customers(session, customers)
        survivors = await self.store.survivors(session, list(customers))
        if survivors:
            await self.store.lock_customers(session, survivors.values())
        rows = [
            EventRow(
                item.candidate.event.id,
                survivors.get(item.customer_id, item.customer_id),
                item.candidate.event.type,
                item.candidate.event.channel,
                item.candidate.facts.at,
                item.candidate.event.SerializeToString(),
            )
            for item in resolved
        ]
        moment = int(now.timestamp())
        batch = _facts_by_customer(rows, resolved)
        saved = await self.store.load_states(session, list(batch))
        new_ids, folded = await while_running(
            self.store.insert_events(session, rows), lambda: self._fold(saved, batch, moment)
        )
        if len(new_ids) < len(rows):
            fresh = _facts_by_customer(rows, resolved, new_ids)
            folded = self._fold(await self.store.load_states(session, list(fresh)), fresh, moment)
        await self._save_and_announce(session, folded, moment)
        return [
            EventOutcome(
                item.candidate.position,
                row.event_id,
                Status.ACCEPTED if row.event_id in new_ids else Status.DUPLICATE,
                row.customer_id,
            )
            for row, item in zip(rows, resolved, strict=True)
        ]

    def _fold(self, saved: Mapping[str, SavedState], batch: Mapping[str, list[EventFacts]], now: int) -> Folded:
        """Fold each customer's new events into its state (the loaded one, changed in place) and
        find the traits that changed since they were last announced (time may have changed some)."""
        states = {}
        changes = []
        for customer_id, facts in batch.items():
            previous = saved.get(customer_id)
            before = self._announced(previous)
            state = states[customer_id] = previous.state if previous is not None else TraitState()
            for fact in facts:
                apply(state, fact, self.settings)
            prune(state, now)
            changed = changed_traits(before, evaluate(state, now, self.settings).flat())
            if changed:
                changes.append(TraitChange(customer_id, changed, len(facts)))
        return Folded(states, changes)

    async def _save_and_announce(self, session: AsyncSession, folded: Folded, now: int) -> None:
        """Save the folded states and put profile.updated for the changes in the outbox (the
        envelopes are made while PostgreSQL saves the states)."""
        if not folded.states:
            return
        at = now_timestamp()
        _, envelopes = await while_running(
            self.store.save_states(session, folded.states, now),
            lambda: [self._updated(c.customer_id, c.traits, "events", c.events, at) for c in folded.changes],
        )
        await self.outbox.add_many(session, envelopes)

    def _announced(self, saved: SavedState | None) -> dict[str, Any]:
        """The traits as profile.updated last announced them (none for a new customer)."""
        return evaluate(saved.state, saved.announced_at, self.settings).flat() if saved is not None else {}

    async def announce_time_changes(self, now: int | None = None, limit: int = 500) -> int:
        """Announce the traits that time alone changed (a rolling window moved on, a day passed
        since the last purchase) for customers whose next such change is due, up to `limit` of
        them; returns how many were due (fewer than `limit`: none are left)."""
        moment = int(datetime.now(UTC).timestamp()) if now is None else now
        async with self.db.transaction() as session:
            due = await self.store.lock_due_for_time_change(session, moment, limit)
            if not due:
                return 0
            saved = await self.store.load_states(session, due)  # as of now, under the lock
            envelopes = []
            at = now_timestamp()
            for customer_id, previous in saved.items():
                before = self._announced(previous)
                prune(previous.state, moment)
                changed = changed_traits(before, evaluate(previous.state, moment, self.settings).flat())
                if changed:
                    envelopes.append(self._updated(customer_id, changed, "time", 0, at))
            await self.store.save_states(session, {c: previous.state for c, previous in saved.items()}, moment)
            await self.outbox.add_many(session, envelopes)
        return len(due)

    def _updated(self, customer_id: str, changed: dict[str, Any], cause: str, count: int, at: Timestamp) -> Envelope:
        """profile.updated; `at` is one Timestamp for every envelope of a batch."""
        return new_envelope(
            events.PROFILE_UPDATED,
            self.outbox.source,
            events.profile_updated(customer_id, changed, cause, count, at),
            customer_id=customer_id,
            time=at,
        )

    async def resolve_pending(self, limit: int = 500) -> int:
        """Resolve and store events queued while identity was unreachable; returns how many were
        handled (0 when none wait or identity is still unreachable)."""
        async with self.db.transaction() as session:
            waiting = await self.store.take_pending(session, limit)
            if not waiting:
                return 0
            batch = [pb.Event.FromString(payload) for _, payload in waiting]
            now = datetime.now(UTC)
            candidates, rejections = self.intake.check_batch(batch, now)
            for rejection in rejections:
                log.error("dropping a queued event that is no longer valid: %s", rejection)
            try:
                outcomes = await self._resolve_and_store(candidates, now, session, queue=False) if candidates else []
            except ServiceUnavailable:
                return 0  # they stay queued
            for outcome in outcomes:
                if outcome.status == Status.REJECTED:
                    log.error("identity rejected queued event %s: %s", outcome.event_id, outcome.reason)
            await self.store.delete_pending(session, [event_id for event_id, _ in waiting])
        return len(waiting)

    async def pending_count(self) -> int:
        async with self.db.sessions() as session:
            return await self.store.count_pending(session)

    # -- identity merges ------------------------------------------------------------------------

    async def merge_many(self, session: AsyncSession, merges: Sequence[Merge]) -> None:
        """Fold absorbed customers into their survivors, exactly as if all their events had been
        ingested under the survivor (trait states are commutative, so combining them is exact).
        Their events stay where they are stored: the alias makes them the survivor's. A batch of
        merges is one round of set-based statements, whatever its size. A merge that identity has
        reversed already (its unmerge was consumed first) is not applied."""
        reversed_ids = await self.store.reversed_merges(session, [merge.merge_id for merge in merges])
        if reversed_ids:
            log.info("skipping %d merge(s) identity has reversed since", len(reversed_ids))
            merges = [merge for merge in merges if merge.merge_id not in reversed_ids]
            if not merges:
                return
        plan = plan_merges(merges)
        if plan is None:  # a customer absorbed twice in the batch: one merge at a time
            for merge in merges:
                await self.merge_many(session, [merge])
            return
        absorbed = list(plan.final)
        await self.store.lock_customers(session, [*plan.survivors, *absorbed])
        saved = await self.store.load_states(session, [*plan.survivors, *absorbed])
        states = {customer: stored.state for customer, stored in saved.items()}
        now = int(datetime.now(UTC).timestamp())
        before = {s: self._announced(saved[s]) for s in plan.survivors if s in saved}
        for survivor, folded in plan.steps:
            merged = states.get(survivor) or TraitState()
            for customer in folded:
                if customer in states:
                    merged = combine(merged, states.pop(customer), self.settings)
            states[survivor] = merged
        await self.store.move_attributes(
            session, {(absorbed, None): survivor for absorbed, survivor in plan.final.items()}
        )
        await self.store.add_aliases(session, plan.final, plan.merge_ids, [survivor for survivor, _ in plan.steps])
        await self.store.delete_states(session, absorbed)
        kept = {s: states[s] for s in plan.survivors if states[s].events or s in before}
        for state in kept.values():
            prune(state, now)
        await self.store.save_states(session, kept, now)
        envelopes = []
        at = now_timestamp()
        for survivor, state in kept.items():
            changed = changed_traits(before.get(survivor, {}), evaluate(state, now, self.settings).flat())
            if changed:
                envelopes.append(self._updated(survivor, changed, "merge", 0, at))
        await self.outbox.add_many(session, envelopes)

    async def separate(self, session: AsyncSession, unmerge: Unmerge) -> None:
        """Identity reversed a merge (or split identifiers off into a new customer): give each
        customer back its events, by who owns their identifiers now (domain/unmerges.py), point
        merge aliases where identity says, and rebuild the traits of every customer that gained
        or lost events from its full timeline; explicit attributes go back to the customer that
        set them (to where it is now). Asks identity, so it fails (and the message is retried)
        while identity is unreachable."""
        if unmerge.merge_id:
            await self.store.add_reversed_merge(session, unmerge.merge_id, unmerge.unmerge_id)
        involved = sorted({unmerge.customer_id, *unmerge.restored_ids})
        await self.store.lock_customers(session, involved)
        stored = await self._events_of(session, involved)
        carried = [StoredEventIds(held.event_id, held.customer_id, _identifier_keys(event)) for held, event in stored]
        owner_of = await self.identity.owners(key for event in carried for key in event.identifiers)
        moves = event_moves(carried, owner_of)
        aliases = await self.store.aliases_involving(session, involved)
        origins = await self.store.attribute_origins(session, involved)
        active_of = await self.identity.active_customers({*aliases, *(o for found in origins.values() for o in found)})
        point, drop = alias_changes({absorbed: active_of[absorbed] for absorbed in aliases if absorbed in active_of})
        returns = attribute_returns(origins, active_of)
        gaining = sorted({*moves.values(), *returns.values()} - set(involved))
        await self.store.lock_customers(session, gaining)  # customers that gain events or attributes
        gained = await self._events_of(session, gaining)
        # Every event of these customers is stored under its owner from now on: the aliases
        # that made events held by absorbed customers theirs change below.
        await self.store.move_events(
            session,
            {
                held.event_id: owner
                for held, _ in [*stored, *gained]
                if (owner := moves.get(held.event_id, held.customer_id)) != held.holder_id
            },
        )
        await self.store.repoint_aliases(session, point, drop)
        attributes = await self._attribute_values(session, [*involved, *gaining])
        await self.store.move_attributes(session, returns)
        changed = attribute_changes(attributes, await self._attribute_values(session, [*involved, *gaining]))
        timelines: dict[str, list[pb.Event]] = {customer: [] for customer in [*involved, *gaining]}
        for held, event in [*stored, *gained]:
            timelines[moves.get(held.event_id, held.customer_id)].append(event)
        await self._rebuild(session, timelines, "unmerge", changed)
        log.info(
            "separated %s from %s: %d event(s) moved, attributes of %d origin(s) returned, %d alias(es) "
            "repointed, %d dropped",
            ", ".join(unmerge.restored_ids),
            unmerge.customer_id,
            len(moves),
            len(returns),
            len(point),
            len(drop),
        )

    async def _attribute_values(self, session: AsyncSession, customers: Sequence[str]) -> dict[str, dict[str, str]]:
        found = await self.store.attributes_of(session, customers)
        return {customer: {name: a.value for name, a in values.items()} for customer, values in found.items()}

    async def _events_of(self, session: AsyncSession, customers: Sequence[str]) -> list[tuple[HeldEvent, pb.Event]]:
        if not customers:
            return []
        return [(held, pb.Event.FromString(held.payload)) for held in await self.store.events_of(session, customers)]

    async def _rebuild(
        self,
        session: AsyncSession,
        timelines: dict[str, list[pb.Event]],
        cause: str,
        also_changed: Mapping[str, dict[str, Any]] | None = None,
    ) -> None:
        """Recompute the trait states of these (locked) customers from their full timelines and
        announce what changed since their last announcement (and `also_changed`: other changes
        of theirs, such as attributes)."""
        customers = list(timelines)
        saved = await self.store.load_states(session, customers)
        now = int(datetime.now(UTC).timestamp())
        facts: dict[str, list[EventFacts]] = {customer: [] for customer in customers}
        for customer, timeline in timelines.items():
            for event in timeline:
                fact = self.intake.facts(Validator(), event, now)
                if fact is None:  # stored when valid; only a since-removed currency could do this
                    log.error("stored event %s can no longer be read into traits; left out", event.id)
                    continue
                facts[customer].append(fact)
        states = {customer: replay(found, self.settings, now) for customer, found in facts.items() if found}
        await self.store.delete_states(session, [customer for customer in customers if customer not in states])
        await self.store.save_states(session, states, now)
        empty = evaluate(TraitState(), now, self.settings).flat()
        envelopes = []
        at = now_timestamp()
        for customer in customers:
            state = states.get(customer)
            changed = dict((also_changed or {}).get(customer, {}))
            if state is not None or customer in saved:  # else: no events before or after, no traits
                after = evaluate(state, now, self.settings).flat() if state is not None else empty
                changed.update(changed_traits(self._announced(saved.get(customer)), after))
            if changed:
                envelopes.append(self._updated(customer, changed, cause, 0, at))
        await self.outbox.add_many(session, envelopes)

    # -- attributes and reads -------------------------------------------------------------------

    async def update_attributes(self, customer_id: str, values: Sequence[AttributeValue]) -> str:
        """Returns the customer the attributes landed on (the survivor if it was merged away;
        they remain the named customer's, should identity separate the two again)."""
        async with self.db.transaction() as session:
            await self.store.lock_customers(session, [customer_id])
            holder = (await self.store.survivors(session, [customer_id])).get(customer_id, customer_id)
            if await self.store.upsert_attributes(session, holder, values, origin_id=customer_id):
                current = (await self._attribute_values(session, [holder])).get(holder, {})
                update = {f"attribute.{v.name}": current.get(v.name, "") for v in values}
                await self.outbox.add_many(session, [self._updated(holder, update, "attributes", 0, now_timestamp())])
        return holder

    async def profile(self, customer_id: str) -> ProfileView:
        customer_id, state, attributes = await self.store.profile_of(self.db, customer_id)
        now = int(datetime.now(UTC).timestamp())
        traits = evaluate(state, now, self.settings) if state is not None else None
        return ProfileView(customer_id, state, traits, attributes, now)

    async def customer_by_identifier(self, identifier: Identifier) -> str | None:
        return await self.identity.customer_by_identifier(identifier)

    async def timeline(self, customer_id: str, **filters: Any) -> tuple[str, list[StoredEvent]]:
        async with self.db.sessions() as session:
            customer_id = (await self.store.survivors(session, [customer_id])).get(customer_id, customer_id)
            return customer_id, await self.store.timeline(session, customer_id, **filters)


def _identifier_keys(event: pb.Event) -> list[IdentifierKey]:
    return [IdentifierKey(i.type, i.value, i.namespace) for i in identity_records(event)]


def _rejected(rejection: Rejection) -> EventOutcome:
    return EventOutcome(rejection.position, rejection.event_id, Status.REJECTED, "", rejection.field, rejection.reason)


def _distinct_requests(candidates: Sequence[Candidate]) -> tuple[list[ResolveRequest], list[int]]:
    """One resolve record per distinct (identifiers, person) of the batch, and each candidate's
    record: a session's many events usually carry the same identifiers, and they resolve alike,
    so identity does that work once (the batch is still one ResolveBatch call)."""
    slots: dict[tuple[Any, ...], int] = {}
    requests: list[ResolveRequest] = []
    slot_of = []
    for candidate in candidates:
        key = resolve_key(candidate.event)
        slot = slots.get(key)
        if slot is None:
            slot = slots[key] = len(requests)
            requests.append(resolve_request(candidate.event))
        slot_of.append(slot)
    return requests, slot_of


def _repeat_outcomes(repeats: list[Candidate], firsts: list[EventOutcome]) -> list[EventOutcome]:
    """A repeat of an id earlier in the batch is a duplicate of what that event became; when
    identity rejected it, nothing was stored, and the repeat is rejected for the same reason."""
    rejected = {o.event_id: o for o in firsts if o.status == Status.REJECTED}
    outcomes = []
    for repeat in repeats:
        first = rejected.get(repeat.event.id)
        if first is None:
            outcomes.append(EventOutcome(repeat.position, repeat.event.id, Status.DUPLICATE))
        else:
            outcomes.append(first._replace(position=repeat.position))
    return outcomes


def _facts_by_customer(
    rows: Sequence[EventRow], resolved: Sequence[Resolved], only: set[str] | None = None
) -> dict[str, list[EventFacts]]:
    """The events of a batch by the customer they are stored under (only those whose ids are in
    `only`, if given)."""
    grouped: dict[str, list[EventFacts]] = defaultdict(list)
    for row, item in zip(rows, resolved, strict=True):
        if only is None or row.event_id in only:
            grouped[row.customer_id].append(item.candidate.facts)
    return grouped


def _first_of_each_id(candidates: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
    """Events of the batch with a new id, and repeats of an id earlier in the same batch."""
    seen: set[str] = set()
    first: list[Candidate] = []
    repeats: list[Candidate] = []
    for candidate in candidates:
        (repeats if candidate.event.id in seen else first).append(candidate)
        seen.add(candidate.event.id)
    return first, repeats
