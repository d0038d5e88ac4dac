"""Identity tables (the store's schema; the migrations create exactly these).

No column holds a plaintext identifier or person attribute: `ciphertext` is AES-GCM under the key
`key_id`, `blind_index` and `block_key` are keyed HMACs.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase
from tailor_platform.db import NAMING_CONVENTION


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _created() -> Column[Any]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


customer = Table(
    "customer",
    Base.metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False, server_default="active"),
    Column("merged_into", String(64), nullable=True),
    _created(),
    Index("ix_customer_merged_into", "merged_into", postgresql_where=text("merged_into IS NOT NULL")),
)

identifier = Table(
    "identifier",
    Base.metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("blind_index", LargeBinary, nullable=False),
    Column("id_type", String(32), nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("index_key_id", Integer, nullable=False, server_default="1"),  # the blind index key's id
    # No foreign key: see migration 0002 (the check cost a customer row lock per inserted identifier).
    Column("customer_id", String(64), nullable=False),
    Column("source", String(32), nullable=False),
    Column("evidence", String(200), nullable=False, server_default=""),
    _created(),
    Index("ix_identifier_customer_id", "customer_id"),
    # One customer per key, whatever runs concurrently; customer_id included so that the resolve
    # lookup is an index-only scan (no heap page per key).
    Index("uq_identifier_blind_index", "blind_index", unique=True, postgresql_include=["customer_id"]),
)

person = Table(
    "person",
    Base.metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("customer_id", String(64), ForeignKey("customer.id"), nullable=False),
    # HMAC of the normalized attributes: a record seen again for the same customer is not stored
    # again. Not unique: a merge may bring two equal records onto one customer (unmerge separates them).
    Column("fingerprint", LargeBinary, nullable=False),
    Column("ciphertext", LargeBinary, nullable=False),
    Column("key_id", Integer, nullable=False),
    Column("index_key_id", Integer, nullable=False, server_default="1"),  # of fingerprint and blocks
    _created(),
    Index("ix_person_customer_id_fingerprint", "customer_id", "fingerprint"),
)

person_block = Table(
    "person_block",
    Base.metadata,
    Column("block_key", LargeBinary, primary_key=True),
    # No foreign key: see migration 0006 (the check cost a person row lock per inserted block). So
    # no cascade either: whatever deletes person rows (an erasure) deletes their blocks itself.
    Column("person_id", BigInteger, primary_key=True),
)

merge_log = Table(
    "merge_log",
    Base.metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),  # merge, unmerge, split
    Column("survivor_id", String(64), nullable=False),
    Column("absorbed_ids", ARRAY(String(64)), nullable=False),
    Column("reason", Text, nullable=False),
    Column("evidence", Text, nullable=False),
    # What moved: {absorbed_id: {"identifiers": [ids], "persons": [ids]}}, so it can be moved back.
    Column("snapshot", JSONB, nullable=False),
    Column("reverts", String(64), nullable=True),
    Column("reverted_by", String(64), nullable=True),
    _created(),
    Index("ix_merge_log_survivor_id", "survivor_id"),
    Index("ix_merge_log_absorbed_ids", "absorbed_ids", postgresql_using="gin"),
    Index("ix_merge_log_unmerge_created_at", "created_at", postgresql_where=text("kind = 'unmerge'")),
)

conflict = Table(
    "conflict",
    Base.metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("other_customer_id", String(64), nullable=False),
    Column("id_type", String(32), nullable=False),
    Column("blind_index", LargeBinary, nullable=False),
    Column("reason", String(200), nullable=False),
    _created(),
    UniqueConstraint("customer_id", "other_customer_id", "blind_index", name="uq_conflict_customer_other_key"),
    Index("ix_conflict_other_customer_id", "other_customer_id"),
)

candidate = Table(
    "candidate",
    Base.metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("customer_id", String(64), nullable=False),
    Column("other_customer_id", String(64), nullable=False),
    Column("probability", Float, nullable=False),
    Column("weight", Float, nullable=False),
    Column("comparisons", JSONB, nullable=False),
    Column("status", String(16), nullable=False, server_default="open"),
    Column("reason", Text, nullable=False, server_default=""),
    _created(),
    Column("decided_at", DateTime(timezone=True), nullable=True),
    # One row per pair in either order (migration 0007).
    Index(
        "uq_candidate_pair",
        func.least(text("customer_id"), text("other_customer_id")),
        func.greatest(text("customer_id"), text("other_customer_id")),
        unique=True,
    ),
    Index("ix_candidate_other_customer_id", "other_customer_id"),
    Index("ix_candidate_open", "id", postgresql_where=text("status = 'open'")),
)

match_pattern = Table(
    "match_pattern",
    Base.metadata,
    # Agreement levels per field ("0,1,-1,..."), and how many compared pairs had them: EM's data.
    Column("pattern", String(64), primary_key=True),
    Column("pair_count", BigInteger, nullable=False),
)

match_u = Table(
    "match_u",
    Base.metadata,
    # u-probabilities estimated from random pairs of person records, and how many records the
    # sample held: shared by every worker and kept across restarts (one row).
    Column("id", Integer, primary_key=True),
    Column("u", JSONB, nullable=False),
    Column("basis", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
