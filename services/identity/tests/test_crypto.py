from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidTag
from tailor_identity.domain.crypto import Keyring, dev_key
from tailor_platform.errors import FailedPrecondition


def test_encryption_roundtrip_and_rotation() -> None:
    old = Keyring({1: dev_key("a")}, 1, dev_key("b"))
    sealed = old.encrypt(b"ann@example.com", b"email")
    assert b"ann" not in sealed
    assert old.encrypt(b"ann@example.com", b"email") != sealed  # random nonce
    rotated = Keyring({1: dev_key("a"), 2: dev_key("c")}, 2, dev_key("b"))
    assert rotated.decrypt(1, sealed, b"email") == b"ann@example.com"
    with pytest.raises(InvalidTag):
        rotated.decrypt(1, sealed, b"phone")  # the context is authenticated
    with pytest.raises(FailedPrecondition, match="under encryption key 1, which is not configured"):
        Keyring({2: dev_key("c")}, 2, dev_key("b")).decrypt(1, sealed)


def test_blind_index_is_keyed_and_deterministic() -> None:
    ring = Keyring({1: dev_key("a")}, 1, dev_key("b"))
    assert ring.blind_index("email|", "x") == ring.blind_index("email|", "x")
    assert ring.blind_index("email|", "x") != ring.blind_index("phone|", "x")
    assert Keyring({1: dev_key("a")}, 1, dev_key("z")).blind_index("email|", "x") != ring.blind_index("email|", "x")


def test_blind_index_is_hmac_sha256() -> None:
    import hashlib
    import hmac

    ring = Keyring({1: dev_key("a")}, 1, dev_key("b"))
    expected = hmac.new(dev_key("b"), b"email|\x1fann@example.com", hashlib.sha256).digest()
    assert ring.blind_index("email|", "ann@example.com") == expected[:16]


def test_old_blind_index_keys_give_the_tokens_they_gave_when_active() -> None:
    before = Keyring({1: dev_key("a")}, 1, dev_key("b"))
    during = Keyring({1: dev_key("a")}, 1, dev_key("c"), 2, {1: dev_key("b")})
    assert not before.rotating_index and during.rotating_index
    assert during.old_blind_indexes("email|", "ann@example.com") == (before.blind_index("email|", "ann@example.com"),)
    assert during.blind_index("email|", "ann@example.com") != before.blind_index("email|", "ann@example.com")
    with pytest.raises(ValueError, match="both active and old"):
        Keyring({1: dev_key("a")}, 1, dev_key("c"), 2, {2: dev_key("b")})
