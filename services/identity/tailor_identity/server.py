"""Identity service bootstrap: settings and the parts `tailor serve identity` assembles.

Keys: `TAILOR_IDENTITY_ENCRYPTION_KEY` (base64 of 32 bytes; its id `TAILOR_IDENTITY_ENCRYPTION_KEY_ID`),
`TAILOR_IDENTITY_OLD_ENCRYPTION_KEYS` ('{"1": "<base64>"}': keys still needed to read rows written
before a rotation; `ReKey` re-encrypts those rows, after which the old key can go), and likewise
`TAILOR_IDENTITY_BLIND_INDEX_KEY` with `TAILOR_IDENTITY_BLIND_INDEX_KEY_ID` and
`TAILOR_IDENTITY_OLD_BLIND_INDEX_KEYS` (while old index keys are set, lookups also try each value's
token under them, until `ReKey` has re-indexed every row). Without them the service runs with a built-in development key
and says so loudly in its log: that key is public, so real deployments must set their own.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import phonenumbers
from pydantic import Field, field_validator
from tailor.identity.v1 import identity_pb2, identity_pb2_grpc
from tailor_platform.config import ServiceSettings
from tailor_platform.service import Components, Runtime, ServiceSpec

from tailor_identity.api import IdentityApi
from tailor_identity.domain.crypto import Keyring, decode_key, dev_key
from tailor_identity.domain.keys import KeyMaker
from tailor_identity.domain.matching import Thresholds
from tailor_identity.domain.model import DEFAULT_LIMITS, ID_TYPES
from tailor_identity.domain.normalize import EmailRules, email_domain
from tailor_identity.service import (
    DEFAULT_MAX_BLOCK_SIZE,
    DEFAULT_OVERSIZED_CACHE_SIZE,
    DEFAULT_PERSON_CACHE_SIZE,
    IdentityService,
)

log = logging.getLogger(__name__)


class IdentitySettings(ServiceSettings):
    service_name: ClassVar[str] = "identity"
    default_port: ClassVar[int] = 50051

    identity_encryption_key: str = Field(default="", repr=False)
    identity_encryption_key_id: int = Field(default=1, ge=1)
    identity_old_encryption_keys: dict[int, str] = Field(default_factory=dict, repr=False)
    identity_blind_index_key: str = Field(default="", repr=False)
    identity_blind_index_key_id: int = Field(default=1, ge=1)
    identity_old_blind_index_keys: dict[int, str] = Field(default_factory=dict, repr=False)
    identity_phone_region: str = "US"
    identity_email_ignore_dots: list[str] = Field(default=sorted(EmailRules().ignore_dots))
    identity_email_strip_plus_tags: list[str] = Field(default=sorted(EmailRules().strip_plus_tags))
    identity_limits: dict[str, int] = Field(default_factory=lambda: dict(DEFAULT_LIMITS))
    # Match probability thresholds (Fellegi-Sunter posterior): link automatically / queue for review.
    identity_auto_merge_probability: float = Field(default=Thresholds().auto_merge, gt=0, le=1)
    identity_review_probability: float = Field(default=Thresholds().review, gt=0, le=1)
    # Decrypted person records kept in memory for matching (0: decrypt on every use).
    identity_person_cache_size: int = Field(default=DEFAULT_PERSON_CACHE_SIZE, ge=0)
    # Blocks of more stored persons than this are not searched by probabilistic matching.
    identity_max_block_size: int = Field(default=DEFAULT_MAX_BLOCK_SIZE, ge=1)
    # Oversized block keys each process remembers (not searched again, not grown; 0: none).
    identity_oversized_block_cache_size: int = Field(default=DEFAULT_OVERSIZED_CACHE_SIZE, ge=0)

    @field_validator("identity_phone_region")
    @classmethod
    def _a_known_region(cls, region: str) -> str:
        """phonenumbers knows regions by upper-case code only: with "us" (or "USA"), every phone
        number written without its country code was refused as unparseable."""
        code = region.strip().upper()
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("must be an ISO 3166 two-letter region code that phonenumbers supports, e.g. US")
        return code

    @field_validator("identity_email_ignore_dots", "identity_email_strip_plus_tags")
    @classmethod
    def _domain_names(cls, domains: list[str]) -> list[str]:
        """As normalized emails write them: lower case, an internationalized domain as A-labels."""
        return [email_domain(domain) for domain in domains]

    @field_validator("identity_limits")
    @classmethod
    def _limits_over_the_defaults(cls, limits: dict[str, int]) -> dict[str, int]:
        """Limits given override the defaults type by type: '{"email": 5}' must not silently lift
        the one-loyalty-id limit, and a misspelt type must not silently lift none."""
        unknown = sorted(set(limits) - ID_TYPES)
        if unknown:
            raise ValueError(f"unknown identifier type(s) {unknown}; expected some of: {', '.join(sorted(ID_TYPES))}")
        if any(limit < 0 for limit in limits.values()):
            raise ValueError("a limit must be at least 0")
        return {**DEFAULT_LIMITS, **limits}

    def keyring(self) -> Keyring:
        if self.identity_encryption_key and self.identity_blind_index_key:
            keys = {int(k): decode_key(v) for k, v in self.identity_old_encryption_keys.items()}
            keys[self.identity_encryption_key_id] = decode_key(self.identity_encryption_key)
            return Keyring(
                keys,
                self.identity_encryption_key_id,
                decode_key(self.identity_blind_index_key),
                self.identity_blind_index_key_id,
                {int(k): decode_key(v) for k, v in self.identity_old_blind_index_keys.items()},
            )
        log.warning(
            "IDENTITY IS USING THE BUILT-IN DEVELOPMENT KEYS: stored identifiers are NOT protected. "
            "Set TAILOR_IDENTITY_ENCRYPTION_KEY and TAILOR_IDENTITY_BLIND_INDEX_KEY (base64, 32 bytes)."
        )
        return Keyring({1: dev_key("encryption")}, 1, dev_key("blind-index"))

    def key_maker(self) -> KeyMaker:
        rules = EmailRules.of(self.identity_email_ignore_dots, self.identity_email_strip_plus_tags)
        return KeyMaker(self.keyring(), rules, self.identity_phone_region)


def build(runtime: Runtime) -> Components:
    settings = runtime.settings
    assert isinstance(settings, IdentitySettings)
    keys = settings.key_maker()
    thresholds = Thresholds(settings.identity_auto_merge_probability, settings.identity_review_probability)
    service = IdentityService(
        runtime.db,
        runtime.outbox,
        keys,
        thresholds=thresholds,
        limits=settings.identity_limits,
        person_cache_size=settings.identity_person_cache_size,
        max_block_size=settings.identity_max_block_size,
        oversized_cache_size=settings.identity_oversized_block_cache_size,
    )
    api = IdentityApi(service, keys)
    return Components(
        register=lambda server: identity_pb2_grpc.add_IdentityServiceServicer_to_server(api, server),
        service_names=[identity_pb2.DESCRIPTOR.services_by_name["IdentityService"].full_name],
        on_shutdown=[service.pattern_tally.flush],  # match pattern counts not yet saved
    )


SERVICE = ServiceSpec(
    name="identity",
    settings_class=IdentitySettings,
    migrations_dir=Path(__file__).parent / "migrations",
    build=build,
)
