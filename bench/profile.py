"""The profile benchmark: sustained ingestion through identity and profile, GetProfile latency, and
the profile process's peak memory.

1. Start PostgreSQL, NATS, identity and profile (the launcher, each service its own process).
2. Generate the demo population (tailor_profile.demo, seeded) sized to ~1,000,000 events over
   ~100,000 people, in batches of 500 (people in groups, each group's events in time order).
3. Ingest every batch once through IngestEvents at concurrency 4 (bench/loadgen.py, 2 processes):
   identity.ResolveBatch per batch, events stored, traits updated, profile.updated in the outbox.
   The figure counts until the outbox relay has published the last profile.updated.
4. The same client sends the first batches to a no-op IngestEvents servicer (bench/noop_server.py:
   it parses the request and answers "accepted" for each event), for the ratio.
5. GetProfile by customer id at concurrency 8 over random stored profiles.
6. Peak RSS of the profile process (VmHWM) after all of it.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import nats
import psutil
from tailor.profile.v1 import profile_pb2 as pb
from tailor_cli.launcher import Platform
from tailor_platform.bus.streams import STREAMS
from tailor_platform.db import driver_url
from tailor_profile.demo.generator import DemoConfig, interleaved, person_events, population
from tailor_profile.demo.truth import Connectivity, person_of

from bench.framework import SCRATCH_DIR, Benchmark, Context, Figure, Reporter, at_least, at_most, cpu_use
from bench.loadgen import LoadSpec, run_load
from bench.noop_server import running_noop_server

INGEST_METHOD = "/tailor.profile.v1.ProfileService/IngestEvents"
GET_METHOD = "/tailor.profile.v1.ProfileService/GetProfile"
SEED = 20261125
PROFILE_WORKERS = 2
WORKERS = {"TAILOR_IDENTITY_WORKERS": "2", "TAILOR_PROFILE_WORKERS": str(PROFILE_WORKERS)}
"""Two worker processes per service (2 cores). Every client keeps a connection per worker, spread
over them (ChannelPool.spread: each load generator process, and profile's identity client)."""
BATCH = 500
TARGET_EVENTS_PER_S = 10_000
GROUP = 400
"""People whose events are interleaved in time order before being cut into batches."""


@dataclass(frozen=True)
class Sizes:
    people: int
    sessions_per_week: float
    ingest_concurrency: int
    noop_batches: int
    get_requests: int
    warmup_s: float
    duration_s: float


FULL = Sizes(100_000, 0.037, 4, 300, 50_000, 2.0, 10.0)
SMOKE = Sizes(1_000, 0.036, 4, 10, 2_000, 0.5, 2.0)


# -- data -------------------------------------------------------------------------------------------


def ingest_requests(sizes: Sizes, report: Reporter) -> tuple[list[list[bytes]], int, set[str]]:
    """Serialized IngestEventsRequests of BATCH events each, in one lane per call in flight, the
    number of events, and the people whose identifiers connect (demo/truth.py).

    People are taken in groups; a group's events are in time order and cut into batches. The
    groups are spread over the lanes, and each lane is sent in order by its own call in flight, so
    that the batches in flight at one time come from different people (as from different channels)."""
    config = DemoConfig(people=sizes.people, seed=SEED, days=365, sessions_per_week=sizes.sessions_per_week)
    people = population(config).people
    lanes: list[list[bytes]] = [[] for _ in range(sizes.ingest_concurrency)]
    total = 0
    connectivity = Connectivity()
    with report.step(f"generating the events of {sizes.people:,} people", total=sizes.people) as advance:
        for number, start in enumerate(range(0, len(people), GROUP)):
            group = [event for person in people[start : start + GROUP] for event in person_events(person, config)]
            ordered = interleaved(group)
            for event in ordered:
                connectivity.add(event)
            for first in range(0, len(ordered), BATCH):
                batch = ordered[first : first + BATCH]
                lanes[number % len(lanes)].append(pb.IngestEventsRequest(events=batch).SerializeToString())
                total += len(batch)
            advance(min(GROUP, len(people) - start))
    return lanes, total, connectivity.linkable()


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
    """Peak resident memory (VmHWM) of the service: the process and its worker processes, summed."""
    total_kb = 0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total_kb += int(line.split()[1])
    if not total_kb:
        raise RuntimeError("no VmHWM in /proc status")
    return total_kb / 1024


# -- the runs ---------------------------------------------------------------------------------------


def ingest(
    platform: Platform, lanes: list[list[bytes]], events: int, sizes: Sizes, report: Reporter
) -> dict[str, float]:
    url = platform.service_database_url("profile")
    address = platform.address("profile")
    spec = LoadSpec(address, INGEST_METHOD, (), sizes.ingest_concurrency, 2, once=True, connections=2, lanes=lanes)
    batches = sum(map(len, lanes))
    with (
        report.step(f"ingesting {events:,} events in {batches:,} batches of {BATCH}"),
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
        "profile.ingest.p99_ms_batch500": round(result.percentile_ms(0.99), 1),
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
    return LoadSpec(
        address,
        GET_METHOD,
        requests,
        8,
        2,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.duration_s,
        connections=2,
    )


def run(context: Context) -> dict[str, float]:
    sizes = SMOKE if context.smoke else FULL
    scratch = SCRATCH_DIR / "profile"
    shutil.rmtree(scratch, ignore_errors=True)
    report = context.report
    lanes, events, linkable = ingest_requests(sizes, report)
    with report.step("starting PostgreSQL, NATS, identity and profile"):
        platform = Platform(
            scratch / "platform", services=["identity", "profile"], free_ports=True, extra_env=WORKERS
        ).start()
    try:
        report.note(f"logs: {scratch / 'platform' / 'logs'}")
        figures = ingest(platform, lanes, events, sizes, report)
        figures["profile.ingest.events"] = float(events)
        noop = noop_rate(lanes, sizes, report)
        figures["profile.ingest.noop_events_per_s"] = round(noop, 1)
        figures["profile.ingest.ratio_to_noop"] = round(figures["profile.ingest.events_per_s"] / noop, 3)
        with report.step("waiting for profile's consumers (identity.merged) to catch up; VACUUM ANALYZE"):
            assert platform.nats_url is not None
            wait_consumers_idle(platform.nats_url, "profile")
            for service in ("identity", "profile"):  # not autovacuum's catching up with the load
                asyncio.run(_execute(platform.service_database_url(service), "VACUUM ANALYZE", "CHECKPOINT"))
        figures.update(unification(platform.service_database_url("profile"), linkable, report))
        figures.update(get_profiles(platform, sizes, report))
        figures["profile.ingest.peak_rss_mb"] = round(peak_rss_mb(platform.running["profile"].process.pid), 1)
        return figures
    finally:
        with report.step("stopping"):
            platform.stop()


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
        Figure("profile.ingest.p99_ms_batch500", "IngestEvents p99 latency, batches of 500", "ms", at_most(150)),
        Figure("profile.ingest.noop_events_per_s", "no-op IngestEvents servicer, same client", "/s"),
        Figure("profile.ingest.ratio_to_noop", "ingestion rate / no-op rate"),
        *(
            Figure(
                f"profile.ingest.cpu_ms_per_batch.{name}", f"CPU per batch of {BATCH} during ingestion: {label}", "ms"
            )
            for name, label in (
                ("profile", "profile (its workers summed)"),
                ("identity", "identity (its workers summed)"),
                ("postgres", "PostgreSQL"),
                ("nats", "NATS"),
                ("clients", "the load generator"),
                ("machine", "the whole machine (all cores, everything)"),
                ("at_target", f"what {TARGET_EVENTS_PER_S:,} events/s leaves (every core)"),
            )
        ),
        Figure("profile.ingest.machine_busy_pct", "the machine's cores busy during ingestion", "%"),
        Figure("profile.ingest.peak_rss_mb", "peak RSS of the profile service (its 2 workers summed)", "MB"),
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
        "Data: the demo population (tailor_profile.demo, seed 20261125): 100,000 people over 365 days, "
        "about 1,000,000 events; people in groups of 400, each group's events in time order, cut into "
        "IngestEvents batches of 500.",
        "Ingestion: every batch once at concurrency 4 (bench/loadgen.py, 2 client processes): the groups are "
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
        "No-op: a grpc.aio IngestEvents servicer in its own process that parses the batch and answers "
        "'accepted' per event, driven by the same client with the first batches.",
        "GetProfile: random stored profiles by customer id, 2 s warm-up then 10 s, concurrency 8, once profile's "
        "consumers have caught up with the ingestion's identity.merged events and after VACUUM ANALYZE. "
        "Its no-op baseline: the same client and requests against a grpc.aio GetProfile servicer that answers "
        "a profile holding only the customer id, in 2 processes sharing a port like profile's workers (the "
        "floor of a Python gRPC call on this machine).",
        "Ground truth: every event's person (its demo id) against the profile it sits on once profile has "
        "folded identity's merges; 'linkable' people are those whose events' identifiers connect (identifiers "
        "on one event are connected; tailor_profile/demo/truth.py), the most any resolver can join. The others "
        "include anonymous sessions that never log in, kept apart by design.",
        "Everything (PostgreSQL, NATS, identity, profile, the clients) shares the machine's cores. Identity "
        "and profile each run 2 worker processes (TAILOR_<SERVICE>_WORKERS=2) sharing their port; each client "
        "process (and profile's identity client) spreads its connections over the workers, one per worker "
        "(ChannelPool.spread).",
    ],
)
