"""The baseline: a ConsentService whose CheckConsent answers an empty response at once, served by
grpc.aio in its own process like a real service (same server options, no interceptors, no work).

    python -m bench.noop_server PORT
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tailor.consent.v1 import consent_pb2
from tailor_cli.embedded import free_port
from tailor_cli.launcher import health_status

from bench.framework import REPO_ROOT
from bench.loadgen import Server

SERVICE = consent_pb2.DESCRIPTOR.services_by_name["ConsentService"].full_name


async def check_consent(
    request: consent_pb2.CheckConsentRequest, context: grpc.aio.ServicerContext[Any, Any]
) -> consent_pb2.CheckConsentResponse:
    return consent_pb2.CheckConsentResponse()


def add_noop_consent(server: grpc.aio.Server) -> None:
    """What add_ConsentServiceServicer_to_server does, for CheckConsent only."""
    handlers = {
        "CheckConsent": grpc.unary_unary_rpc_method_handler(
            check_consent,
            request_deserializer=consent_pb2.CheckConsentRequest.FromString,
            response_serializer=consent_pb2.CheckConsentResponse.SerializeToString,
        )
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)


async def serve(port: int) -> None:
    # The same options as tailor_platform.service.ServiceProcess uses.
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    add_noop_consent(server)
    health_servicer = health.aio.HealthServicer()
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
def running_noop_server(log_file: Path, timeout_s: float = 30.0) -> Iterator[Server]:
    """Start the no-op server as a process; yields it once it is SERVING."""
    port = free_port()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.noop_server", str(port)], cwd=REPO_ROOT, stdout=output, stderr=output
        )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while health_status(address) != "SERVING":
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the no-op server did not start; see {log_file}")
            time.sleep(0.1)
        yield Server(address, process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1])))  # the event loop every service runs on
