"""Profile service bootstrap: settings and the parts `tailor serve profile` assembles."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field
from tailor.profile.v1 import profile_pb2, profile_pb2_grpc
from tailor_platform.bus.merges import identity_merges_subscription, identity_unmerged_subscription
from tailor_platform.config import ServiceSettings
from tailor_platform.service import Components, Runtime, ServiceSpec

from tailor_profile.api import ProfileApi
from tailor_profile.clients import ConsentClient, IdentityClient
from tailor_profile.domain.traits import TraitSettings
from tailor_profile.events import ingest_subscription, pending_resolver, time_change_announcer
from tailor_profile.intake import Intake
from tailor_profile.service import ProfileService

DEFAULT_RATES = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.05, "SEK": 0.087, "DKK": 0.134, "PLN": 0.23}


class ProfileSettings(ServiceSettings):
    """Addresses of the services profile calls come from `TAILOR_<SERVICE>_ADDRESS` (the launcher
    sets them); profile's own values from `TAILOR_PROFILE_*`."""

    service_name: ClassVar[str] = "profile"
    default_port: ClassVar[int] = 50052

    identity_address: str = "127.0.0.1:50051"
    consent_address: str = "127.0.0.1:50056"
    profile_identity_timeout_s: float = Field(default=5.0, gt=0)
    profile_identity_connections: int = Field(
        default=2, ge=1, le=64, description="Connections to identity: at least its number of workers."
    )
    profile_section_timeout_s: float = Field(default=1.0, gt=0, description="Deadline of each Customer 360 section.")
    profile_pending_retry_s: float = Field(default=2.0, gt=0)
    profile_time_sweep_s: float = Field(
        default=60.0, gt=0, description="How often to announce traits that time alone changed (rolling windows)."
    )
    profile_base_currency: str = "EUR"
    profile_currency_rates: dict[str, float] = Field(default=dict(DEFAULT_RATES))
    profile_tiers: list[tuple[str, int]] = Field(
        default=[("bronze", 0), ("silver", 50_000), ("gold", 150_000), ("platinum", 400_000)],
        description="Loyalty tiers: (name, minimum net 12-month spend in minor units), ascending.",
    )
    profile_affinity_half_life_days: float = Field(default=30.0, gt=0)

    def trait_settings(self) -> TraitSettings:
        return TraitSettings(
            tiers=tuple(sorted(self.profile_tiers, key=lambda tier: tier[1])),
            affinity_half_life_days=self.profile_affinity_half_life_days,
        )


def build(runtime: Runtime) -> Components:
    settings = runtime.settings
    assert isinstance(settings, ProfileSettings)
    identity = IdentityClient(
        settings.identity_address, settings.profile_identity_timeout_s, settings.profile_identity_connections
    )
    intake = Intake(settings.profile_currency_rates, settings.profile_base_currency)
    service = ProfileService(runtime.db, runtime.outbox, identity, intake, settings.trait_settings())
    api = ProfileApi(service, ConsentClient(settings.consent_address), settings.profile_section_timeout_s)
    wake_resolver, resolve_pending = pending_resolver(service, settings.profile_pending_retry_s)
    return Components(
        register=lambda server: profile_pb2_grpc.add_ProfileServiceServicer_to_server(api, server),
        service_names=[profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name],
        input_subscriptions=[ingest_subscription(service)],
        subscriptions=[
            identity_merges_subscription(service.merge_many),
            identity_unmerged_subscription(service.separate),
        ],
        background=[resolve_pending, time_change_announcer(service, settings.profile_time_sweep_s)],
        background_listeners=[wake_resolver],
    )


SERVICE = ServiceSpec(
    name="profile",
    settings_class=ProfileSettings,
    migrations_dir=Path(__file__).parent / "migrations",
    build=build,
)
