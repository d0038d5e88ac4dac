"""Separating customers again when identity reverses a merge or splits identifiers off.

Profile does not record which customer an event first resolved to, and that would not be enough
anyway: events that arrived after the merge resolved to the survivor whatever identifiers they
carried. So events are attributed again by who owns their identifiers now (identity's answer):

- an event stays on its customer when that customer owns one of its identifiers (an event that
  carried identifiers of both customers is the evidence that joined them; it stays where it is);
- otherwise it moves to the owner of its strongest identifier that has one, in identity's priority
  order (loyalty id, POS number, external id, email, phone, then anonymous device id);
- an event none of whose identifiers identity knows stays where it is.

Merge aliases (absorbed id -> survivor) follow identity too: each points at the active customer
identity now says it is part of, and is dropped for a customer that is active itself again.

Explicit attributes carry the customer that set them (their origin) through merges; each goes
back to the active customer its origin is now (or is part of), like the aliases.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

PRIORITY = ("loyalty_id", "pos_customer_id", "external", "email", "phone", "device_id")
"""Identity's order (tailor_identity.domain.model.PRIORITY): which identifier decides."""
_RANK = {id_type: rank for rank, id_type in enumerate(PRIORITY)}


class IdentifierKey(NamedTuple):
    """An identifier as an event carries it (identity normalizes it when asked)."""

    type: str
    value: str
    namespace: str = ""


class StoredEventIds(NamedTuple):
    event_id: str
    customer_id: str
    identifiers: Sequence[IdentifierKey]


def owner_now(customer_id: str, identifiers: Sequence[IdentifierKey], owner_of: Mapping[IdentifierKey, str]) -> str:
    """The customer an event on `customer_id` belongs to, given the owners identity knows."""
    known = [key for key in identifiers if key in owner_of]
    if not known or any(owner_of[key] == customer_id for key in known):
        return customer_id
    return owner_of[min(known, key=lambda key: _RANK.get(key.type, len(PRIORITY)))]


def event_moves(events: Iterable[StoredEventIds], owner_of: Mapping[IdentifierKey, str]) -> dict[str, str]:
    """Event id -> the customer it moves to, for the events that move."""
    moves = {}
    for event in events:
        owner = owner_now(event.customer_id, event.identifiers, owner_of)
        if owner != event.customer_id:
            moves[event.event_id] = owner
    return moves


def alias_changes(active_of: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """From absorbed id -> the active customer identity says it is now part of: the aliases to
    point there, and the absorbed ids active themselves again (their aliases are dropped)."""
    point = {absorbed: active for absorbed, active in active_of.items() if active != absorbed}
    drop = [absorbed for absorbed, active in active_of.items() if active == absorbed]
    return point, drop


def attribute_returns(origins: Mapping[str, Iterable[str]], active_of: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """From holder -> the customers whose attributes it holds, and origin -> the active customer
    identity says it is now: (holder, origin) -> where those attributes go, for the ones that move.
    Origins identity does not know stay where they are."""
    return {
        (holder, origin): active_of[origin]
        for holder, found in origins.items()
        for origin in sorted(found)
        if active_of.get(origin, holder) != holder
    }


def attribute_changes(
    before: Mapping[str, Mapping[str, str]], after: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """Customer -> {"attribute.<name>": new value ("" when gone)} for the attributes whose value
    changed, as profile.updated announces them."""
    changes = {}
    for customer in sorted({*before, *after}):
        old, new = before.get(customer, {}), after.get(customer, {})
        changed = {
            f"attribute.{name}": new.get(name, "") for name in sorted({*old, *new}) if old.get(name) != new.get(name)
        }
        if changed:
            changes[customer] = changed
    return changes
