"""The one way a Tailor service process runs: gRPC server, health, reflection, database, bus.

A service describes itself with a `ServiceSpec` (its name, settings, migrations and a `build`
function that returns its servicers, subscriptions and listeners); `run_service` does the rest:

- starts the grpc.aio server at once with health NOT_SERVING, so probes get an answer;
- connects to PostgreSQL and NATS (retrying), provisions streams, starts the outbox relay, the
  durable consumers and the listeners, then reports SERVING;
- keeps checking the database and NATS, and reports NOT_SERVING while either is lost;
- on SIGTERM/SIGINT: NOT_SERVING, drain in-flight calls, stop consumers, flush the outbox, drain
  NATS, dispose the engine, flush spans.

With `workers` > 1 the process supervises that many worker processes serving calls, sharing the gRPC
port (SO_REUSEPORT: the kernel spreads incoming connections over them) and its input subscriptions,
and one background worker that runs the outbox relay, the other durable consumers and the
background tasks at a lower CPU priority (`Role`): on a machine whose cores the service shares, a
call does not wait behind events being relayed or followed. Workers are what replicas are to each
other: the outbox relay, the durable consumers and the database make that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc
import nats
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import SlowConsumerError
from nats.js import JetStreamContext

from tailor_platform import telemetry
from tailor_platform.auth import authenticator_for
from tailor_platform.bus.consumer import Consumer, ConsumerPolicy, Subscription
from tailor_platform.bus.listener import Listener
from tailor_platform.bus.outbox import Outbox
from tailor_platform.bus.streams import ensure_streams
from tailor_platform.config import ConfigError, ServiceSettings, load_settings
from tailor_platform.db import Database
from tailor_platform.interceptors import WORKER_ENV, CallGuard

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SHUTDOWN_STEP_S = 5.0
BACKGROUND_NICENESS = 10
"""How much lower the background worker's CPU priority is (`nice`): at 10, a worker serving calls
gets about nine times its share of a busy core."""


class Role(StrEnum):
    """What one process of a service does."""

    ALL = "all"
    """The only process: serves calls and does the background work."""
    CALLS = "calls"
    """One of several workers: serves calls and consumes the input subscriptions; its outbox commits
    wake the background worker's relay."""
    BACKGROUND = "background"
    """The one background worker beside them: outbox relay, the other subscriptions, background tasks."""


@dataclass
class Runtime:
    """What a service's build function gets to assemble its parts."""

    settings: ServiceSettings
    db: Database
    outbox: Outbox


@dataclass
class Components:
    """What a service contributes: servicers (registered by `register`), the full names of its gRPC
    services (for health and reflection), durable subscriptions, listeners held by every process
    serving calls (for their caches), background tasks (started once the database and NATS are up,
    cancelled on shutdown) and the listeners that wake them, and work to finish on shutdown once the
    last call was served (what a service keeps in memory for a moment before writing it, saved
    before the database is closed)."""

    register: Callable[[grpc.aio.Server], None]
    service_names: list[str]
    subscriptions: list[Subscription] = field(default_factory=list)
    """Consumed in the background: other services' facts to follow."""
    input_subscriptions: list[Subscription] = field(default_factory=list)
    """Consumed by every worker serving calls, at their priority: input that, like a call, the service
    exists to take in (an adapter's events), whose throughput grows with the workers."""
    listeners: list[Listener] = field(default_factory=list)
    background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    background_listeners: list[Listener] = field(default_factory=list)
    """Listeners that wake background tasks: held where those run, not by the workers serving calls."""
    on_shutdown: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    settings_class: type[ServiceSettings]
    migrations_dir: Path
    build: Callable[[Runtime], Components]

    def settings(self) -> ServiceSettings:
        """The service's settings from the environment; ConfigError names each bad variable."""
        return load_settings(self.settings_class)


class ServiceProcess:
    def __init__(self, spec: ServiceSpec, settings: ServiceSettings | None = None, role: Role = Role.ALL) -> None:
        self.spec = spec
        self.settings = settings or spec.settings()
        self.role = role
        self.db = Database(self.settings.service_database_url, read_connections=self.settings.database_read_connections)
        self.outbox = Outbox(
            self.db,
            spec.name,
            batch_size=self.settings.outbox_batch_size,
            poll_interval_s=self.settings.outbox_poll_interval_s,
        )
        self.components = spec.build(Runtime(self.settings, self.db, self.outbox))
        policy = ConsumerPolicy(
            batch_size=self.settings.consumer_batch_size,
            max_deliver=self.settings.consumer_max_deliver,
            backoff_s=tuple(self.settings.consumer_backoff_s),
        )
        self.consumers = [Consumer(spec.name, s, self.db, policy) for s in self._subscriptions()]
        self._listening: dict[NatsSubscription, Listener] = {}
        self.health = health.aio.HealthServicer()
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.server: grpc.aio.Server | None = None
        self._stop = asyncio.Event()
        self.port = 0

    @property
    def serves_calls(self) -> bool:
        return self.role is not Role.BACKGROUND

    @property
    def does_background_work(self) -> bool:
        return self.role is not Role.CALLS

    def _subscriptions(self) -> list[Subscription]:
        return [
            *(self.components.input_subscriptions if self.serves_calls else []),
            *(self.components.subscriptions if self.does_background_work else []),
        ]

    async def start(self) -> None:
        if self.serves_calls:
            await self._start_server()
        await self._connect()
        nc = self._nats()
        for consumer in self.consumers:
            self._tasks.append(asyncio.create_task(consumer.run(self._jetstream()), name=consumer.durable))
        if self.does_background_work:
            self._tasks.append(asyncio.create_task(self.outbox.run(nc), name="outbox-relay"))
            for work in self.components.background:
                self._tasks.append(asyncio.create_task(work(), name=getattr(work, "__name__", "background")))
        else:
            self._tasks.append(asyncio.create_task(self.outbox.forward_commits(nc), name="outbox-commits"))
        if self.serves_calls:
            self._tasks.append(asyncio.create_task(self._watch_health(), name="health"))

    async def _start_server(self) -> None:
        server = self.server = grpc.aio.server(
            interceptors=[CallGuard(authenticator_for(self.settings.auth_mode))],
            # Off unless workers share the port: a second server on a taken port must fail, not share.
            options=[("grpc.so_reuseport", 1 if self.settings.workers > 1 else 0)],
        )
        self.components.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [*self.components.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        await self._set_health(NOT_SERVING)
        address = f"{self.settings.grpc_host}:{self.settings.grpc_port}"
        self.port = server.add_insecure_port(address)
        await server.start()
        log.info("%s listening on %s", self.spec.name, address)

    def _nats(self) -> NATS:
        assert self.nc is not None, "NATS is not connected yet"
        return self.nc

    def _jetstream(self) -> JetStreamContext:
        assert self.js is not None, "NATS is not connected yet"
        return self.js

    async def _connect(self) -> None:
        """Wait for PostgreSQL and NATS (both may come up after us), then provision streams."""
        while not await self.db.ping():
            log.warning("database not reachable yet; retrying")
            await asyncio.sleep(1.0)
        while self.nc is None:
            try:
                self.nc = await nats.connect(
                    self.settings.nats_url,
                    name=f"tailor-{self.spec.name}",
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    reconnected_cb=self._on_reconnected,
                    disconnected_cb=self._on_disconnected,
                    error_cb=self._on_nats_error,
                )
            except Exception as error:
                log.warning("NATS not reachable yet (%s); retrying", error)
                await asyncio.sleep(1.0)
        self.js = self.nc.jetstream()
        await ensure_streams(self.js, replicas=self.settings.nats_replicas)
        for listener in self._listeners():
            self._listening[await listener.attach(self.nc)] = listener

    def _listeners(self) -> list[Listener]:
        return [
            *(self.components.listeners if self.serves_calls else []),
            *(self.components.background_listeners if self.does_background_work else []),
        ]

    async def _on_nats_error(self, error: Exception) -> None:
        # nats-py logs a full traceback per reconnect attempt by default; one line is enough.
        log.warning("NATS: %s: %s", type(error).__name__, error)
        if isinstance(error, SlowConsumerError):
            # The client dropped a message of this subscription: a listener's state missed it.
            listener = self._listening.get(error.sub)
            if listener is not None:
                await listener.on_gap()

    async def _on_disconnected(self) -> None:
        await self._set_health(NOT_SERVING)

    async def _on_reconnected(self) -> None:
        for listener in self._listeners():
            await listener.on_gap()

    async def _watch_health(self) -> None:
        while not self._stop.is_set():
            healthy = await self.db.ping() and self.nc is not None and self.nc.is_connected
            await self._set_health(SERVING if healthy else NOT_SERVING)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.settings.health_check_interval_s)

    async def _set_health(self, status: int) -> None:
        for name in ("", *self.components.service_names):
            await self.health.set(name, status)

    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def shutdown(self) -> None:
        self._stop.set()
        await self.health.enter_graceful_shutdown()
        if self.server is not None:
            await self.server.stop(self.settings.shutdown_grace_s)
        for consumer in self.consumers:
            consumer.stop()
        self.outbox.stop()
        # Consumers finish the message in hand and unsubscribe; whatever is left after the grace
        # step is cancelled (unacknowledged messages are redelivered, so nothing is lost).
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=SHUTDOWN_STEP_S)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for finish in self.components.on_shutdown:
            try:
                await asyncio.wait_for(finish(), timeout=SHUTDOWN_STEP_S)
            except Exception:
                log.warning("a shutdown step of %s did not finish", self.spec.name, exc_info=True)
        if self.js is not None and self.nc is not None and self.nc.is_connected:
            try:
                await asyncio.wait_for(self.outbox.flush(self.nc), timeout=SHUTDOWN_STEP_S)
            except Exception:
                log.warning("could not flush the outbox on shutdown; the next start publishes the rest")
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), timeout=SHUTDOWN_STEP_S)
            with contextlib.suppress(Exception):
                await self.nc.close()
        await self.db.dispose()
        log.info("%s stopped", self.spec.name)


async def serve(spec: ServiceSpec, settings: ServiceSettings | None = None, role: Role = Role.ALL) -> None:
    """Run a service (or the part of it that `role` names) until SIGTERM or SIGINT, then shut it
    down gracefully."""
    settings = settings or spec.settings()
    telemetry.setup_telemetry(
        spec.name,
        otlp_endpoint=settings.otlp_endpoint,
        log_level=settings.log_level,
        log_format=settings.log_format,
    )
    process = ServiceProcess(spec, settings, role)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, process.request_stop)
    starting = asyncio.create_task(process.start())
    stopping = asyncio.create_task(process.wait_stopped())
    try:
        # A stop request may come while we still wait for the database or NATS.
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()
            await stopping
        else:
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
    finally:
        await process.shutdown()
        telemetry.shutdown_telemetry()


def run_service(spec: ServiceSpec) -> None:
    """Serve in this process, or supervise `workers` worker processes that each serve. Settings
    the environment gets wrong end the process at once with one line naming the variables."""
    try:
        settings = spec.settings()
    except ConfigError as error:
        raise SystemExit(f"{spec.name}: invalid configuration: {error}") from None
    if settings.workers > 1:
        raise SystemExit(supervise_workers(spec, settings.workers))
    _serve_here(spec)


def _serve_here(spec: ServiceSpec, worker: str = "", role: Role = Role.ALL) -> None:
    """Serve in this process; `worker` ("index/count") when it is one of several serving calls."""
    if worker:
        os.environ[WORKER_ENV] = worker
    tune_garbage_collector()
    uvloop.run(serve(spec, role=role))  # asyncpg, NATS and grpc.aio all spend less CPU per call on libuv


def supervise_workers(spec: ServiceSpec, workers: int) -> int:
    """Start the workers serving calls and the background worker (fresh interpreters: gRPC must not
    be forked), pass SIGTERM/SIGINT on to them, and return once all have exited: 0 if all stopped
    cleanly. A worker that dies on its own stops the others too, so that the orchestrator restarts
    the whole set."""
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_serve_here, args=(spec, f"{i}/{workers}", Role.CALLS), name=f"{spec.name}-{i}")
        for i in range(workers)
    ]
    processes.append(
        context.Process(target=_serve_here, args=(spec, "", Role.BACKGROUND), name=f"{spec.name}-background")
    )
    for process in processes:
        process.start()
    background = processes[-1].pid
    assert background is not None
    with contextlib.suppress(ProcessLookupError):  # it died at once: the wait below stops the others
        os.setpriority(os.PRIO_PROCESS, background, os.getpriority(os.PRIO_PROCESS, 0) + BACKGROUND_NICENESS)
    stopping = threading.Event()

    def stop(signum: int, _frame: Any) -> None:
        stopping.set()
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    multiprocessing.connection.wait([process.sentinel for process in processes])
    if not stopping.is_set():
        log.error("a %s worker exited unexpectedly; stopping the others", spec.name)
        stop(signal.SIGTERM, None)
    for process in processes:
        process.join()
    # A worker stopped by SIGTERM before it had set up its handler was still starting: nothing to drain.
    clean = (0, -signal.SIGTERM) if stopping.is_set() else (0,)
    return max((abs(process.exitcode or 0) for process in processes if process.exitcode not in clean), default=0)


def tune_garbage_collector() -> None:
    """Services allocate many short-lived objects per batch and keep few: move everything loaded at
    start-up out of the collector's sight and collect the youngest generation less often (the
    default threshold of 700 allocations runs several collections for every 1,000-record batch)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
