"""Encryption at rest and the blind index.

Values are encrypted with AES-256-GCM under a numbered key (the key id is stored with each row, so
that keys can be rotated: old keys stay readable until `ReKey` has re-encrypted everything). Lookups
never decrypt: they use a blind index, HMAC-SHA256 of the normalized value under a separate key, so
the database holds no plaintext and equal values still find each other.
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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


@dataclass
class Keyring:
    """Encryption keys by id (the active one encrypts; all decrypt) and the blind index key."""

    keys: dict[int, bytes]
    active_id: int
    blind_index_key: bytes

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise ValueError(f"active key id {self.active_id} has no key")
        self._ciphers = {key_id: AESGCM(key) for key_id, key in self.keys.items()}
        # HMAC-SHA256 with its inner and outer key pads hashed once: each blind index then costs two
        # hash copies instead of a fresh HMAC set-up (the resolve hot path makes thousands per call).
        block = self.blind_index_key.ljust(64, b"\0") if len(self.blind_index_key) <= 64 else b""
        if not block:
            raise ValueError("the blind index key must be at most 64 bytes")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
        # ... and the inner hash of each kind's prefix too (a few kinds: identifier types, external
        # id namespaces, person blocks).
        self._kinds: dict[str, Any] = {}

    def blind_index(self, kind: str, value: str) -> bytes:
        """A keyed, deterministic token for (kind, value); kind separates e.g. email from phone."""
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

    def encrypt(self, plaintext: bytes, context: bytes = b"") -> bytes:
        """nonce || ciphertext+tag under the active key; `context` is authenticated, not stored."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._ciphers[self.active_id].encrypt(nonce, plaintext, context or None)

    def decrypt(self, key_id: int, sealed: bytes, context: bytes = b"") -> bytes:
        try:
            cipher = self._ciphers[key_id]
        except KeyError:
            raise KeyError(f"no key with id {key_id} is configured; keep old keys until ReKey finished") from None
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], context or None)
