"""The profile benchmark: sustained ingestion through identity and profile, IngestEvents latency at
the throughput target, GetProfile latency, and the profile process's peak memory.

1. Start PostgreSQL, NATS, identity and profile (the launcher, each service its own process).
2. Generate the demo population (tailor_profile.demo, seeded): ~1,000,000 events of ~100,000 people
   for the throughput, and the events of more people for the latency, in batches of 500 (people in
   groups, each group's events in time order).
3. Throughput: ingest every batch once through IngestEvents at concurrency 4 (bench/loadgen.py,
   2 processes): identity.ResolveBatch per batch, events stored, traits updated, profile.updated in
   the outbox. The figure counts until the outbox relay has published the last profile.updated.
4. The same client sends the first batches to a no-op IngestEvents servicer (bench/noop_server.py:
   it parses the request and answers "accepted" for each event), for the ratio.
5. Latency: the other people's batches sent on a fixed schedule of 10,000 events/s (an open loop),
   each call's latency counted from its scheduled start.
6. GetProfile by customer id at concurrency 8 over random stored profiles.
7. Peak RSS of the profile process (VmHWM) after all of it.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import nats
import psutil
from tailor.profile.v1 import profile_pb2 as pb
from tailor_cli.launcher import Platform
from tailor_platform.bus.streams import STREAMS
from tailor_platform.channels import ChannelPool
from tailor_platform.db import driver_url
from tailor_profile.demo.generator import DemoConfig, interleaved, person_events, population
from tailor_profile.demo.generator import Person as DemoPerson
from tailor_profile.demo.truth import Connectivity, person_of

from bench.framework import (
    SCRATCH_DIR,
    Benchmark,
    Context,
    Figure,
    MachineTimeline,
    Reporter,
    Steps,
    at_least,
    at_most,
    cpu_steal,
    cpu_use,
    frozen_heap,
    quantile_ms,
)
from bench.loadgen import LoadSpec, run_load
from bench.noop_server import running_noop_server

INGEST_METHOD = "/tailor.profile.v1.ProfileService/IngestEvents"
GET_METHOD = "/tailor.profile.v1.ProfileService/GetProfile"
SEED = 20261125
PROFILE_WORKERS = 2
WORKERS = {"TAILOR_IDENTITY_WORKERS": "2", "TAILOR_PROFILE_WORKERS": str(PROFILE_WORKERS)}
"""Two worker processes per service (2 cores). Every client keeps a connection per worker, spread
over them (ChannelPool.spread: each load generator process, and profile's identity client).
Measured against the alternatives back to back (2-core AMD EPYC, no-op rate within 6%): 1 identity
worker gave p99 215 ms at the target rate, 3 profile workers 238 ms, these 2 + 2 gave 168 ms.
Throughput was the same (about 12,100 events/s) in all three."""
BATCH = 500
TARGET_EVENTS_PER_S = 10_000
"""The throughput target; IngestEvents latency is measured while batches arrive at this rate."""
RATE_WARMUP_BATCHES = 4
GROUP = 400
"""People whose events are interleaved in time order before being cut into batches."""


@dataclass(frozen=True)
class Sizes:
    people: int
    """Whose events measure the throughput."""
    rate_people: int
    """Further people, whose events measure the latency at the target rate."""
    sessions_per_week: float
    ingest_concurrency: int
    noop_batches: int
    get_requests: int
    warmup_s: float
    duration_s: float


FULL = Sizes(100_000, 90_000, 0.037, 4, 300, 50_000, 2.0, 10.0)
"""The latency phase's 90,000 people send about 970,000 events: about 97 s at the target rate, about
one checkpoint cycle of PostgreSQL at that rate (see `settle`), and 1,900 batches, so that the p99
rests on the slowest 19 of them rather than on a handful."""
SMOKE = Sizes(1_000, 300, 0.036, 4, 10, 2_000, 0.5, 2.0)


# -- data -------------------------------------------------------------------------------------------


@dataclass
class IngestData:
    lanes: list[list[bytes]]
    """Serialized IngestEventsRequests of BATCH events for the throughput, one lane per call in flight."""
    events: int
    at_rate: list[bytes]
    """The latency phase's requests, in the order they are sent."""
    linkable: set[str]
    """The people whose identifiers connect (demo/truth.py), over both phases."""


def ingest_requests(sizes: Sizes, report: Reporter) -> IngestData:
    """The population's events cut into batches: the first `sizes.people` people's for the
    throughput, the next `sizes.rate_people` people's for the latency.

    People are taken in groups; a group's events are in time order and cut into batches. The
    groups are spread over the lanes, and each lane is sent in order by its own call in flight, so
    that the batches in flight at one time come from different people (as from different channels).
    The latency phase sends its lanes' batches in turn, so that a lane's next batch follows its
    previous one by as many scheduled intervals as there are lanes."""
    people_in_all = sizes.people + sizes.rate_people
    config = DemoConfig(people=people_in_all, seed=SEED, days=365, sessions_per_week=sizes.sessions_per_week)
    people = population(config).people
    connectivity = Connectivity()
    with report.step(f"generating the events of {people_in_all:,} people", total=people_in_all) as advance:
        concurrency = sizes.ingest_concurrency
        lanes, events = _lanes(people[: sizes.people], config, concurrency, connectivity, advance)
        rate_lanes, _ = _lanes(people[sizes.people :], config, concurrency, connectivity, advance)
    at_rate = [lane[turn] for turn in range(max(map(len, rate_lanes))) for lane in rate_lanes if turn < len(lane)]
    return IngestData(lanes, events, at_rate, connectivity.linkable())


def _lanes(
    people: list[DemoPerson], config: DemoConfig, count: int, connectivity: Connectivity, advance: Steps
) -> tuple[list[list[bytes]], int]:
    lanes: list[list[bytes]] = [[] for _ in range(count)]
    total = 0
    for number, start in enumerate(range(0, len(people), GROUP)):
        group = [event for person in people[start : start + GROUP] for event in person_events(person, config)]
        ordered = interleaved(group)
        for event in ordered:
            connectivity.add(event)
        for first in range(0, len(ordered), BATCH):
            batch = ordered[first : first + BATCH]
            lanes[number % count].append(pb.IngestEventsRequest(events=batch).SerializeToString())
            total += len(batch)
        advance(min(GROUP, len(people) - start))
    return lanes, total


async def _fetch(url: str, query: str) -> list[Any]:
    connection = await asyncpg.connect(driver_url(url))
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(driver_url(url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def backlog(url: str) -> int:
    """profile.updated not yet published plus events still queued for identity."""
    query = "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM pending_event) AS n"
    return int(asyncio.run(_fetch(url, query))[0]["n"])


def stored_events(url: str) -> int:
    return int(asyncio.run(_fetch(url, "SELECT count(*) AS n FROM event"))[0]["n"])


def wait_drained(url: str, timeout_s: float = 900.0) -> None:
    deadline = time.monotonic() + timeout_s
    while backlog(url):
        if time.monotonic() > deadline:
            raise RuntimeError("the outbox or the queue of events waiting for identity did not drain")
        time.sleep(0.2)


async def _consumer_backlog(nats_url: str, service: str) -> int:
    """Messages the service's durable consumers have not acknowledged yet (e.g. identity.merged)."""
    connection = await nats.connect(nats_url)
    try:
        js = connection.jetstream()
        backlog = 0
        for spec in STREAMS:
            for info in await js.consumers_info(spec.name):
                if info.name.startswith(f"{service}-"):
                    backlog += (info.num_pending or 0) + (info.num_ack_pending or 0)
        return backlog
    finally:
        await connection.close()


def wait_consumers_idle(nats_url: str, service: str, timeout_s: float = 600.0) -> None:
    """Reads are measured on a quiet service, not one still folding merges from the ingestion."""
    deadline = time.monotonic() + timeout_s
    while asyncio.run(_consumer_backlog(nats_url, service)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{service}'s consumers did not catch up")
        time.sleep(0.5)


def unification(url: str, linkable: set[str], report: Reporter) -> dict[str, float]:
    """Ground truth against where the events landed (merges folded in): the share of people whose
    events all sit on one profile, of all and of those whose identifiers connect (the most any
    resolver can join; demo/truth.py)."""
    query = "SELECT event_id, customer_id FROM customer_event WHERE event_id LIKE 'person-%'"
    profiles_of: dict[str, set[str]] = {}
    for row in asyncio.run(_fetch(url, query)):
        profiles_of.setdefault(person_of(row["event_id"]), set()).add(row["customer_id"])
    unified = {person for person, customers in profiles_of.items() if len(customers) == 1}
    reachable = linkable & profiles_of.keys()
    all_pct = 100 * len(unified) / len(profiles_of)
    linkable_pct = 100 * len(unified & reachable) / len(reachable)
    report.note(
        f"ground truth: {len(unified):,} of {len(profiles_of):,} people on one profile ({all_pct:.2f}%); "
        f"{len(unified & reachable):,} of the {len(reachable):,} whose identifiers connect ({linkable_pct:.2f}%)"
    )
    return {
        "profile.demo.people_on_one_profile_pct": round(all_pct, 2),
        "profile.demo.linkable_people_on_one_profile_pct": round(linkable_pct, 2),
    }


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the service: the process and its worker processes (the
    background one included), summed."""
    total_kb = 0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    if not total_kb:
        raise RuntimeError("no VmHWM in /proc status")
    return total_kb / 1024


# -- the runs ---------------------------------------------------------------------------------------


def ingest(platform: Platform, data: IngestData, sizes: Sizes, report: Reporter) -> dict[str, float]:
    url = platform.service_database_url("profile")
    address = platform.address("profile")
    lanes, events = data.lanes, data.events
    spec = LoadSpec(address, INGEST_METHOD, (), sizes.ingest_concurrency, 2, once=True, connections=2, lanes=lanes)
    batches = sum(map(len, lanes))
    with (
        report.step(f"throughput: {events:,} events in {batches:,} batches of {BATCH}"),
        cpu_use(_roots(platform)) as used,
    ):
        started = time.monotonic()
        result = run_load(spec, SCRATCH_DIR / "profile" / "load")
        wait_drained(url)
        seconds = time.monotonic() - started
    stored = stored_events(url)
    report.note(
        f"ingested {events:,} events ({stored:,} stored) in {seconds:.1f} s: {events / seconds:,.0f} events/s, "
        f"p99 batch {result.percentile_ms(0.99):.0f} ms"
    )
    figures = {
        "profile.ingest.events_per_s": round(events / seconds, 1),
        "profile.ingest.saturated_p99_ms_batch500": round(result.percentile_ms(0.99), 1),
    }
    figures.update(cpu_per_batch(used(), seconds, events, report))
    return figures


def _roots(platform: Platform) -> dict[str, int]:
    """The process trees whose CPU the ingestion is charged: each service (its workers included),
    PostgreSQL (the postmaster and its backends) and NATS."""
    roots = {name: platform.running[name].process.pid for name in ("profile", "identity")}
    if platform.postgres is not None:
        roots["postgres"] = platform.postgres.server_pid()
    if platform.nats is not None and platform.nats.process is not None:
        roots["nats"] = platform.nats.process.pid
    return roots


def cpu_per_batch(spent: dict[str, float], seconds: float, events: int, report: Reporter) -> dict[str, float]:
    """Where the machine's CPU went, per batch of BATCH events, against what the throughput target
    leaves: every core for 1 s per TARGET_EVENTS_PER_S events."""
    batches = events / BATCH
    per_batch = {name: 1000 * used_s / batches for name, used_s in spent.items()}
    cores = psutil.cpu_count() or 1
    allowed = 1000 * cores * BATCH / TARGET_EVENTS_PER_S
    busy_pct = 100 * spent["machine"] / (seconds * cores)
    parts = ", ".join(
        f"{name} {per_batch[name]:.1f}"
        for name in ("profile", "identity", "postgres", "nats", "clients")
        if name in per_batch
    )
    report.note(
        f"CPU per batch of {BATCH} (ms): {parts}; machine {per_batch['machine']:.1f} ({busy_pct:.0f}% of its cores "
        f"busy); {TARGET_EVENTS_PER_S:,} events/s would leave {allowed:.0f}"
    )
    figures = {f"profile.ingest.cpu_ms_per_batch.{name}": round(value, 1) for name, value in per_batch.items()}
    figures["profile.ingest.cpu_ms_per_batch.at_target"] = round(allowed, 1)
    figures["profile.ingest.machine_busy_pct"] = round(busy_pct, 1)
    return figures


def noop_rate(lanes: list[list[bytes]], sizes: Sizes, report: Reporter) -> float:
    sample = [request for lane in lanes for request in lane[: sizes.noop_batches // len(lanes)]]
    events = sum(len(pb.IngestEventsRequest.FromString(r).events) for r in sample)
    step = report.step(f"no-op IngestEvents, {len(sample)} batches")
    with step, running_noop_server(SCRATCH_DIR / "profile" / "noop.log", "profile") as noop:
        spec = LoadSpec(noop.address, INGEST_METHOD, sample, sizes.ingest_concurrency, 2, once=True, connections=2)
        result = run_load(spec, SCRATCH_DIR / "profile" / "load-noop")
    rate = events / result.seconds
    report.note(f"no-op: {rate:,.0f} events/s")
    return rate


async def ingest_at_target_rate(platform: Platform, data: IngestData, report: Reporter) -> dict[str, float]:
    """IngestEvents latency while batches arrive at the throughput target: one every
    BATCH / TARGET_EVENTS_PER_S seconds whatever the answers (an open loop), each latency counted
    from the call's scheduled start, so a call the client sent late counts its wait. (Latency at
    saturation is set by the calls kept in flight: by Little's law 4 calls in flight at 20 batches
    a second wait 200 ms on average, whatever the service does.)"""
    interval_s = BATCH / TARGET_EVENTS_PER_S
    warmup, timed = data.at_rate[:RATE_WARMUP_BATCHES], data.at_rate[RATE_WARMUP_BATCHES:]
    pool = ChannelPool(platform.address("profile"), PROFILE_WORKERS, interceptors=[])
    await pool.spread_evenly()
    latencies: list[float] = []
    calls: list[tuple[float, float]] = []  # (scheduled start after the phase's start, latency), seconds
    not_accepted = 0
    loop = asyncio.get_running_loop()

    async def send(request: bytes) -> pb.IngestEventsResponse:
        ingest: grpc.aio.UnaryUnaryMultiCallable[bytes, pb.IngestEventsResponse] = pool.channel().unary_unary(
            INGEST_METHOD, response_deserializer=pb.IngestEventsResponse.FromString
        )
        response: pb.IngestEventsResponse = await ingest(request, timeout=60)
        return response

    try:
        for request in warmup:  # connections and prepared statements of the new client
            await send(request)
        step = report.step(
            f"latency: {len(timed)} IngestEvents calls of {BATCH} at {TARGET_EVENTS_PER_S:,} events/s", total=len(timed)
        )
        with frozen_heap(), step as advance:
            start = loop.time() + 0.1

            async def call(number: int, request: bytes) -> None:
                nonlocal not_accepted
                scheduled = start + number * interval_s
                await asyncio.sleep(scheduled - loop.time())
                response = await send(request)
                latencies.append(loop.time() - scheduled)
                calls.append((scheduled - start, latencies[-1]))
                not_accepted += len(response.results) - response.accepted
                advance(1)

            started_at = time.time() + (start - loop.time())
            with cpu_steal() as stolen, cpu_use(_roots(platform)) as used, MachineTimeline() as machine:
                await asyncio.gather(*(call(number, request) for number, request in enumerate(timed)))
            elapsed = loop.time() - start
    finally:
        await pool.close()
    report.note(slowest_seconds(calls, machine, started_at, SCRATCH_DIR / "profile" / "at_rate_timeline.json"))
    latencies.sort()
    busy_pct = 100 * used()["machine"] / (elapsed * (psutil.cpu_count() or 1))
    report.note(
        f"at {TARGET_EVENTS_PER_S:,} events/s offered ({len(timed) * BATCH / elapsed:,.0f} answered): per batch "
        f"p50 {quantile_ms(latencies, 0.5):.0f} ms, p90 {quantile_ms(latencies, 0.9):.0f} ms, "
        f"p99 {quantile_ms(latencies, 0.99):.0f} ms, max {latencies[-1] * 1000:.0f} ms; {busy_pct:.0f}% of the cores "
        f"busy; {not_accepted} events not accepted; CPU steal {stolen()}%"
    )
    return {
        "profile.ingest.at_rate_not_accepted": float(not_accepted),
        "profile.ingest.p99_ms_batch500": round(quantile_ms(latencies, 0.99), 1),
        "profile.ingest.p95_ms_batch500": round(quantile_ms(latencies, 0.95), 1),
        "profile.ingest.p50_ms_batch500": round(quantile_ms(latencies, 0.5), 1),
        "profile.ingest.at_rate_batches": float(len(latencies)),
        "profile.ingest.at_rate_machine_busy_pct": round(busy_pct, 1),
    }


def slowest_seconds(calls: list[tuple[float, float]], machine: MachineTimeline, started_at: float, out: Path) -> str:
    """Each second of the phase (its calls' latencies next to what the machine did), written to
    `out` for a closer look; returned: the slowest seconds, to tell a saturated machine, a disk
    busy writing back or a slow host from the services' own work."""
    by_second: dict[int, list[float]] = {}
    for offset, latency in calls:
        by_second.setdefault(int(offset), []).append(latency * 1000)
    seconds = [
        {"second": second, "calls": len(ms), "mean_ms": round(sum(ms) / len(ms), 1), "max_ms": round(max(ms), 1)}
        | machine.at(started_at + second + 0.5)
        for second, ms in sorted(by_second.items())
    ]
    out.write_text(json.dumps(seconds, indent=1))
    slowest = sorted(seconds, key=lambda row: -row["mean_ms"])[:3]
    described = "; ".join(f"{row['second']} s: {_second(row)}" for row in slowest)
    return f"slowest seconds: {described} (every second: {out})"


def _second(row: dict[str, float]) -> str:
    calls = f"mean {row['mean_ms']:.0f} ms, max {row['max_ms']:.0f} ms"
    if "busy_pct" not in row:
        return calls
    return (
        f"{calls}, cores {row['busy_pct']:.0f}% busy, iowait {row['iowait_pct']:.0f}%, steal {row['steal_pct']:.0f}%, "
        f"{row['unwritten_mb']:.0f} MB written but not yet on disk"
    )


def get_profiles(platform: Platform, sizes: Sizes, report: Reporter) -> dict[str, float]:
    url = platform.service_database_url("profile")
    rows = asyncio.run(_fetch(url, "SELECT customer_id FROM profile_state"))
    rng = random.Random(SEED)
    customers = [row["customer_id"] for row in rows]
    report.note(f"{len(customers):,} profiles stored")
    requests = [
        pb.GetProfileRequest(customer_id=rng.choice(customers)).SerializeToString() for _ in range(sizes.get_requests)
    ]
    running = platform.running["profile"]
    with report.step(f"GetProfile, concurrency 8, {sizes.duration_s:g} s"):
        result = run_load(_get_spec(running.address, requests, sizes), SCRATCH_DIR / "profile" / "load-get")
    report.note(f"GetProfile c8: {result.qps:,.0f}/s, p50 {result.percentile_ms(0.5):.2f} ms")
    step = report.step(f"no-op GetProfile, concurrency 8, {sizes.duration_s:g} s")
    # As many no-op processes sharing a port as profile has workers: the same floor under the same spread.
    noop_server = running_noop_server(SCRATCH_DIR / "profile" / "noop-get.log", "profile", workers=PROFILE_WORKERS)
    with step, noop_server as noop:
        baseline = run_load(_get_spec(noop.address, requests, sizes), SCRATCH_DIR / "profile" / "load-noop-get")
    report.note(f"no-op GetProfile c8: {baseline.qps:,.0f}/s, p99 {baseline.percentile_ms(0.99):.2f} ms")
    return {
        "profile.get.p99_ms_c8": round(result.percentile_ms(0.99), 3),
        "profile.get.qps_c8": round(result.qps, 1),
        "profile.get.noop_p99_ms_c8": round(baseline.percentile_ms(0.99), 3),
        "profile.get.noop_qps_c8": round(baseline.qps, 1),
        "profile.stored_profiles": float(len(customers)),
    }


def _get_spec(address: str, requests: list[bytes], sizes: Sizes) -> LoadSpec:
    """8 calls in flight from one client process, over a connection per profile worker. (A second
    client process takes the 2 cores' time from the server it measures: with two, the no-op
    servicer answered about 5,400 calls/s instead of 5,700 to 6,600.)"""
    return LoadSpec(
        address,
        GET_METHOD,
        requests,
        8,
        1,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.duration_s,
        connections=2,
    )


def run(context: Context) -> dict[str, float]:
    sizes = SMOKE if context.smoke else FULL
    scratch = SCRATCH_DIR / "profile"
    shutil.rmtree(scratch, ignore_errors=True)
    report = context.report
    data = ingest_requests(sizes, report)
    with report.step("starting PostgreSQL, NATS, identity and profile"):
        platform = Platform(
            scratch / "platform", services=["identity", "profile"], free_ports=True, extra_env=WORKERS
        ).start()
    try:
        report.note(f"logs: {scratch / 'platform' / 'logs'}")
        figures = ingest(platform, data, sizes, report)
        figures["profile.ingest.events"] = float(data.events)
        noop = noop_rate(data.lanes, sizes, report)
        figures["profile.ingest.noop_events_per_s"] = round(noop, 1)
        figures["profile.ingest.ratio_to_noop"] = round(figures["profile.ingest.events_per_s"] / noop, 3)
        settle(platform, report)
        figures.update(asyncio.run(ingest_at_target_rate(platform, data, report)))
        wait_drained(platform.service_database_url("profile"))
        settle(platform, report)
        figures.update(unification(platform.service_database_url("profile"), data.linkable, report))
        figures.update(get_profiles(platform, sizes, report))
        figures["profile.ingest.peak_rss_mb"] = round(peak_rss_mb(platform.running["profile"].process.pid), 1)
        return figures
    finally:
        with report.step("stopping"):
            platform.stop()


def settle(platform: Platform, report: Reporter) -> None:
    """Before a timed phase: profile's consumers have folded the merges the ingestion caused, and
    the tables are vacuumed and analyzed (not autovacuum's catching up with the previous phase).

    The checkpoint starts the phase where a checkpoint cycle starts: for some seconds after it, the
    first change to each page writes the whole page to the WAL (about 50 MB of WAL a second at the
    target rate instead of 17). With max_wal_size 4GB (tailor_cli.embedded) a checkpoint comes about
    every 2 GB of WAL, two minutes at that rate; the latency phase lasts about as long, so it holds
    that surge as often as sustained ingestion does."""
    with report.step("waiting for profile's consumers (identity.merged) to catch up; VACUUM ANALYZE"):
        assert platform.nats_url is not None
        wait_consumers_idle(platform.nats_url, "profile")
        for service in ("identity", "profile"):
            asyncio.run(_execute(platform.service_database_url(service), "VACUUM ANALYZE", "CHECKPOINT"))


BENCHMARK = Benchmark(
    name="profile",
    run=run,
    figures=[
        Figure("profile.ingest.events", "events ingested", ""),
        Figure(
            "profile.ingest.events_per_s",
            "sustained ingestion, until profile.updated is published",
            "/s",
            at_least(TARGET_EVENTS_PER_S),
        ),
        Figure(
            "profile.ingest.saturated_p99_ms_batch500",
            "IngestEvents p99 latency during the throughput run (4 calls in flight, saturated; for reference)",
            "ms",
        ),
        Figure(
            "profile.ingest.p99_ms_batch500",
            f"IngestEvents p99 latency, batches of {BATCH}, calls arriving at {TARGET_EVENTS_PER_S:,} events/s",
            "ms",
            at_most(150),
        ),
        Figure(
            "profile.ingest.p95_ms_batch500",
            f"IngestEvents p95 latency, calls arriving at {TARGET_EVENTS_PER_S:,} events/s",
            "ms",
        ),
        Figure(
            "profile.ingest.p50_ms_batch500",
            f"IngestEvents median latency, calls arriving at {TARGET_EVENTS_PER_S:,} events/s",
            "ms",
        ),
        Figure("profile.ingest.at_rate_batches", "IngestEvents calls timed at the target rate", ""),
        Figure(
            "profile.ingest.at_rate_machine_busy_pct",
            f"the machine's cores busy while calls arrived at {TARGET_EVENTS_PER_S:,} events/s",
            "%",
        ),
        Figure(
            "profile.ingest.at_rate_not_accepted",
            "events of the latency phase not accepted (queued for identity or rejected)",
            "",
        ),
        Figure("profile.ingest.noop_events_per_s", "no-op IngestEvents servicer, same client", "/s"),
        Figure("profile.ingest.ratio_to_noop", "ingestion rate / no-op rate"),
        *(
            Figure(
                f"profile.ingest.cpu_ms_per_batch.{name}", f"CPU per batch of {BATCH} during ingestion: {label}", "ms"
            )
            for name, label in (
                ("profile", "profile (its processes summed)"),
                ("identity", "identity (its processes summed)"),
                ("postgres", "PostgreSQL"),
                ("nats", "NATS"),
                ("clients", "the load generator"),
                ("machine", "the whole machine (all cores, everything)"),
                ("at_target", f"what {TARGET_EVENTS_PER_S:,} events/s leaves (every core)"),
            )
        ),
        Figure("profile.ingest.machine_busy_pct", "the machine's cores busy during ingestion", "%"),
        Figure(
            "profile.ingest.peak_rss_mb",
            "peak RSS of the profile service (its processes summed: 2 workers and the background one)",
            "MB",
        ),
        Figure("profile.get.p99_ms_c8", "GetProfile p99 latency, concurrency 8", "ms", at_most(10)),
        Figure("profile.get.qps_c8", "GetProfile QPS, concurrency 8", "/s"),
        Figure("profile.get.noop_p99_ms_c8", "no-op GetProfile servicer p99 latency, same client and requests", "ms"),
        Figure("profile.get.noop_qps_c8", "no-op GetProfile servicer QPS, same client and requests", "/s"),
        Figure("profile.stored_profiles", "profiles stored when GetProfile was measured", ""),
        Figure(
            "profile.demo.people_on_one_profile_pct",
            "ground truth: people whose events all sit on one profile, after merges",
            "%",
        ),
        Figure(
            "profile.demo.linkable_people_on_one_profile_pct",
            "the same, of the people whose identifiers connect (the most any resolver can join)",
            "%",
        ),
    ],
    notes=[
        "Data: the demo population (tailor_profile.demo, seed 20261125) over 365 days: 100,000 people, about "
        "1,000,000 events, for the throughput, and 90,000 more people, about 970,000 events, for the latency; "
        "people in groups of 400, each group's events in time order, cut into IngestEvents batches of 500.",
        "Throughput: every batch once at concurrency 4 (bench/loadgen.py, 2 client processes): the groups are "
        "dealt to 4 lanes and each lane is sent in order by its own call in flight, as channel adapters send "
        "their streams (so batches in flight together hold different people); each batch is "
        "resolved with one identity.ResolveBatch, stored, folded into traits and announced with profile.updated "
        "through the outbox. The rate counts until the outbox is empty (every profile.updated published) and "
        "no event waits for identity any more (batches whose ResolveBatch missed its deadline are queued).",
        "CPU per batch: user + system CPU time of each process tree (a service with its workers; "
        "PostgreSQL's postmaster with its backends and autovacuum workers, exited ones included) over the "
        "ingestion, divided by the batches; 'machine' is every core's busy time (all processes); "
        "'at target' is what the throughput target leaves: all cores for 1 s per 10,000 events. Where the "
        "parts add up to more than that, the target cannot be met by waiting less, only by spending less.",
        "Latency: after the throughput run (and the no-op's), once profile's consumers have caught up and "
        "after VACUUM ANALYZE and a checkpoint (the phase lasts about as long as a checkpoint cycle at this rate, "
        "so the surge of full-page WAL writes after a checkpoint is in it as often as in sustained ingestion), "
        "the further people's batches (about 1,900) are sent on a fixed schedule of "
        "one every 50 ms (10,000 events/s, the throughput target) whatever the answers (an open loop, from "
        "the benchmark's process, one connection per profile worker), each latency counted from the call's "
        "scheduled start (a call the client sent late counts its wait); the first 4 batches warm the "
        "connections up and are not timed. Their groups are dealt to 4 lanes sent in turn, so a lane's next "
        "batch follows its previous one by 200 ms. This is the p99 the target asks for: how long a batch "
        "takes while the service sustains the rate it must sustain. The throughput run's own p99 is given "
        "for reference only: with 4 calls kept in flight on a saturated machine, Little's law sets its mean "
        "latency to 4 / the batches answered per second (200 ms at 20 a second), whatever the service does. "
        "Each second of the phase (its calls' mean and max latency; the cores busy, in iowait and stolen; "
        "data the kernel still had to write back) is written to bench/out/profile/at_rate_timeline.json, "
        "and the run's output names the slowest three.",
        "No-op: a grpc.aio IngestEvents servicer in its own process that parses the batch and answers "
        "'accepted' per event, driven by the same client with the first batches.",
        "GetProfile: random stored profiles by customer id, 2 s warm-up then 10 s, concurrency 8 from one client "
        "process over a connection per profile worker (a second client process took CPU from the server: the "
        "no-op answered about 5,400 calls/s with two, 5,700-6,600 with one), once profile's "
        "consumers have caught up with the ingestion's identity.merged events and after VACUUM ANALYZE. "
        "Its no-op baseline: the same client and requests against a grpc.aio GetProfile servicer that answers "
        "a profile holding only the customer id, in 2 processes sharing a port like profile's workers (the "
        "floor of a Python gRPC call on this machine).",
        "Ground truth (the people of both phases): every event's person (its demo id) against the profile it "
        "sits on once profile has folded identity's merges; 'linkable' people are those whose events' "
        "identifiers connect (identifiers on one event are connected; tailor_profile/demo/truth.py), the most "
        "any resolver can join. The others "
        "include anonymous sessions that never log in, kept apart by design.",
        "Everything (PostgreSQL, NATS, identity, profile, the clients) shares the machine's cores. Identity "
        "and profile each run 2 worker processes (TAILOR_<SERVICE>_WORKERS=2) sharing their port, and beside "
        "them the background worker that relays their outbox and consumes events, at a lower CPU priority; each "
        "client process (and profile's identity client) spreads its connections over the workers, one per worker "
        "(ChannelPool.spread).",
    ],
)
