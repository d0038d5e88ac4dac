"""ChannelPool's spreading, with the workers each connection reaches scripted (the real thing, a
multi-worker service, is tested in libs/cli/tests/test_cli.py)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from tailor_platform import channels
from tailor_platform.channels import ChannelPool


class FakeChannel:
    def __init__(self, worker: tuple[int, int] | None) -> None:
        self.worker = worker
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class ScriptedPool(ChannelPool):
    """Each new connection reaches the next worker of the script."""

    def __init__(self, size: int, script: Iterator[tuple[int, int] | None]) -> None:
        super().__init__("127.0.0.1:1", size, interceptors=[])
        self.script = script
        self.opened: list[Any] = []
        self.probes = 0

    def _open(self) -> Any:
        channel = FakeChannel(next(self.script))
        self.opened.append(channel)
        return channel

    async def _worker_of(self, channel: FakeChannel) -> tuple[int, int] | None:  # type: ignore[override]
        self.probes += 1
        return channel.worker


def reached(pool: ScriptedPool) -> list[int]:
    return sorted(pool.channel().worker[0] for _ in range(pool.size))  # type: ignore[attr-defined]


async def test_connections_crowding_a_worker_are_replaced_and_closed_once_spread() -> None:
    pool = ScriptedPool(4, iter([(0, 2)] * 5 + [(1, 2), (0, 2), (1, 2)]))
    await pool.spread()
    assert reached(pool) == [0, 0, 1, 1]
    kept: list[Any] = list(pool._channels)
    crowding = [channel for channel in pool.opened if channel not in kept]
    assert len(crowding) == 4 and all(channel.closed for channel in crowding)
    probes = pool.probes
    await pool.spread()  # once spread, spreading again asks nothing
    assert pool.probes == probes


async def test_a_lost_server_is_spread_again_on_the_next_call() -> None:
    pool = ScriptedPool(2, iter([(0, 2), (1, 2), (1, 2), (0, 2)]))
    await pool.spread()
    pool.respread()
    pool._channels = [pool._open(), pool._open()]  # gRPC reconnected both, to worker 1
    await pool.spread()
    assert reached(pool) == [0, 1]


async def test_a_server_that_cannot_be_asked_is_asked_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ScriptedPool(2, iter([None, None, (0, 2), (1, 2)]))
    await pool.spread()
    assert pool.probes == 1  # unreachable: the pool works unspread for now
    await pool.spread()
    assert pool.probes == 1  # not asked again at once
    monkeypatch.setattr(channels, "RETRY_SPREAD_AFTER_S", 0.0)
    pool._channels = [pool._open(), pool._open()]
    await pool.spread()
    assert reached(pool) == [0, 1]


async def test_a_server_of_one_process_needs_no_spreading() -> None:
    pool = ScriptedPool(3, iter([(0, 1)] * 3))
    await pool.spread()
    assert pool.probes == 3 and len(pool.opened) == 3


async def test_a_worker_not_yet_listening_is_looked_for_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every connection reaches worker 0 (worker 1 is still starting), then worker 1 is up.
    pool = ScriptedPool(2, iter([(0, 2)] * (1 + channels.SPREAD_ATTEMPTS) + [(1, 2)]))
    await pool.spread()
    assert reached(pool) == [0, 0]
    probes = pool.probes
    await pool.spread()
    assert pool.probes == probes  # not at once
    monkeypatch.setattr(channels, "RETRY_SPREAD_AFTER_S", 0.0)
    await pool.spread()
    assert reached(pool) == [0, 1]


async def test_spread_evenly_waits_for_a_worker_still_starting() -> None:
    pool = ScriptedPool(2, iter([(0, 2)] * (1 + channels.SPREAD_ATTEMPTS) + [(0, 2), (1, 2)]))
    assert await pool.spread_evenly(timeout_s=5)
    assert reached(pool) == [0, 1]
    never = ScriptedPool(2, itertools.repeat((0, 2)))
    assert not await never.spread_evenly(timeout_s=0.1)
