"""Client channels to other services.

A service with several workers (`TAILOR_<SERVICE>_WORKERS`) shares one port between processes and
the kernel gives each TCP connection to one of them, so a caller that wants its calls spread over
the workers needs several connections. gRPC shares one connection between channels with the same
arguments; `ChannelPool` gives each of its channels a subchannel pool of its own (hence its own
connection) and hands them out in turn.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import grpc

from tailor_platform import telemetry


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
        self._options = [*options, ("grpc.use_local_subchannel_pool", 1)] if size > 1 else list(options)
        self._channels: list[grpc.aio.Channel] = []
        self._turn = itertools.cycle(range(size))

    def channel(self) -> grpc.aio.Channel:
        """The next channel (opened on first use, inside the running event loop)."""
        if not self._channels:
            self._channels = [
                grpc.aio.insecure_channel(self.address, options=self._options, interceptors=self._interceptors)
                for _ in range(self.size)
            ]
        return self._channels[next(self._turn)]

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()
