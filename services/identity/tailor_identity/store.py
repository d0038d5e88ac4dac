"""Identity queries. Every batch operation is one set-based statement (arrays through `unnest`),
never a round trip per record; every method runs in the caller's session and transaction."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession
from tailor_platform.db import driver_connection

from tailor_identity.domain.rekey import TABLES
from tailor_identity.domain.resolution import Moved, nothing_moved
from tailor_identity.tables import Base

__all__ = ["Base", "IdentifierRow", "IdentityStore", "PersonRow", "RekeyedPerson", "StaleRow"]


BOTH_ACTIVE = (
    "JOIN customer one ON one.id = c.customer_id AND one.status = 'active' "
    "JOIN customer other ON other.id = c.other_customer_id AND other.status = 'active' AND other.id <> one.id"
)
"""Review candidates whose customers are both still active: once either is merged away (by another
path, or by a decided candidate), the pair is no longer a question for a reviewer. Nor is a
customer paired with itself (rows stored before add_candidates refused those)."""


@dataclass(frozen=True)
class IdentifierRow:
    id: int
    blind_index: bytes
    id_type: str
    ciphertext: bytes
    key_id: int
    customer_id: str
    source: str
    evidence: str
    created_at: datetime


class BlockSearch(NamedTuple):
    members: list[tuple[bytes, PersonRow]]
    """(block key, stored person) for each person of each block searched."""
    oversized: list[bytes]
    """The blocks left out: more stored persons than the limit."""


class PersonRow(NamedTuple):
    """(A named tuple: a matching batch reads thousands.)"""

    id: int
    customer_id: str
    ciphertext: bytes
    key_id: int


@dataclass(frozen=True)
class NewIdentifier:
    blind_index: bytes
    id_type: str
    ciphertext: bytes
    key_id: int
    customer_id: str
    source: str
    evidence: str
    index_key_id: int


@dataclass(frozen=True)
class NewPerson:
    customer_id: str
    fingerprint: bytes
    ciphertext: bytes
    key_id: int
    block_keys: list[bytes]
    index_key_id: int
    old_fingerprints: tuple[bytes, ...] = ()
    """Its fingerprints under old blind index keys, while a rotation runs (the same person may be
    stored under one of them)."""


@dataclass(frozen=True)
class StaleRow:
    """A row to re-key: its plaintext's context, ciphertext and the keys it is under."""

    id: int
    context: str
    ciphertext: bytes
    key_id: int
    index_key_id: int
    token: bytes
    """Its lookup token as stored: the blind index of an identifier, the fingerprint of a person."""


@dataclass(frozen=True)
class RekeyedPerson:
    """A person row under the active keys."""

    ciphertext: bytes
    fingerprint: bytes
    blocks: list[bytes] | None
    """Its block tokens under the active blind index key; None when that is the key it is under
    already (only the encryption key changed): its stored blocks stay as they are."""


def _column(rows: Sequence[Any], name: str) -> list[Any]:
    return [getattr(row, name) for row in rows]


class LoggedMerge(NamedTuple):
    log_id: str
    survivor_id: str
    absorbed_id: str
    reason: str
    evidence: str
    snapshot: dict[str, Moved]


class IdentityStore:
    # -- deterministic resolution ----------------------------------------------------------------

    async def owners(self, session: AsyncSession, blind_indexes: Sequence[bytes]) -> dict[bytes, str]:
        """Which customer owns each of these keys (keys nobody owns are absent)."""
        if not blind_indexes:
            return {}
        # The hot path: straight to the driver (same connection and transaction), and two arrays
        # rather than a row object per key (decoding those was half of the query's client time).
        driver = await driver_connection(session)
        row = await driver.fetchrow(
            "SELECT array_agg(blind_index), array_agg(customer_id) FROM identifier "
            "WHERE blind_index = ANY($1::bytea[])",
            list(blind_indexes),
        )
        assert row is not None  # an aggregate always returns its row
        found, owners = row
        return dict(zip(found, owners, strict=True)) if found else {}

    async def lock_customers(self, session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, str]:
        """Lock the customers (in id order, so concurrent batches cannot deadlock on them); their status."""
        if not customer_ids:
            return {}
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT id, status FROM customer WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE",
            sorted(set(customer_ids)),
        )
        return {row[0]: row[1] for row in rows}

    async def type_counts(self, session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, Counter[str]]:
        counts: dict[str, Counter[str]] = {customer: Counter() for customer in customer_ids}
        if not customer_ids:
            return counts
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT customer_id, id_type, count(*) FROM identifier "
            "WHERE customer_id = ANY($1::text[]) GROUP BY customer_id, id_type",
            list(customer_ids),
        )
        for customer_id, id_type, count in rows:
            counts[customer_id][id_type] = count
        return counts

    async def insert_customers(self, session: AsyncSession, customer_ids: Sequence[str]) -> None:
        if customer_ids:
            driver = await driver_connection(session)
            await driver.execute("INSERT INTO customer (id) SELECT unnest($1::text[])", list(customer_ids))

    async def insert_identifiers(self, session: AsyncSession, rows: Sequence[NewIdentifier]) -> None:
        """Insert keys. A key another transaction took since we looked fails the statement (unique
        violation, SQLSTATE 23505) and the caller retries its whole batch. Not ON CONFLICT DO
        NOTHING: its extra index probe per row was a quarter of this insert's time, to spare an
        error that only a race between two batches with the same new key raises."""
        if not rows:
            return
        driver = await driver_connection(session)
        await driver.execute(
            "INSERT INTO identifier (blind_index, id_type, ciphertext, key_id, customer_id, source, evidence, "
            "index_key_id) SELECT *, $8::int FROM unnest($1::bytea[], $2::text[], $3::bytea[], $4::int[], "
            "$5::text[], $6::text[], $7::text[])",
            _column(rows, "blind_index"),
            _column(rows, "id_type"),
            _column(rows, "ciphertext"),
            _column(rows, "key_id"),
            _column(rows, "customer_id"),
            _column(rows, "source"),
            _column(rows, "evidence"),
            rows[0].index_key_id,
        )

    # -- merges ----------------------------------------------------------------------------------

    async def move_customers(self, session: AsyncSession, owners: dict[str, str]) -> dict[str, Moved]:
        """Move everything each customer of `owners` holds to its new owner, one statement per
        table however many customers; returns the ids each of them held, in order."""
        driver = await driver_connection(session)
        held = {customer: nothing_moved() for customer in owners}
        for table, kind in (("identifier", "identifiers"), ("person", "persons")):
            rows = await driver.fetch(
                f"UPDATE {table} t SET customer_id = m.owner FROM unnest($1::text[], $2::text[]) AS m(customer, owner) "
                "WHERE t.customer_id = m.customer RETURNING t.id, m.customer",
                list(owners),
                list(owners.values()),
            )
            for row_id, customer in sorted((row[0], row[1]) for row in rows):
                held[customer][kind].append(row_id)
        return held

    async def move_rows(
        self, session: AsyncSession, to_id: str, identifier_ids: list[int], person_ids: list[int], *, held_by: str
    ) -> dict[str, list[int]]:
        """Move these rows to `to_id`, those of them `held_by` holds (a row elsewhere by now, split
        off for instance, stays where it is); returns the ids moved."""
        moved_identifiers = await session.scalars(
            text(
                "UPDATE identifier SET customer_id = :to WHERE id = ANY(CAST(:ids AS bigint[])) AND customer_id = :by "
                "RETURNING id"
            ),
            {"to": to_id, "ids": identifier_ids, "by": held_by},
        )
        identifiers = sorted(moved_identifiers)
        moved_persons = await session.scalars(
            text(
                "UPDATE person SET customer_id = :to WHERE id = ANY(CAST(:ids AS bigint[])) AND customer_id = :by "
                "RETURNING id"
            ),
            {"to": to_id, "ids": person_ids, "by": held_by},
        )
        return {"identifiers": identifiers, "persons": sorted(moved_persons)}

    async def given_back_since(self, session: AsyncSession, since: datetime) -> dict[str, set[int]]:
        """The identifier and person rows that reversals logged after `since` gave back."""
        rows = await session.scalars(
            text("SELECT snapshot FROM merge_log WHERE kind = 'unmerge' AND created_at > :since"), {"since": since}
        )
        given: dict[str, set[int]] = {"identifiers": set(), "persons": set()}
        for snapshot in rows:
            for moved in snapshot.values():
                given["identifiers"].update(moved["identifiers"])
                given["persons"].update(moved["persons"])
        return given

    async def current_survivor(self, session: AsyncSession, customer_id: str) -> str:
        """The customer that holds what `customer_id` held: itself while active, else the end of
        its chain of merges (a merged into b, b into c: c)."""
        found = await session.scalar(
            text(
                "WITH RECURSIVE chain(id, merged_into, depth) AS ("
                "SELECT id, merged_into, 0 FROM customer WHERE id = :id UNION ALL "
                "SELECT c.id, c.merged_into, chain.depth + 1 FROM customer c JOIN chain ON c.id = chain.merged_into "
                "WHERE chain.depth < 1000) "
                "SELECT id FROM chain ORDER BY depth DESC LIMIT 1"
            ),
            {"id": customer_id},
        )
        return str(found) if found is not None else customer_id

    async def set_status(
        self, session: AsyncSession, customer_ids: Sequence[str], status: str, merged_into: str | None
    ) -> None:
        await session.execute(
            text("UPDATE customer SET status = :status, merged_into = :into WHERE id = ANY(CAST(:ids AS text[]))"),
            {"status": status, "into": merged_into, "ids": list(customer_ids)},
        )

    async def set_merged(self, session: AsyncSession, merges: Sequence[tuple[str, str]]) -> None:
        """Mark customers merged, each into its survivor: (absorbed, survivor) pairs."""
        driver = await driver_connection(session)
        await driver.execute(
            "UPDATE customer c SET status = 'merged', merged_into = m.survivor "
            "FROM unnest($1::text[], $2::text[]) AS m(absorbed, survivor) WHERE c.id = m.absorbed",
            [absorbed for absorbed, _ in merges],
            [survivor for _, survivor in merges],
        )

    async def log_merges(self, session: AsyncSession, merges: Sequence[LoggedMerge]) -> None:
        """Log merges of one customer each (as `add_log` would, one statement for all)."""
        driver = await driver_connection(session)
        await driver.execute(
            "INSERT INTO merge_log (id, kind, survivor_id, absorbed_ids, reason, evidence, snapshot) "
            "SELECT i, 'merge', s, ARRAY[a], r, e, CAST(sn AS jsonb) FROM "
            "unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[]) AS m(i, s, a, r, e, sn)",
            [m.log_id for m in merges],
            [m.survivor_id for m in merges],
            [m.absorbed_id for m in merges],
            [m.reason for m in merges],
            [m.evidence for m in merges],
            [_json(m.snapshot) for m in merges],
        )

    async def add_log(
        self,
        session: AsyncSession,
        *,
        log_id: str,
        kind: str,
        survivor_id: str,
        absorbed_ids: list[str],
        reason: str,
        evidence: str,
        snapshot: dict[str, Any],
        reverts: str | None = None,
    ) -> None:
        await session.execute(
            text(
                "INSERT INTO merge_log (id, kind, survivor_id, absorbed_ids, reason, evidence, snapshot, reverts) "
                "VALUES (:id, :kind, :survivor, CAST(:absorbed AS text[]), :reason, :evidence, "
                "CAST(:snapshot AS jsonb), :reverts)"
            ),
            {
                "id": log_id,
                "kind": kind,
                "survivor": survivor_id,
                "absorbed": absorbed_ids,
                "reason": reason,
                "evidence": evidence,
                "snapshot": _json(snapshot),
                "reverts": reverts,
            },
        )
        if reverts:
            await session.execute(
                text("UPDATE merge_log SET reverted_by = :by WHERE id = :id"), {"by": log_id, "id": reverts}
            )

    async def log_entry(self, session: AsyncSession, log_id: str, *, lock: bool = False) -> Row[Any] | None:
        suffix = " FOR UPDATE" if lock else ""
        result = await session.execute(text("SELECT * FROM merge_log WHERE id = :id" + suffix), {"id": log_id})
        return result.first()

    async def history(self, session: AsyncSession, customer_id: str) -> list[Row[Any]]:
        rows = await session.execute(
            text(
                "SELECT * FROM merge_log WHERE survivor_id = :id OR CAST(:id AS text) = ANY(absorbed_ids) "
                "ORDER BY created_at, id"
            ),
            {"id": customer_id},
        )
        return list(rows)

    # -- conflicts and candidates ----------------------------------------------------------------

    async def add_conflicts(self, session: AsyncSession, conflicts: Sequence[tuple[str, str, str, bytes, str]]) -> None:
        """(customer_id, other_customer_id, id_type, blind_index, reason); repeats are ignored."""
        if not conflicts:
            return
        await session.execute(
            text(
                "INSERT INTO conflict (customer_id, other_customer_id, id_type, blind_index, reason) "
                "SELECT * FROM unnest(CAST(:c AS text[]), CAST(:o AS text[]), CAST(:t AS text[]), "
                "CAST(:b AS bytea[]), CAST(:r AS text[])) ON CONFLICT DO NOTHING"
            ),
            {
                "c": [c[0] for c in conflicts],
                "o": [c[1] for c in conflicts],
                "t": [c[2] for c in conflicts],
                "b": [c[3] for c in conflicts],
                "r": [c[4] for c in conflicts],
            },
        )

    async def conflicts_of(self, session: AsyncSession, customer_id: str) -> list[Row[Any]]:
        """The conflicts of the customer and of every customer merged into it (transitively): what
        its rules refused stays visible after a merge and goes back with an unmerge. A conflict
        between two customers now merged into one is no conflict left."""
        rows = await session.execute(
            text(
                "WITH RECURSIVE held(id) AS (SELECT CAST(:id AS text) UNION "
                "SELECT c.id FROM customer c JOIN held h ON c.merged_into = h.id) "
                "SELECT * FROM conflict WHERE (customer_id IN (SELECT id FROM held) "
                "OR other_customer_id IN (SELECT id FROM held)) "
                "AND NOT (customer_id IN (SELECT id FROM held) AND other_customer_id IN (SELECT id FROM held)) "
                "ORDER BY created_at, id"
            ),
            {"id": customer_id},
        )
        return list(rows)

    async def add_candidates(
        self, session: AsyncSession, candidates: Sequence[tuple[str, str, float, float, dict[str, str]]]
    ) -> None:
        """(customer_id, other_customer_id, probability, weight, comparisons); a pair seen again, in
        either order, keeps its best score and stays decided if it was. A customer is never its
        own candidate (two customers of a batch joined after one of them was scored against the
        other; accepting that pair would merge the customer into itself)."""
        pairs = _unique_pairs(candidates)
        if not pairs:
            return
        # The conflict target is the unordered pair: the pair seen again the other way round
        # updates its row (a rejected pair must not come back when the other customer is scored).
        await session.execute(
            text(
                "INSERT INTO candidate (customer_id, other_customer_id, probability, weight, comparisons) "
                "SELECT a, b, p, w, CAST(j AS jsonb) FROM unnest(CAST(:a AS text[]), CAST(:b AS text[]), "
                "CAST(:p AS float8[]), CAST(:w AS float8[]), CAST(:j AS text[])) AS x(a, b, p, w, j) "
                "ON CONFLICT (least(customer_id, other_customer_id), greatest(customer_id, other_customer_id)) "
                "DO UPDATE SET probability = greatest(candidate.probability, excluded.probability), "
                "weight = greatest(candidate.weight, excluded.weight)"
            ),
            {
                "a": [c[0] for c in pairs],
                "b": [c[1] for c in pairs],
                "p": [c[2] for c in pairs],
                "w": [c[3] for c in pairs],
                "j": [_json(c[4]) for c in pairs],
            },
        )

    async def candidates_of(self, session: AsyncSession, customer_id: str, after_id: int, limit: int) -> list[Row[Any]]:
        rows = await session.execute(
            text(
                f"SELECT c.* FROM candidate c {BOTH_ACTIVE} "
                "WHERE (c.customer_id = :id OR c.other_customer_id = :id) AND c.id > :after "
                "AND c.status = 'open' ORDER BY c.id LIMIT :limit"
            ),
            {"id": customer_id, "after": after_id, "limit": limit},
        )
        return list(rows)

    async def open_candidates(self, session: AsyncSession, after_id: int, limit: int) -> list[Row[Any]]:
        """The review queue: open candidates of every customer, oldest first (ix_candidate_open)."""
        rows = await session.execute(
            text(
                f"SELECT c.* FROM candidate c {BOTH_ACTIVE} "
                "WHERE c.status = 'open' AND c.id > :after ORDER BY c.id LIMIT :limit"
            ),
            {"after": after_id, "limit": limit},
        )
        return list(rows)

    async def candidate(self, session: AsyncSession, candidate_id: int) -> Row[Any] | None:
        result = await session.execute(text("SELECT * FROM candidate WHERE id = :id FOR UPDATE"), {"id": candidate_id})
        return result.first()

    async def decide_candidate(self, session: AsyncSession, candidate_id: int, status: str, reason: str) -> None:
        await session.execute(
            text("UPDATE candidate SET status = :s, reason = :r, decided_at = now() WHERE id = :id"),
            {"s": status, "r": reason, "id": candidate_id},
        )

    # -- person records and probabilistic matching -----------------------------------------------

    async def insert_persons(self, session: AsyncSession, persons: Sequence[NewPerson]) -> None:
        """Store person records not already stored for their customer (under their fingerprint,
        or an old one while the blind index key rotates), with their block keys."""
        if not persons:
            return
        old = [(number, token) for number, p in enumerate(persons, start=1) for token in p.old_fingerprints]
        also_old = (
            "OR p.fingerprint IN (SELECT o.f FROM unnest($6::bigint[], $7::bytea[]) AS o(n, f) WHERE o.n = x.n)"
            if old
            else ""
        )
        # A batch of new people's hot path: straight to the driver.
        driver = await driver_connection(session)
        inserted = await driver.fetch(
            "INSERT INTO person (customer_id, fingerprint, ciphertext, key_id, index_key_id) "
            "SELECT c, f, ct, k, $5::int FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int[]) "
            "WITH ORDINALITY AS x(c, f, ct, k, n) "
            f"WHERE NOT EXISTS (SELECT 1 FROM person p WHERE p.customer_id = x.c AND (p.fingerprint = x.f {also_old})) "
            "ORDER BY n RETURNING id, customer_id, fingerprint",
            _column(persons, "customer_id"),
            _column(persons, "fingerprint"),
            _column(persons, "ciphertext"),
            _column(persons, "key_id"),
            persons[0].index_key_id,
            *(([number for number, _ in old], [token for _, token in old]) if old else ()),
        )
        ids = {(customer_id, fingerprint): person_id for person_id, customer_id, fingerprint in inserted}
        block_keys: list[bytes] = []
        person_ids: list[int] = []
        for new in persons:
            person_id = ids.pop((new.customer_id, new.fingerprint), None)
            if person_id is None:
                continue
            block_keys.extend(new.block_keys)
            person_ids.extend([person_id] * len(new.block_keys))
        if block_keys:
            # No ON CONFLICT (its extra index probe was a third of this insert's time): the persons
            # were just inserted, and a person's block keys are distinct (matching.block_keys).
            await driver.execute(
                "INSERT INTO person_block (block_key, person_id) SELECT * FROM unnest($1::bytea[], $2::bigint[])",
                block_keys,
                person_ids,
            )

    async def persons_in_blocks(
        self, session: AsyncSession, block_keys: Sequence[bytes], max_block: int
    ) -> BlockSearch:
        """The stored persons of each block, leaving out blocks of more than `max_block` persons
        (reported as oversized). A block's size is counted in its index entries first, at most
        `max_block` + 1 of them, so an oversized block costs a few index pages and none of its
        person rows."""
        if not block_keys:
            return BlockSearch([], [])
        # The matching hot path: straight to the driver, no row objects. An oversized block comes
        # back as one row without a person.
        driver = await driver_connection(session)
        rows = await driver.fetch(
            "SELECT k.block_key, p.id, p.customer_id, p.ciphertext, p.key_id FROM unnest($1::bytea[]) AS k(block_key) "
            "CROSS JOIN LATERAL (SELECT count(*) AS n FROM "
            "(SELECT FROM person_block s WHERE s.block_key = k.block_key LIMIT $2) AS s) AS size "
            "LEFT JOIN person_block b ON size.n < $2 AND b.block_key = k.block_key "
            "LEFT JOIN person p ON p.id = b.person_id "
            "WHERE size.n >= $2 OR p.id IS NOT NULL",
            list(set(block_keys)),
            max_block + 1,
        )
        members = []
        oversized = []
        for row in rows:
            if row[1] is None:
                oversized.append(row[0])
            else:
                members.append((row[0], PersonRow(row[1], row[2], row[3], row[4])))
        return BlockSearch(members, oversized)

    async def persons_of(self, session: AsyncSession, customer_id: str) -> list[PersonRow]:
        rows = await session.execute(
            text("SELECT id, customer_id, ciphertext, key_id FROM person WHERE customer_id = :id ORDER BY id"),
            {"id": customer_id},
        )
        return [PersonRow(row.id, row.customer_id, bytes(row.ciphertext), row.key_id) for row in rows]

    async def count_persons(self, session: AsyncSession, cap: int) -> int:
        result = await session.execute(
            text("SELECT count(*) FROM (SELECT 1 FROM person LIMIT :cap) AS capped"), {"cap": cap}
        )
        return int(result.scalar_one())

    async def estimate_persons(self, session: AsyncSession, exact_below: int = 10_000) -> int:
        """How many person records are stored: counted exactly while there are few, then the
        planner's estimate (kept by autovacuum), so that no batch scans the whole table. With
        `exact_below` 0, only the estimate (the caller knows there are many)."""
        exact = await self.count_persons(session, exact_below) if exact_below else 0
        if exact < exact_below:
            return exact
        estimate = await session.scalar(text("SELECT reltuples::bigint FROM pg_class WHERE oid = 'person'::regclass"))
        return max(exact, int(estimate or 0))

    async def sample_persons(self, session: AsyncSession, limit: int) -> list[PersonRow]:
        rows = await session.execute(
            text("SELECT id, customer_id, ciphertext, key_id FROM person ORDER BY random() LIMIT :n"), {"n": limit}
        )
        return [PersonRow(row.id, row.customer_id, bytes(row.ciphertext), row.key_id) for row in rows]

    async def pattern_counts(self, session: AsyncSession) -> dict[str, int]:
        rows = await session.execute(text("SELECT pattern, pair_count FROM match_pattern"))
        return {row.pattern: row.pair_count for row in rows}

    async def add_pattern_counts(self, session: AsyncSession, counts: Counter[str]) -> None:
        if not counts:
            return
        patterns = sorted(counts)
        await session.execute(
            text(
                "INSERT INTO match_pattern (pattern, pair_count) "
                "SELECT * FROM unnest(CAST(:p AS text[]), CAST(:n AS bigint[])) "
                "ON CONFLICT (pattern) DO UPDATE SET pair_count = match_pattern.pair_count + excluded.pair_count"
            ),
            {"p": patterns, "n": [counts[p] for p in patterns]},
        )

    async def stored_u(self, session: AsyncSession) -> tuple[list[list[float]], int] | None:
        """The u-probabilities last estimated, with the number of records behind them."""
        row = (await session.execute(text("SELECT u, basis FROM match_u WHERE id = 1"))).first()
        return (row.u, row.basis) if row is not None else None

    async def store_u(self, session: AsyncSession, u: list[list[float]], basis: int) -> None:
        """Keep an estimate unless one from a larger sample is already kept."""
        await session.execute(
            text(
                "INSERT INTO match_u (id, u, basis) VALUES (1, CAST(:u AS jsonb), :basis) "
                "ON CONFLICT (id) DO UPDATE SET u = EXCLUDED.u, basis = EXCLUDED.basis, updated_at = now() "
                "WHERE match_u.basis < EXCLUDED.basis"
            ),
            {"u": _json(u), "basis": basis},
        )

    # -- reads -----------------------------------------------------------------------------------

    async def customer(self, session: AsyncSession, customer_id: str) -> Row[Any] | None:
        result = await session.execute(text("SELECT * FROM customer WHERE id = :id"), {"id": customer_id})
        return result.first()

    async def identifiers_of(self, session: AsyncSession, customer_id: str) -> list[IdentifierRow]:
        rows = await session.execute(
            text("SELECT * FROM identifier WHERE customer_id = :id ORDER BY id"), {"id": customer_id}
        )
        return [_identifier(row) for row in rows]

    async def identifiers_by_index(self, session: AsyncSession, blind_indexes: Sequence[bytes]) -> list[IdentifierRow]:
        rows = await session.execute(
            text("SELECT * FROM identifier WHERE blind_index = ANY(CAST(:keys AS bytea[])) ORDER BY id"),
            {"keys": list(blind_indexes)},
        )
        return [_identifier(row) for row in rows]

    # -- key rotation ----------------------------------------------------------------------------

    async def stale_rows(
        self, session: AsyncSession, table: str, key_id: int, index_key_id: int, after_id: int, limit: int
    ) -> list[StaleRow]:
        """Rows after `after_id` encrypted or indexed under a key other than the active ones, in id
        order, locked for re-keying (rows another run holds are skipped)."""
        assert table in TABLES
        context, token = ("id_type", "blind_index") if table == "identifier" else ("customer_id", "fingerprint")
        rows = await session.execute(
            text(
                f"SELECT id, {context} AS context, ciphertext, key_id, index_key_id, {token} AS token FROM {table} "
                "WHERE id > :after AND (key_id <> :k OR index_key_id <> :i) ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"k": key_id, "i": index_key_id, "after": after_id, "n": limit},
        )
        return [
            StaleRow(row.id, row.context, bytes(row.ciphertext), row.key_id, row.index_key_id, bytes(row.token))
            for row in rows
        ]

    async def rewrite_identifiers(
        self,
        session: AsyncSession,
        rows: Sequence[StaleRow],
        ciphertexts: Sequence[bytes],
        blind_indexes: Sequence[bytes],
        key_id: int,
        index_key_id: int,
    ) -> None:
        """New ciphertexts and tokens; conflicts recorded against an old token follow it."""
        ids = [row.id for row in rows]
        await session.execute(
            text(
                "UPDATE identifier t SET ciphertext = x.ct, blind_index = x.bi, key_id = :k, index_key_id = :i "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:cts AS bytea[]), CAST(:bis AS bytea[])) AS x(id, ct, bi) "
                "WHERE t.id = x.id"
            ),
            {"k": key_id, "i": index_key_id, "ids": ids, "cts": list(ciphertexts), "bis": list(blind_indexes)},
        )
        moved = [(row.token, new) for row, new in zip(rows, blind_indexes, strict=True) if row.token != new]
        if moved:
            await session.execute(
                text(
                    "UPDATE conflict c SET blind_index = x.new FROM unnest(CAST(:old AS bytea[]), "
                    "CAST(:new AS bytea[])) AS x(old, new) WHERE c.blind_index = x.old"
                ),
                {"old": [pair[0] for pair in moved], "new": [pair[1] for pair in moved]},
            )

    async def rewrite_persons(
        self,
        session: AsyncSession,
        rows: Sequence[StaleRow],
        rewritten: Sequence[RekeyedPerson],
        key_id: int,
        index_key_id: int,
    ) -> None:
        ids = [row.id for row in rows]
        await session.execute(
            text(
                "UPDATE person t SET ciphertext = x.ct, fingerprint = x.f, key_id = :k, index_key_id = :i "
                "FROM unnest(CAST(:ids AS bigint[]), CAST(:cts AS bytea[]), CAST(:fs AS bytea[])) AS x(id, ct, f) "
                "WHERE t.id = x.id"
            ),
            {
                "k": key_id,
                "i": index_key_id,
                "ids": ids,
                "cts": [new.ciphertext for new in rewritten],
                "fs": [new.fingerprint for new in rewritten],
            },
        )
        reindexed = [
            (person_id, new.blocks) for person_id, new in zip(ids, rewritten, strict=True) if new.blocks is not None
        ]
        if not reindexed:
            return
        # By person id, a scan of person_block (it has no index by person, to keep the resolve
        # path's inserts cheap). Deleting by (block key, person id) instead, from the blocks
        # recomputed under the old key, was 4x slower: 110,000 random primary key probes for a
        # batch of 10,000 persons against one scan of 5.5 million rows.
        await session.execute(
            text("DELETE FROM person_block WHERE person_id = ANY(CAST(:ids AS bigint[]))"),
            {"ids": [person_id for person_id, _ in reindexed]},
        )
        blocks = [(block, person_id) for person_id, person_blocks in reindexed for block in person_blocks]
        await session.execute(
            text(
                "INSERT INTO person_block (block_key, person_id) "
                "SELECT * FROM unnest(CAST(:b AS bytea[]), CAST(:p AS bigint[])) ON CONFLICT DO NOTHING"
            ),
            {"b": [block for block, _ in blocks], "p": [person_id for _, person_id in blocks]},
        )

    async def count_stale(self, session: AsyncSession, key_id: int, index_key_id: int) -> int:
        result = await session.execute(
            text(
                "SELECT (SELECT count(*) FROM identifier WHERE key_id <> :k OR index_key_id <> :i) + "
                "(SELECT count(*) FROM person WHERE key_id <> :k OR index_key_id <> :i)"
            ),
            {"k": key_id, "i": index_key_id},
        )
        return int(result.scalar_one())


def _identifier(row: Row[Any]) -> IdentifierRow:
    return IdentifierRow(
        row.id,
        bytes(row.blind_index),
        row.id_type,
        bytes(row.ciphertext),
        row.key_id,
        row.customer_id,
        row.source,
        row.evidence,
        row.created_at,
    )


def _unique_pairs(
    candidates: Sequence[tuple[str, str, float, float, dict[str, str]]],
) -> list[tuple[str, str, float, float, dict[str, str]]]:
    """One row per pair of two different customers, in either order, with its best score: the
    records of one batch that ended up one customer may each have been scored against the same
    other (and one INSERT ... ON CONFLICT DO UPDATE cannot update a row twice)."""
    best: dict[frozenset[str], tuple[str, str, float, float, dict[str, str]]] = {}
    for candidate in candidates:
        if candidate[0] == candidate[1]:
            continue
        pair = frozenset(candidate[:2])
        kept = best.get(pair)
        if kept is None or kept[2] < candidate[2]:
            best[pair] = candidate
    return list(best.values())


def _json(value: object) -> str:
    import json

    return json.dumps(value, sort_keys=True)
