"""The load generator's lanes against a real gRPC server: each call in flight sends its own lane in
order, one call at a time, over connections of its own."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tailor_cli.embedded import free_port

from bench.loadgen import LoadSpec, run_load

METHOD = "/test.Recorder/Record"


class Recorder:
    """A grpc.aio server in a thread of its own that records (request, start, end) of each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, float, float]] = []
        self.address = f"127.0.0.1:{free_port()}"
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    async def _record(self, request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        started = time.monotonic()
        await asyncio.sleep(0.005)
        self.calls.append((request, started, time.monotonic()))
        return b""

    async def _serve(self) -> None:
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "test.Recorder", {"Record": grpc.unary_unary_rpc_method_handler(self._record)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(self.address)
        await server.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await server.stop(None)

    def __enter__(self) -> Recorder:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    with Recorder() as running:
        yield running


def test_each_lane_is_sent_in_order_one_call_at_a_time(recorder: Recorder, tmp_path: Path) -> None:
    lanes = [[f"lane{lane}-{n:03}".encode() for n in range(30 + lane)] for lane in range(4)]
    result = run_load(LoadSpec(recorder.address, METHOD, (), 4, 2, once=True, connections=2, lanes=lanes), tmp_path)

    assert result.calls == sum(map(len, lanes)) == len(recorder.calls)
    for lane in lanes:
        prefix = lane[0].split(b"-")[0]
        seen = [call for call in recorder.calls if call[0].startswith(prefix + b"-")]
        assert [request for request, _, _ in seen] == lane  # in order, each once
        assert all(later[1] >= earlier[2] for earlier, later in itertools.pairwise(seen))  # never overlapping
    # The lanes did run side by side (4 calls in flight in all).
    assert (
        max(sum(1 for _, start, end in recorder.calls if start <= moment < end) for _, moment, _ in recorder.calls) > 1
    )


def test_lanes_need_one_per_call_in_flight(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one per call in flight"):
        run_load(LoadSpec("127.0.0.1:1", METHOD, (), 4, 2, once=True, lanes=[[b"x"]]), tmp_path)
