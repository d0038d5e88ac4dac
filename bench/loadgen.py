"""The load generator: one or more separate processes, each a grpc.aio client keeping N unary calls
in flight on one channel (or on several, spread over a multi-worker server's processes), recording
every call's latency.

Requests are serialized up front and sent as raw bytes (responses are not parsed), so the client
spends as little CPU per call as grpc.aio allows, and every server under test gets exactly the
same client and the same requests.

Two modes:
- timed: all processes start together, warm up, then count calls started in a common window;
- once: every request exactly once (e.g. a pass over all customers), timed from first to last;
  with lanes, each call in flight sends one lane's requests in order, each after the previous one
  was answered (as a channel adapter sends its own stream), instead of taking the next of all.

Parent side: `run_load(LoadSpec(...), workdir)`. Child side: `python -m bench.loadgen ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tailor_platform.channels import ChannelPool

from bench.framework import REPO_ROOT

CALL_TIMEOUT_S = 10.0
START_DELAY_S = 2.0
"""How long the parent gives the processes to start before the common start time."""

_LENGTH = struct.Struct(">I")


# -- request files --------------------------------------------------------------------------------


def write_requests(path: Path, requests: Sequence[bytes]) -> None:
    with path.open("wb") as output:
        for request in requests:
            output.write(_LENGTH.pack(len(request)))
            output.write(request)


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests, offset = [], 0
    while offset < len(data):
        (length,) = _LENGTH.unpack_from(data, offset)
        offset += _LENGTH.size
        requests.append(data[offset : offset + length])
        offset += length
    return requests


# -- child: drive one channel ---------------------------------------------------------------------


@dataclass
class Window:
    """Calls that start in [start_ns, stop_ns) (perf_counter) are counted."""

    start_ns: int
    stop_ns: int

    @classmethod
    def after(cls, warmup_s: float, duration_s: float) -> Window:
        start_ns = time.perf_counter_ns() + int(warmup_s * 1e9)
        return cls(start_ns, start_ns + int(duration_s * 1e9))


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""
    first_start_ns: int = 0
    last_end_ns: int = 0

    def record(self, started_ns: int, ended_ns: int, error: grpc.aio.AioRpcError | None) -> None:
        if error is not None:
            self.errors += 1
            self.first_error = self.first_error or f"{error.code().name}: {error.details()}"
            return
        self.latencies_ns.append(ended_ns - started_ns)
        self.first_start_ns = min(self.first_start_ns or started_ns, started_ns)
        self.last_end_ns = max(self.last_end_ns, ended_ns)


Call = Any  # grpc.aio.UnaryUnaryMultiCallable (bytes in, bytes out)


async def timed_worker(call: Call, requests: list[bytes], first: int, step: int, window: Window, tally: Tally) -> None:
    index = first
    while (started := time.perf_counter_ns()) < window.stop_ns:
        error = None
        try:
            await call(requests[index % len(requests)], timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as failure:
            error = failure
        if started >= window.start_ns:
            tally.record(started, time.perf_counter_ns(), error)
        index += step


async def once_worker(call: Call, pending: Iterator[bytes], tally: Tally) -> None:
    for request in pending:
        started = time.perf_counter_ns()
        error = None
        try:
            await call(request, timeout=CALL_TIMEOUT_S)
        except grpc.aio.AioRpcError as failure:
            error = failure
        tally.record(started, time.perf_counter_ns(), error)


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    requests = read_requests(Path(args.requests))
    gc.freeze()  # the request list and imports never need collecting; fewer client-side pauses
    tally = Tally()
    pool = ChannelPool(args.target, args.connections, interceptors=[])
    try:
        # Several connections are spread over the server's workers (the kernel would put them on
        # one worker half of the time); the calls in flight take them in turn.
        await pool.spread_evenly()
        channels = [pool.channel() for _ in range(args.connections)]
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        calls: list[Call] = [channel.unary_unary(args.method) for channel in channels]
        await asyncio.sleep(max(0.0, args.start_at - time.time()))
        if args.once:
            shared = iter(requests)
            pending = _split(requests, args.lane_sizes) if args.lane_sizes else [shared] * args.concurrency
            await asyncio.gather(
                *(once_worker(calls[i % len(calls)], pending[i], tally) for i in range(args.concurrency))
            )
            begin_ns, end_ns = tally.first_start_ns, tally.last_end_ns
        else:
            window = Window.after(args.warmup, args.duration)
            first = args.offset % len(requests)
            await asyncio.gather(
                *(
                    timed_worker(calls[i % len(calls)], requests, first + i, args.concurrency, window, tally)
                    for i in range(args.concurrency)
                )
            )
            begin_ns, end_ns = window.start_ns, window.stop_ns
    finally:
        await pool.close()
    return {
        "latencies_ns": tally.latencies_ns,
        "errors": tally.errors,
        "first_error": tally.first_error,
        # Wall-clock bounds, so that the parent can combine processes.
        "begin": wall_clock(begin_ns),
        "end": wall_clock(end_ns),
    }


def _split(requests: list[bytes], sizes: str) -> list[Iterator[bytes]]:
    """The lanes of a requests file written lane after lane, with their sizes ("3,3,2")."""
    lanes = []
    start = 0
    for size in map(int, sizes.split(",")):
        lanes.append(iter(requests[start : start + size]))
        start += size
    return lanes


def wall_clock(perf_counter_ns: int) -> float:
    return time.time() - (time.perf_counter_ns() - perf_counter_ns) / 1e9


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen")
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--method", required=True, help="/package.Service/Method")
    parser.add_argument("--requests", required=True, help="file of length-prefixed serialized requests")
    parser.add_argument("--out", required=True, help="where to write the JSON tally")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1, help="spread over the server's workers")
    parser.add_argument("--start-at", type=float, default=0.0, help="wall-clock time to start at")
    parser.add_argument("--once", action="store_true", help="send every request once instead of timing")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--offset", type=int, default=0, help="first request index (timed mode)")
    parser.add_argument("--lane-sizes", default="", help="once mode: the file holds one lane per call in flight")
    return parser.parse_args(argv)


def child_main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    outcome = asyncio.run(drive(args))
    Path(args.out).write_text(json.dumps(outcome))


# -- parent: spawn, wait, combine -----------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server under test: where it listens, and its process (whose CPU time is measured)."""

    address: str
    pid: int


@dataclass(frozen=True)
class LoadSpec:
    target: str
    method: str
    requests: Sequence[bytes]
    concurrency: int
    processes: int = 1
    once: bool = False
    warmup_s: float = 2.0
    duration_s: float = 10.0
    server_pid: int | None = None
    """Measure this process's CPU time during the timed window (not in `once` mode)."""
    connections: int = 1
    """Connections per process, spread over the server's worker processes (at most its calls in flight)."""
    lanes: Sequence[Sequence[bytes]] = ()
    """Once mode instead of `requests`: one ordered lane per call in flight (as many as `concurrency`)."""


@dataclass(frozen=True)
class LoadResult:
    calls: int
    seconds: float
    latencies_ns: list[int]
    """Sorted."""
    server_cpu_s: float | None = None

    @property
    def qps(self) -> float:
        return self.calls / self.seconds

    @property
    def server_cpu_us_per_call(self) -> float | None:
        return None if self.server_cpu_s is None else self.server_cpu_s / self.calls * 1e6

    def percentile_ms(self, fraction: float) -> float:
        """Nearest-rank percentile, e.g. 0.99 for p99."""
        rank = max(1, math.ceil(fraction * len(self.latencies_ns)))
        return self.latencies_ns[rank - 1] / 1e6


def run_load(spec: LoadSpec, workdir: Path) -> LoadResult:
    """Run the load in `spec.processes` processes (at most one per in-flight call) and combine."""
    processes = max(1, min(spec.processes, spec.concurrency))
    if spec.lanes and (len(spec.lanes) != spec.concurrency or not spec.once):
        raise ValueError("lanes are for once mode, one per call in flight")
    workdir.mkdir(parents=True, exist_ok=True)
    start_at = time.time() + START_DELAY_S
    sampler = None
    if spec.server_pid is not None and not spec.once:
        window_start = start_at + spec.warmup_s
        sampler = CpuSampler(spec.server_pid, window_start, window_start + spec.duration_s)
    children = [_spawn(spec, workdir, index, processes, start_at) for index in range(processes)]
    outcomes = [_wait(child, out) for child, out in children]
    errors = sum(outcome["errors"] for outcome in outcomes)
    if errors:
        first = next(outcome["first_error"] for outcome in outcomes if outcome["errors"])
        raise RuntimeError(f"{errors} calls to {spec.method} failed, first: {first}")
    latencies = sorted(latency for outcome in outcomes for latency in outcome["latencies_ns"])
    seconds = max(outcome["end"] for outcome in outcomes) - min(outcome["begin"] for outcome in outcomes)
    server_cpu_s = sampler.cpu_seconds() if sampler is not None else None
    return LoadResult(calls=len(latencies), seconds=seconds, latencies_ns=latencies, server_cpu_s=server_cpu_s)


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuSampler:
    """A process's CPU time between two wall-clock moments (sampled by timers in this process)."""

    def __init__(self, pid: int, begin: float, end: float) -> None:
        self.samples: list[float] = []
        self._timers = [threading.Timer(moment - time.time(), self._sample, (pid,)) for moment in (begin, end)]
        for timer in self._timers:
            timer.start()

    def _sample(self, pid: int) -> None:
        self.samples.append(process_cpu_seconds(pid))

    def cpu_seconds(self) -> float:
        for timer in self._timers:
            timer.join()
        if len(self.samples) != 2:
            raise RuntimeError("could not sample the server's CPU time")
        return self.samples[1] - self.samples[0]


def _spawn(
    spec: LoadSpec, workdir: Path, index: int, processes: int, start_at: float
) -> tuple[subprocess.Popen[bytes], Path]:
    requests_file = workdir / f"requests-{index}.bin"
    out = workdir / f"tally-{index}.json"
    out.unlink(missing_ok=True)
    concurrency = spec.concurrency // processes + (1 if index < spec.concurrency % processes else 0)
    lanes = spec.lanes[index::processes]
    if lanes:
        share = [request for lane in lanes for request in lane]
    elif spec.once:
        share = list(spec.requests[index::processes])
    else:
        share = list(spec.requests)
    write_requests(requests_file, share)
    command = [
        sys.executable, "-m", "bench.loadgen",
        "--target", spec.target, "--method", spec.method,
        "--requests", str(requests_file), "--out", str(out),
        "--concurrency", str(concurrency), "--start-at", repr(start_at),
        "--warmup", str(spec.warmup_s), "--duration", str(spec.duration_s),
        "--offset", str(index * len(share) // processes),
        "--connections", str(max(1, min(spec.connections, concurrency))),
    ]  # fmt: skip
    if spec.once:
        command.append("--once")
    if lanes:
        command += ["--lane-sizes", ",".join(str(len(lane)) for lane in lanes)]
    return subprocess.Popen(command, cwd=REPO_ROOT), out


def _wait(child: subprocess.Popen[bytes], out: Path) -> dict[str, Any]:
    if child.wait() != 0 or not out.exists():
        raise RuntimeError(f"load generator {child.args!r} exited with code {child.returncode}")
    outcome: dict[str, Any] = json.loads(out.read_text())
    return outcome


if __name__ == "__main__":
    child_main(sys.argv[1:])
