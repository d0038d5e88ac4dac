"""The baselines: a service method that answers at once without doing anything, served by grpc.aio
in its own process like a real service (same event loop and server options, no interceptors).

- `consent`: ConsentService.CheckConsent answers an empty response.
- `profile`: ProfileService.IngestEvents parses the batch and answers "accepted" for every event;
  ProfileService.GetProfile answers a profile holding only the customer id.

    python -m bench.noop_server PORT [consent|profile] [WORKER COUNT]

With WORKER and COUNT (several processes sharing PORT, as a service's workers do) each process names
itself in its health-check answers like a service worker, so that clients spread over them.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tailor.consent.v1 import consent_pb2
from tailor.profile.v1 import profile_pb2
from tailor_cli.embedded import free_port
from tailor_cli.launcher import health_status
from tailor_platform.channels import WORKER_HEADER

from bench.framework import REPO_ROOT
from bench.loadgen import Server

Context = grpc.aio.ServicerContext[Any, Any]


async def check_consent(request: consent_pb2.CheckConsentRequest, context: Context) -> consent_pb2.CheckConsentResponse:
    return consent_pb2.CheckConsentResponse()


async def ingest_events(request: profile_pb2.IngestEventsRequest, context: Context) -> profile_pb2.IngestEventsResponse:
    return profile_pb2.IngestEventsResponse(
        results=[
            profile_pb2.EventResult(event_id=e.id, status=profile_pb2.EVENT_STATUS_ACCEPTED) for e in request.events
        ],
        accepted=len(request.events),
    )


async def get_profile(request: profile_pb2.GetProfileRequest, context: Context) -> profile_pb2.Profile:
    return profile_pb2.Profile(customer_id=request.customer_id)


Method = tuple[Callable[..., Any], Any, Any]
"""(behaviour, request type, response type)"""


def _add(server: grpc.aio.Server, service: str, methods: dict[str, Method]) -> None:
    """What the generated add_<Service>Servicer_to_server does, for these methods."""
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            behaviour, request_deserializer=request.FromString, response_serializer=response.SerializeToString
        )
        for name, (behaviour, request, response) in methods.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)


NOOPS: dict[str, Callable[[grpc.aio.Server], None]] = {
    "consent": lambda server: _add(
        server,
        consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name,
        {"CheckConsent": (check_consent, consent_pb2.CheckConsentRequest, consent_pb2.CheckConsentResponse)},
    ),
    "profile": lambda server: _add(
        server,
        profile_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
        {
            "IngestEvents": (ingest_events, profile_pb2.IngestEventsRequest, profile_pb2.IngestEventsResponse),
            "GetProfile": (get_profile, profile_pb2.GetProfileRequest, profile_pb2.Profile),
        },
    ),
}


class WorkerHealth(health.aio.HealthServicer):
    """Health answers that name this worker, as a service worker's do (see ChannelPool.spread)."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Context) -> health_pb2.HealthCheckResponse:
        await context.send_initial_metadata(((WORKER_HEADER, self.worker),))
        return await super().Check(request, context)


async def serve(port: int, service: str, worker: str = "") -> None:
    # The same options as tailor_platform.service.ServiceProcess uses.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1 if worker else 0)])
    NOOPS[service](server)
    health_servicer = WorkerHealth(worker) if worker else health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1.0)


@contextmanager
def running_noop_server(
    log_file: Path, service: str = "consent", *, workers: int = 1, timeout_s: float = 30.0
) -> Iterator[Server]:
    """Start the no-op server (`workers` processes sharing one port); yields it once each is SERVING.
    The Server's pid is the first process's."""
    port = free_port()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    arguments = (
        [[str(port), service]] if workers == 1 else [[str(port), service, str(i), str(workers)] for i in range(workers)]
    )
    with log_file.open("ab") as output:
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.noop_server", *args], cwd=REPO_ROOT, stdout=output, stderr=output
            )
            for args in arguments
        ]
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        # With several workers this is the first to answer; a client spreading its connections
        # (ChannelPool.spread_evenly) waits for the others.
        while health_status(address) != "SERVING":
            if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
                raise RuntimeError(f"the no-op server did not start; see {log_file}")
            time.sleep(0.1)
        yield Server(address, processes[0].pid)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)


if __name__ == "__main__":
    port, kind = int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "consent"
    worker = f"{sys.argv[3]}/{sys.argv[4]}" if len(sys.argv) > 4 else ""
    uvloop.run(serve(port, kind, worker))  # as every service runs
