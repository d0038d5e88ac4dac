"""pytest fixtures for tests that need real infrastructure (registered in the root conftest.py).

- `infra`: one embedded PostgreSQL and one embedded NATS JetStream server for the test session.
- `fresh_database(name)`: an empty database on that server, migrated for a service.
- `start_platform(services)`: services as real processes (the launcher), each platform with its own
  PostgreSQL and NATS so that durable consumers and databases never leak between tests.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from tailor_platform.config import database_url_for
from tailor_platform.db import migrate

from tailor_cli import registry
from tailor_cli.embedded import EmbeddedNats, EmbeddedPostgres
from tailor_cli.launcher import Platform, ensure_databases

_counter = itertools.count()


@dataclass
class Infra:
    server_url: str
    nats: EmbeddedNats
    postgres: EmbeddedPostgres

    @property
    def nats_url(self) -> str:
        return self.nats.url


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    data_dir = tmp_path_factory.mktemp("infra")
    postgres = EmbeddedPostgres(data_dir)
    nats = EmbeddedNats(data_dir, port=0)
    try:
        server_url = postgres.start()
        nats.start()
        yield Infra(server_url, nats, postgres)
    finally:
        nats.stop()
        postgres.stop()


@pytest.fixture
def fresh_database(infra: Infra) -> Callable[[str], str]:
    """Create an empty database named after the service, apply its migrations, return its URL."""

    def create(service: str) -> str:
        name = f"{service}_t{next(_counter)}"
        asyncio.run(ensure_databases(infra.server_url, [name]))
        url = database_url_for(infra.server_url, name)
        migrate(registry.select(service)[service].migrations_dir, url)
        return url

    return create


@pytest.fixture(scope="module")
def start_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Platform]]:
    """Start services as processes; they run until the end of the test module."""
    started: list[Platform] = []

    def start(services: list[str], extra_env: dict[str, str] | None = None) -> Platform:
        platform = Platform(
            tmp_path_factory.mktemp("platform"), services=services, free_ports=True, extra_env=extra_env or {}
        )
        started.append(platform)
        return platform.start()

    yield start
    for platform in reversed(started):
        platform.stop()
