"""Consent service bootstrap: settings and the parts `tailor serve consent` assembles."""

from __future__ import annotations

import re
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator
from tailor.consent.v1 import consent_pb2, consent_pb2_grpc
from tailor_platform.bus.merges import identity_merged_subscription, identity_unmerged_subscription
from tailor_platform.config import ServiceSettings
from tailor_platform.service import Components, Runtime, ServiceSpec

from tailor_consent.api import ConsentApi
from tailor_consent.domain.cache import ConsentCache
from tailor_consent.domain.registry import DEFAULT_CHANNELS, DEFAULT_LEGAL_BASES, DEFAULT_PURPOSES, Registry
from tailor_consent.events import cache_listener
from tailor_consent.service import ConsentService

MAX_NAME_LENGTH = 64
NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{MAX_NAME_LENGTH - 1}}}")


class ConsentSettings(ServiceSettings):
    """`TAILOR_CONSENT_PURPOSES='["marketing","research"]'` and so on extend the vocabulary."""

    service_name: ClassVar[str] = "consent"
    default_port: ClassVar[int] = 50056

    consent_purposes: list[str] = Field(default=list(DEFAULT_PURPOSES))
    consent_channels: list[str] = Field(default=list(DEFAULT_CHANNELS))
    consent_legal_bases: list[str] = Field(default=list(DEFAULT_LEGAL_BASES))
    consent_cache_max_customers: int = Field(default=500_000, ge=0)

    @field_validator("consent_purposes", "consent_channels", "consent_legal_bases")
    @classmethod
    def _names_the_store_can_hold(cls, names: list[str]) -> list[str]:
        """Each is a key column of 64 characters: a longer name would fail every write naming it."""
        bad = [name for name in names if not NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"{bad} must be 1-{MAX_NAME_LENGTH} characters: letters, digits, _ . -")
        if not names:
            raise ValueError("at least one is required")
        return names

    def registry(self) -> Registry:
        return Registry.of(self.consent_purposes, self.consent_channels, self.consent_legal_bases)


def build(runtime: Runtime) -> Components:
    settings = runtime.settings
    assert isinstance(settings, ConsentSettings)
    cache = ConsentCache(settings.consent_cache_max_customers)
    service = ConsentService(runtime.db, runtime.outbox, cache)
    api = ConsentApi(service, settings.registry())
    return Components(
        register=lambda server: consent_pb2_grpc.add_ConsentServiceServicer_to_server(api, server),
        service_names=[consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name],
        subscriptions=[identity_merged_subscription(service.merge), identity_unmerged_subscription(service.separate)],
        listeners=[cache_listener(cache)],
    )


SERVICE = ServiceSpec(
    name="consent",
    settings_class=ConsentSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    build=build,
)
