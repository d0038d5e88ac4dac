"""Encryption at rest and the blind index.

Values are encrypted with AES-256-GCM under a numbered key (the key id is stored with each row, so
that keys can be rotated: old keys stay readable until `ReKey` has re-encrypted everything). Lookups
never decrypt: they use a blind index, HMAC-SHA256 of the normalized value under a separate key, so
the database holds no plaintext and equal values still find each other.

The blind index key is numbered too and rotates the same way: while old index keys are configured,
lookups also try each value's token under them, and `ReKey` recomputes every stored token under the
active key (it can, because it decrypts the value).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tailor_platform.errors import FailedPrecondition

NONCE_BYTES = 12
BLIND_INDEX_BYTES = 16
"""HMAC-SHA256 truncated to 128 bits: collisions stay out of reach, and the lookup index is half
the size (it must stay in memory for the resolve path)."""
DEV_SEED = b"tailor-identity-development-only"
MAX_CACHED_KINDS = 1024


def dev_key(purpose: str) -> bytes:
    """The development default (embedded mode only): derived from a public constant, NOT secret."""
    return hashlib.sha256(DEV_SEED + purpose.encode()).digest()


def decode_key(encoded: str) -> bytes:
    key = base64.b64decode(encoded, validate=True)
    if len(key) != 32:
        raise ValueError("keys must be 32 bytes, base64-encoded")
    return key


class BlindIndexer:
    """HMAC-SHA256 under one key, with the inner and outer key pads hashed once: each token then
    costs two hash copies instead of a fresh HMAC set-up (the resolve hot path makes thousands per
    call), and the inner hash of each kind's prefix is kept too (a few kinds: identifier types,
    external id namespaces, person blocks)."""

    def __init__(self, key: bytes) -> None:
        if len(key) > 64:
            raise ValueError("the blind index key must be at most 64 bytes")
        block = key.ljust(64, b"\0")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        self._kinds: dict[str, Any] = {}

    def token(self, kind: str, value: str) -> bytes:
        prefixed = self._kinds.get(kind)
        if prefixed is None:
            prefixed = self._inner.copy()
            prefixed.update(f"{kind}\x1f".encode())
            if len(self._kinds) < MAX_CACHED_KINDS:
                self._kinds[kind] = prefixed
        inner = prefixed.copy()
        inner.update(value.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:BLIND_INDEX_BYTES]


@dataclass
class Keyring:
    """Encryption keys by id (the active one encrypts; all decrypt) and blind index keys by id (the
    active one indexes; old ones are still looked up until `ReKey` has re-indexed everything)."""

    keys: dict[int, bytes]
    active_id: int
    blind_index_key: bytes
    blind_index_key_id: int = 1
    old_blind_index_keys: dict[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise ValueError(f"active key id {self.active_id} has no key")
        if self.blind_index_key_id in self.old_blind_index_keys:
            raise ValueError(f"blind index key id {self.blind_index_key_id} is both active and old")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in self.keys.items()}
        self._indexer = BlindIndexer(self.blind_index_key)
        self._old_indexers = [BlindIndexer(key) for _, key in sorted(self.old_blind_index_keys.items())]

    @property
    def rotating_index(self) -> bool:
        """Whether old blind index keys are configured (lookups then try their tokens too)."""
        return bool(self._old_indexers)

    def blind_index(self, kind: str, value: str) -> bytes:
        """A keyed, deterministic token for (kind, value); kind separates e.g. email from phone."""
        return self._indexer.token(kind, value)

    def old_blind_indexes(self, kind: str, value: str) -> tuple[bytes, ...]:
        """The tokens of (kind, value) under the old blind index keys (none outside a rotation)."""
        return tuple(indexer.token(kind, value) for indexer in self._old_indexers)

    def encrypt(self, plaintext: bytes, context: bytes = b"") -> bytes:
        """nonce || ciphertext+tag under the active key; `context` is authenticated, not stored."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._ciphers[self.active_id].encrypt(nonce, plaintext, context or None)

    def decrypt(self, key_id: int, sealed: bytes, context: bytes = b"") -> bytes:
        try:
            cipher = self._ciphers[key_id]
        except KeyError:
            # An operator's mistake (an old key dropped before ReKey finished), not a server fault.
            raise FailedPrecondition(
                f"a stored value is under encryption key {key_id}, which is not configured: keep old keys in "
                "TAILOR_IDENTITY_OLD_ENCRYPTION_KEYS until `tailor identity rekey` has finished"
            ) from None
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context or None)
