"""The CheckConsent cache: each customer's records, in memory, bounded (least recently used out);
for a customer merged into another, a redirect to it instead.

Kept exact by invalidation: a local write and every consent.changed message drop the customer
(a merge or its reversal announces the customers it redirects, see events.py).
A read that missed loads from the database; if the customer was invalidated while that load was
in flight, the loaded (possibly stale) records are not cached — a per-customer generation counter
tells.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tailor_platform.lru import LruCache

from tailor_consent.domain.model import ConsentRecord, Key

Records = Mapping[Key, ConsentRecord]


@dataclass(frozen=True, slots=True)
class Redirect:
    """A customer merged into another: its consents are decided by `to`'s."""

    to: str


Entry = Records | Redirect


class ConsentCache:
    def __init__(self, max_customers: int) -> None:
        self.max_customers = max_customers
        self._entries: LruCache[str, Entry] = LruCache(max_customers)
        self._generations: dict[str, int] = {}
        self._epoch = 0

    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    def get(self, customer_id: str) -> Entry | None:
        return self._entries.get(customer_id)

    def ticket(self, customer_id: str) -> tuple[int, int]:
        """Taken before loading from the database; `put` accepts the load only if still current."""
        return (self._epoch, self._generations.get(customer_id, 0))

    def put(self, customer_id: str, entry: Entry, ticket: tuple[int, int]) -> bool:
        if ticket != self.ticket(customer_id):
            return False
        # An evicted customer keeps its generation: dropping it would take the counter back to 0 and
        # let a load that started before an invalidation of it pass as current (invalidate bounds the
        # counters instead).
        self._entries.put(customer_id, entry)
        return True

    def invalidate(self, customer_id: str) -> None:
        self._entries.discard([customer_id])
        self._generations[customer_id] = self._generations.get(customer_id, 0) + 1
        if len(self._generations) > 4 * self.max_customers:
            # Bound the counters too; a new epoch voids every load in flight.
            self._generations.clear()
            self._epoch += 1

    def clear(self) -> None:
        """After a gap in the change feed (NATS reconnect) nothing cached can be trusted."""
        self._entries.clear()
        self._generations.clear()
        self._epoch += 1

    def __len__(self) -> int:
        return len(self._entries)
