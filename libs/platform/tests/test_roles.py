"""What each process of a service runs (`Role`); the processes themselves are exercised in
libs/cli/tests/test_cli.py (workers sharing a port, the background worker, commits passed on)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tailor.events.v1.envelope_pb2 import Envelope
from tailor_platform.bus.consumer import Subscription
from tailor_platform.bus.listener import Listener
from tailor_platform.config import ServiceSettings
from tailor_platform.service import Components, Role, ServiceProcess, ServiceSpec


async def _ignore(*_: object) -> None:
    return None


def _subscription(name: str) -> Subscription:
    return Subscription(name, f"tailor.consent.test_{name}", _ignore)  # a subject some stream captures


def _listener(name: str) -> Listener:
    async def on_message(_envelope: Envelope) -> None:
        return None

    return Listener(f"tailor.test.{name}", on_message, _ignore)


def _process(role: Role) -> ServiceProcess:
    components = Components(
        register=lambda server: None,
        service_names=[],
        subscriptions=[_subscription("followed")],
        input_subscriptions=[_subscription("input")],
        listeners=[_listener("cache")],
        background_listeners=[_listener("wake")],
    )
    spec = ServiceSpec("roles", ServiceSettings, Path("."), lambda runtime: components)
    # Nothing connects until the process starts.
    return ServiceProcess(spec, ServiceSettings(service_database_url="postgresql+asyncpg://nobody@/nowhere"), role)


@pytest.mark.parametrize(
    ("role", "consumed", "listening"),
    [
        (Role.ALL, ["input", "followed"], ["tailor.test.cache", "tailor.test.wake"]),
        (Role.CALLS, ["input"], ["tailor.test.cache"]),
        (Role.BACKGROUND, ["followed"], ["tailor.test.wake"]),
    ],
)
def test_each_role_consumes_and_listens_to_its_share(role: Role, consumed: list[str], listening: list[str]) -> None:
    process = _process(role)
    assert [consumer.subscription.name for consumer in process.consumers] == consumed
    assert [listener.subject for listener in process._listeners()] == listening
    assert process.serves_calls == (role is not Role.BACKGROUND)
    assert process.does_background_work == (role is not Role.CALLS)
