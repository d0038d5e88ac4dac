"""Settings: one pydantic-settings class per service, read from `TAILOR_` environment variables.

Shared values (NATS, telemetry, logging) use `TAILOR_<NAME>`; a service's own values use
`TAILOR_<SERVICE>_<NAME>`. A service's database URL is `TAILOR_<SERVICE>_DATABASE_URL`, or derived
from the server-level `TAILOR_DATABASE_URL` with the database name `tailor_<service>`.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, NonNegativeFloat, TypeAdapter, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


class ConfigError(ValueError):
    """The environment gives settings that cannot be used; the message names each variable."""


def load_settings(settings_class: type[SettingsT]) -> SettingsT:
    """`settings_class()` read from the environment, or ConfigError naming every bad variable
    (without its value: some are secrets), instead of pydantic's report in terms of fields."""
    prefix = str(settings_class.model_config.get("env_prefix", ""))
    try:
        return settings_class()
    except ValidationError as error:
        problems = []
        for problem in error.errors():
            message = str(problem["msg"]).removeprefix("Value error, ")
            location = problem["loc"]
            problems.append(f"{prefix}{str(location[0]).upper()}: {message}" if location else message)
        raise ConfigError("; ".join(problems)) from None
    except SettingsError as error:
        field = re.search(r'field "([^"]+)"', str(error))
        name = f"{prefix}{field.group(1).upper()}" if field else "a setting"
        raise ConfigError(f"{name}: not valid JSON ({error.__cause__ or error})") from None


def database_url_for(server_url: str, service: str) -> str:
    """The URL of `service`'s own database on the server that `server_url` points at."""
    parts = urlsplit(server_url)
    scheme = parts.scheme
    if scheme in ("postgres", "postgresql"):
        scheme = "postgresql+asyncpg"
    return urlunsplit((scheme, parts.netloc, f"/tailor_{service}", parts.query, parts.fragment))


class PlatformSettings(BaseSettings):
    """What every process of the platform shares."""

    model_config = SettingsConfigDict(env_prefix="TAILOR_", extra="ignore")

    nats_url: str = "nats://127.0.0.1:4222"
    database_url: str = Field(
        default="",
        description="Server-level PostgreSQL URL; each service uses its own database on it.",
    )
    otlp_endpoint: str = Field(default="", description="OTLP/gRPC endpoint; empty disables export.")
    log_level: str = "INFO"
    log_format: str = Field(default="json", pattern="^(json|text)$")
    grpc_host: str = "0.0.0.0"
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    nats_replicas: int = Field(default=1, ge=1, le=5, description="JetStream stream replicas (3 in a cluster).")
    auth_mode: str = Field(default="none", description="How callers are authenticated; only 'none' so far.")


class ServiceSettings(PlatformSettings):
    """Base of each service's settings class; subclasses set `service_name` and `default_port`."""

    service_name: ClassVar[str] = ""
    default_port: ClassVar[int] = 50050

    grpc_port: int = Field(default=0, ge=0, le=65535)
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Server processes sharing the gRPC port (TAILOR_<SERVICE>_WORKERS): Python runs one "
        "core per process, so a CPU-bound service uses more cores with more workers. With more than one, "
        "one more process runs the outbox relay, the consumers of other services' events and background tasks "
        "at a lower CPU priority.",
    )
    service_database_url: str = ""
    database_read_connections: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Connections each worker keeps for single-statement hot reads such as GetProfile "
        "(TAILOR_<SERVICE>_DATABASE_READ_CONNECTIONS). One worker process drives a few thousand reads "
        "a second, which two connections carry; more only add database processes competing with the "
        "workers for the cores.",
    )
    outbox_poll_interval_s: float = Field(default=0.5, gt=0)
    outbox_batch_size: int = Field(default=500, ge=1)
    consumer_batch_size: int = Field(default=100, ge=1)
    consumer_max_deliver: int = Field(default=5, ge=1)
    consumer_backoff_s: list[NonNegativeFloat] = [1.0, 5.0, 30.0, 120.0]
    health_check_interval_s: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _resolve_service_values(self) -> ServiceSettings:
        prefix = f"TAILOR_{self.service_name.upper()}_"
        self.service_database_url = os.environ.get(prefix + "DATABASE_URL", self.service_database_url)
        if not self.service_database_url and self.database_url:
            self.service_database_url = database_url_for(self.database_url, self.service_name)
        self._override("workers", prefix + "WORKERS")
        self._override("database_read_connections", prefix + "DATABASE_READ_CONNECTIONS")
        if not self._override("grpc_port", prefix + "GRPC_PORT") and not self.grpc_port:
            self.grpc_port = self.default_port
        return self

    def _override(self, name: str, variable: str) -> bool:
        """Set field `name` from `variable` if it is set, checked like the field itself."""
        raw = os.environ.get(variable)
        if not raw:
            return False
        field = type(self).model_fields[name]
        try:
            kind: Any = Annotated[(field.annotation, *field.metadata)]  # the field's type and constraints
            value = TypeAdapter(kind).validate_python(raw)
        except ValidationError as error:
            raise ValueError(f"{variable}: {error.errors()[0]['msg']}") from None
        setattr(self, name, value)
        return True

    @property
    def consumer_prefix(self) -> str:
        return self.service_name
