"""Client channels to other services.

A service with several workers (`TAILOR_<SERVICE>_WORKERS`) shares one port between processes and
the kernel gives each TCP connection to one of them, so a caller that wants its calls spread over
the workers needs several connections. gRPC shares one connection between channels with the same
arguments; `ChannelPool` gives each of its channels a subchannel pool of its own (hence its own
connection) and hands them out in turn.

The kernel picks a worker per connection by a hash, not in turn: two connections land on the same
worker half of the time, and that worker then does all the work while the other idles (measured:
17,000 instead of 25,000 identity records/s). `spread` therefore asks each connection which worker
it reached (the health check's `tailor-worker` header, "index/count") and opens new connections in
place of the ones that crowd a worker until the connections are spread evenly. The crowding ones
stay open until then: a connection opened right after closing one often gets the same source port
back, hence the same worker (measured: one pool in ten never spread).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import Counter
from collections.abc import Sequence

import grpc

from tailor_platform import telemetry

log = logging.getLogger(__name__)

WORKER_HEADER = "tailor-worker"
"""Initial metadata of a health check answered by one of several workers: "index/count"."""
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
SPREAD_ATTEMPTS = 32
"""Connections tried per pool slot at most (each lands on a crowded worker with odds about 1/2)."""
PROBE_TIMEOUT_S = 2.0
CONNECTION_ARG = "tailor.connection"
MAX_RECONNECT_BACKOFF_MS = 2000
"""The longest wait between attempts to reach a service that is down."""
_connections = itertools.count()
RETRY_SPREAD_AFTER_S = 30.0
"""When the server could not be asked (down, or not yet up), spreading is tried again this much later."""


class ChannelPool:
    def __init__(
        self,
        address: str,
        size: int = 1,
        *,
        interceptors: Sequence[grpc.aio.ClientInterceptor] | None = None,
        options: Sequence[tuple[str, object]] = (),
    ) -> None:
        if size < 1:
            raise ValueError("a channel pool needs at least one channel")
        self.address = address
        self.size = size
        self._interceptors = list(interceptors) if interceptors is not None else telemetry.client_interceptors()
        # gRPC waits up to 120 s between reconnect attempts by default, and a call on a channel that
        # is waiting fails at once: a service that came back would stay unreachable that long.
        reconnect = [("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS)]
        self._options = [*reconnect, *options] + ([("grpc.use_local_subchannel_pool", 1)] if size > 1 else [])
        self._channels: list[grpc.aio.Channel] = []
        self._turn = itertools.cycle(range(size))
        self._spreading: asyncio.Future[bool] | None = None
        self._unspread_since = 0.0

    def channel(self) -> grpc.aio.Channel:
        """The next channel (opened on first use, inside the running event loop)."""
        if not self._channels:
            self._channels = [self._open() for _ in range(self.size)]
        return self._channels[next(self._turn)]

    def _open(self) -> grpc.aio.Channel:
        # A channel argument of its own: gRPC never gives a new channel an existing connection.
        options = [*self._options, (CONNECTION_ARG, next(_connections))]
        return grpc.aio.insecure_channel(self.address, options=options, interceptors=self._interceptors)

    async def spread(self) -> bool:
        """Spread the pool's connections evenly over the server's workers, once (concurrent and
        later calls wait for or skip that work). Never raises: a server that cannot be asked, or
        whose workers could not all be reached (one still starting), is asked again on a call after
        RETRY_SPREAD_AFTER_S, and meanwhile the pool works as it is. Returns whether the
        connections are spread evenly."""
        if self.size == 1:
            return True
        if self._spreading is None or (
            self._spreading.done()
            and not self._spreading.result()
            and time.monotonic() - self._unspread_since > RETRY_SPREAD_AFTER_S
        ):
            self._spreading = asyncio.ensure_future(self._spread())
        if not self._spreading.done():
            await asyncio.shield(self._spreading)
        return self._spreading.result()

    async def spread_evenly(self, timeout_s: float = 30.0) -> bool:
        """`spread`, waiting up to `timeout_s` for a worker that is still starting (a service
        answers as soon as its first worker listens): for callers that start with the service."""
        deadline = time.monotonic() + timeout_s
        while not await self.spread():
            if time.monotonic() > deadline:
                return False
            self.respread()
            await asyncio.sleep(0.5)
        return True

    def respread(self) -> None:
        """Spread again on the next `spread` call: the server was lost (a restart, a network cut)
        and gRPC reconnects each channel to whichever worker the kernel picks."""
        if self._spreading is not None and self._spreading.done():
            self._spreading = None

    async def _spread(self) -> bool:
        self.channel()
        per_worker: Counter[int] = Counter()
        crowded: list[grpc.aio.Channel] = []
        even = True
        try:
            for position in range(self.size):
                for attempt in range(SPREAD_ATTEMPTS):
                    worker = await self._worker_of(self._channels[position])
                    if worker is None:
                        self._unspread_since = time.monotonic()
                        return False
                    index, count = worker
                    fits = per_worker[index] < -(-self.size // count)
                    if fits or attempt == SPREAD_ATTEMPTS - 1:
                        per_worker[index] += 1
                        even = even and fits
                        break
                    # Kept open until the spread is done (see the module docstring).
                    crowded.append(self._channels[position])
                    self._channels[position] = self._open()
        finally:
            for channel in crowded:
                await channel.close()
        log.debug("connections to %s per worker: %s", self.address, dict(per_worker))
        if not even:  # e.g. a worker still starting, not yet listening: try again later
            self._unspread_since = time.monotonic()
        return even

    async def _worker_of(self, channel: grpc.aio.Channel) -> tuple[int, int] | None:
        """(index, count) of the worker this channel's connection reached; (0, 1) for a server
        of one process; None when the server did not answer."""
        check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(HEALTH_CHECK)
        call = check(b"", timeout=PROBE_TIMEOUT_S)  # an empty HealthCheckRequest: the whole server
        try:
            metadata = await call.initial_metadata()
            await call
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return None
            metadata = await call.initial_metadata()  # answered with an error status: still one worker's
        value = dict(metadata or ()).get(WORKER_HEADER, "0/1")
        index, _, count = str(value).partition("/")
        try:
            return int(index), max(1, int(count))
        except ValueError:
            return 0, 1

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()
