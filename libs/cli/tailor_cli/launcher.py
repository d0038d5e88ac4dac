"""The launcher: brings up infrastructure (embedded or given by URLs), migrates, and runs each
service as its own process, waiting until each reports SERVING. `tailor up` and the integration
tests use the same class.

    with Platform(data_dir, services=["consent"]) as platform:
        channel = grpc.insecure_channel(platform.address("consent"))
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tailor_platform.config import database_url_for
from tailor_platform.db import driver_url, migrate
from tailor_platform.service import ServiceSpec

from tailor_cli import registry
from tailor_cli.embedded import EmbeddedNats, EmbeddedPostgres, free_port
from tailor_cli.leftovers import RECORD_FILE, Leftovers


@dataclass
class RunningService:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def health_status(address: str, service: str = "", timeout_s: float = 1.0) -> str:
    """SERVING, NOT_SERVING, SERVICE_UNKNOWN or UNREACHABLE."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.RpcError as error:
            return "UNREACHABLE" if error.code() == grpc.StatusCode.UNAVAILABLE else str(error.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


async def ensure_databases(server_url: str, names: Iterable[str]) -> None:
    """Create each service's database on the server if it does not exist yet."""
    url = driver_url(server_url)
    connection = await asyncpg.connect(url)
    try:
        for name in names:
            database = f"tailor_{name}"
            exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
            if not exists:
                await connection.execute(f'CREATE DATABASE "{database}"')
    finally:
        await connection.close()


@dataclass
class Platform:
    data_dir: Path
    services: list[str] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    database_url: str | None = None
    nats_url: str | None = None
    free_ports: bool = False
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.specs: dict[str, ServiceSpec] = registry.select(",".join(self.services) if self.services else None)
        self.database_url = self.database_url or os.environ.get("TAILOR_DATABASE_URL") or None
        self.nats_url = self.nats_url or os.environ.get("TAILOR_NATS_URL") or None
        self.postgres = None if self.database_url else EmbeddedPostgres(self.data_dir)
        self.nats = None if self.nats_url else EmbeddedNats(self.data_dir, port=0 if self.free_ports else 4222)
        self.running: dict[str, RunningService] = {}
        self.leftovers = Leftovers(self.data_dir / RECORD_FILE)
        self.stopped_leftovers: list[str] = []
        """What an earlier launcher on this data directory left running, stopped at start."""

    # -- infrastructure ---------------------------------------------------------------------------

    def start_infrastructure(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.stopped_leftovers = self.leftovers.stop_all()
        if self.postgres is not None:
            self.database_url = self.postgres.start()
        if self.nats is not None:
            self.nats_url = self.nats.start()
            assert self.nats.process is not None
            self.leftovers.record("nats", self.nats.process)
        assert self.database_url is not None
        asyncio.run(ensure_databases(self.database_url, self.specs))

    def service_database_url(self, name: str) -> str:
        assert self.database_url is not None
        return database_url_for(self.database_url, name)

    def migrate(self) -> None:
        for name, spec in self.specs.items():
            migrate(spec.migrations_dir, self.service_database_url(name))

    # -- services ---------------------------------------------------------------------------------

    def environment(self, name: str, port: int) -> dict[str, str]:
        assert self.nats_url is not None
        env = dict(os.environ)
        env.update(
            {
                "TAILOR_NATS_URL": self.nats_url,
                f"TAILOR_{name.upper()}_DATABASE_URL": self.service_database_url(name),
                "TAILOR_GRPC_HOST": "127.0.0.1",
                f"TAILOR_{name.upper()}_GRPC_PORT": str(port),
            }
        )
        for other, running in self.running.items():
            env[f"TAILOR_{other.upper()}_ADDRESS"] = running.address
        env.update(self.extra_env)
        return env

    def start_service(self, name: str) -> RunningService:
        spec = self.specs[name]
        preferred = self.ports.get(name) or spec.settings_class.default_port
        port = free_port(0 if self.free_ports else preferred)
        log_file = self.data_dir / "logs" / f"{name}.log"
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with log_file.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "tailor_cli", "serve", name],
                env=self.environment(name, port),
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C meant for `tailor up` must not reach the services
                # directly; the launcher stops them in order (services, then NATS and PostgreSQL).
                start_new_session=True,
            )
        self.leftovers.record(name, process)
        running = RunningService(name, port, process, log_file)
        self.running[name] = running
        return running

    def wait_serving(self, running: RunningService) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise RuntimeError(
                    f"{running.name} exited with code {running.process.returncode}; "
                    f"last log lines:\n{tail(running.log_file)}"
                )
            if health_status(running.address) == "SERVING":
                return
            time.sleep(0.1)
        raise TimeoutError(f"{running.name} not SERVING after {self.start_timeout_s:.0f}s:\n{tail(running.log_file)}")

    def start_services(self) -> None:
        for name in self.specs:
            self.wait_serving(self.start_service(name))

    def stop_service(self, name: str, timeout_s: float = 20.0) -> int:
        running = self.running.pop(name)
        if running.process.poll() is None:
            running.process.send_signal(signal.SIGTERM)
            try:
                running.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
        self.leftovers.forget(running.process)
        return running.process.returncode

    def restart_service(self, name: str) -> RunningService:
        self.stop_service(name)
        running = self.start_service(name)
        self.wait_serving(running)
        return running

    def address(self, name: str) -> str:
        return self.running[name].address

    # -- whole platform ---------------------------------------------------------------------------

    def start(self) -> Platform:
        try:
            self.start_infrastructure()
            self.migrate()
            self.start_services()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for name in reversed(list(self.running)):
            with contextlib.suppress(Exception):
                self.stop_service(name)
        if self.nats is not None:
            self.nats.stop()
            if self.nats.process is not None:
                self.leftovers.forget(self.nats.process)
        if self.postgres is not None:
            self.postgres.stop()

    def stop_left_running(self) -> list[str]:
        """Stop, without starting anything, what a launcher on this data directory left running:
        the services and NATS it recorded, and the embedded PostgreSQL. The names stopped."""
        stopped = self.leftovers.stop_all()
        if self.postgres is not None and self.postgres.is_running():
            self.postgres.stop()
            stopped.append("postgres")
        return stopped

    def __enter__(self) -> Platform:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def tail(path: Path, lines: int = 30) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
