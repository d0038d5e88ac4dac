"""The consent benchmark: CheckConsent throughput and latency against a no-op baseline.

1. Start PostgreSQL, NATS and the consent service (the launcher, each service its own process).
2. Import 100,000 customers' consents (2-3 records each, seeded) with ImportConsents and wait
   until the outbox has relayed every consent.changed (so no cache invalidation arrives later).
3. One pass over all customers at concurrency 32: the cold-cache figure, and it warms the cache.
4. At concurrency 1 and 32: the no-op server (bench/noop_server.py), then the consent service, each
   with the same load generator (bench/loadgen.py) and the same requests: warm-up, then a fixed
   window.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
from tailor.consent.v1 import consent_pb2, consent_pb2_grpc
from tailor_cli.launcher import Platform
from tailor_consent.domain.registry import DEFAULT_CHANNELS, DEFAULT_PURPOSES
from tailor_platform.db import driver_url

from bench.framework import SCRATCH_DIR, Benchmark, Context, Figure, Reporter, Steps, at_least, at_most
from bench.loadgen import LoadResult, LoadSpec, Server, run_load
from bench.noop_server import running_noop_server

CHECK_METHOD = "/tailor.consent.v1.ConsentService/CheckConsent"
KEYS = [(purpose, channel) for purpose in DEFAULT_PURPOSES for channel in ("", *DEFAULT_CHANNELS)]
SEED = 20240601
GRANTED_SHARE = 0.7
RECORDED_KEY_SHARE = 0.5
"""Share of checks that ask about a (purpose, channel) the customer has a record for."""


@dataclass(frozen=True)
class Sizes:
    customers: int
    warmup_s: float
    duration_s: float
    load_processes: int
    """Load-generator processes at concurrency 32 (one at concurrency 1)."""
    import_streams: int
    check_requests: int
    """Distinct requests the timed runs cycle through."""


FULL = Sizes(
    customers=100_000, warmup_s=2.0, duration_s=10.0, load_processes=2, import_streams=4, check_requests=50_000
)
SMOKE = Sizes(customers=2_000, warmup_s=0.5, duration_s=2.0, load_processes=2, import_streams=2, check_requests=2_000)


# -- data -------------------------------------------------------------------------------------------


def customer_id(index: int) -> str:
    return f"bench-{index:06d}"


def customer_consents(index: int) -> list[tuple[str, str, bool]]:
    """Customer `index`'s (purpose, channel, granted) records: 2 or 3 keys, seeded per customer."""
    rng = random.Random(SEED * 1_000_003 + index)
    keys = rng.sample(KEYS, rng.choice((2, 3)))
    return [(purpose, channel, rng.random() < GRANTED_SHARE) for purpose, channel in keys]


def recorded_keys(index: int) -> list[tuple[str, str]]:
    return [(purpose, channel) for purpose, channel, _ in customer_consents(index)]


def consent_records(indexes: range) -> Iterator[consent_pb2.SetConsentRequest]:
    for index in indexes:
        for number, (purpose, channel, granted) in enumerate(customer_consents(index)):
            yield consent_pb2.SetConsentRequest(
                customer_id=customer_id(index),
                purpose=purpose,
                channel=channel,
                granted=granted,
                source="bench:import",
                legal_basis="consent",
                policy_version="2024-06",
                request_id=f"bench-{index:06d}-{number}",
            )


def check_request(index: int, rng: random.Random) -> bytes:
    if rng.random() < RECORDED_KEY_SHARE:
        purpose, channel = rng.choice(recorded_keys(index))
    else:
        purpose, channel = rng.choice(KEYS)
    request = consent_pb2.CheckConsentRequest(customer_id=customer_id(index), purpose=purpose, channel=channel)
    return request.SerializeToString()


def sweep_requests(customers: int) -> list[bytes]:
    """One check per customer, in random order: the pass that warms the cache."""
    rng = random.Random(SEED + 1)
    order = list(range(customers))
    rng.shuffle(order)
    return [check_request(index, rng) for index in order]


def random_requests(customers: int, count: int) -> list[bytes]:
    rng = random.Random(SEED + 2)
    return [check_request(rng.randrange(customers), rng) for _ in range(count)]


def consent_stub(channel: Any) -> consent_pb2_grpc.ConsentServiceAsyncStub:
    """The stub of a grpc.aio channel (typed as such: grpc itself has no type hints)."""
    return cast("consent_pb2_grpc.ConsentServiceAsyncStub", consent_pb2_grpc.ConsentServiceStub(channel))


# -- loading ----------------------------------------------------------------------------------------


def chunks(customers: int, parts: int) -> list[range]:
    bounds = [customers * part // parts for part in range(parts + 1)]
    return [range(bounds[part], bounds[part + 1]) for part in range(parts)]


async def import_stream(
    stub: consent_pb2_grpc.ConsentServiceAsyncStub, indexes: range, advance: Steps
) -> consent_pb2.ImportConsentsResponse:
    async def requests() -> AsyncIterator[consent_pb2.ImportConsentsRequest]:
        for sent, record in enumerate(consent_records(indexes), start=1):
            yield consent_pb2.ImportConsentsRequest(record=record)
            if sent % 1000 == 0:
                advance(1000)

    response: consent_pb2.ImportConsentsResponse = await stub.ImportConsents(requests(), timeout=1800)
    return response


async def import_consents(address: str, sizes: Sizes, report: Reporter) -> int:
    """Load every customer's records over `sizes.import_streams` parallel streams; returns the count."""
    expected = sum(len(recorded_keys(index)) for index in range(sizes.customers))
    with report.step(f"importing {expected:,} consents of {sizes.customers:,} customers", total=expected) as advance:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = consent_stub(channel)
            responses = await asyncio.gather(
                *(import_stream(stub, part, advance) for part in chunks(sizes.customers, sizes.import_streams))
            )
    imported = sum(response.imported for response in responses)
    errors = [error for response in responses for error in response.errors]
    if errors or imported != expected:
        raise RuntimeError(f"imported {imported} of {expected} records; first errors: {errors[:3]}")
    return imported


async def outbox_backlog(database_url: str) -> int:
    connection = await asyncpg.connect(driver_url(database_url))
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM outbox")
        return count
    finally:
        await connection.close()


async def wait_outbox_drained(database_url: str, report: Reporter, timeout_s: float = 600.0) -> None:
    """Every consent.changed is published (and the service's listener has had time to see it)."""
    backlog = await outbox_backlog(database_url)
    with report.step("waiting for the outbox relay to publish consent.changed", total=backlog) as advance:
        remaining = backlog
        async with asyncio.timeout(timeout_s):
            while remaining:
                await asyncio.sleep(0.5)
                now = await outbox_backlog(database_url)
                advance(remaining - now)
                remaining = now
        await asyncio.sleep(2.0)


# -- checking ---------------------------------------------------------------------------------------


async def sanity_check(address: str, customers: int) -> None:
    """The data is there and CheckConsent decides both ways before anything is timed."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = consent_stub(channel)
        for index in (0, customers - 1):
            stored = await stub.GetConsents(consent_pb2.GetConsentsRequest(customer_id=customer_id(index)))
            if len(stored.consents) != len(recorded_keys(index)):
                raise RuntimeError(f"customer {customer_id(index)} has {len(stored.consents)} consents stored")
        reasons = set()
        for request in random_requests(customers, 200):
            response = await stub.CheckConsent(consent_pb2.CheckConsentRequest.FromString(request))
            reasons.add(response.reason)
    if not {"granted", "no_consent_recorded"} <= reasons:
        raise RuntimeError(f"CheckConsent gave only these reasons: {sorted(reasons)}")


def timed(server: Server, requests: Sequence[bytes], concurrency: int, sizes: Sizes, workdir: Path) -> LoadResult:
    spec = LoadSpec(
        server.address,
        CHECK_METHOD,
        requests,
        concurrency,
        processes=sizes.load_processes,
        warmup_s=sizes.warmup_s,
        duration_s=sizes.duration_s,
        server_pid=server.pid,
    )
    return run_load(spec, workdir)


def figures_of(prefix: str, result: LoadResult, concurrency: int) -> dict[str, float]:
    figures = {
        f"{prefix}.qps_c{concurrency}": round(result.qps, 1),
        f"{prefix}.p50_ms_c{concurrency}": round(result.percentile_ms(0.50), 3),
        f"{prefix}.p99_ms_c{concurrency}": round(result.percentile_ms(0.99), 3),
    }
    if result.server_cpu_us_per_call is not None:
        figures[f"{prefix}.cpu_us_per_call_c{concurrency}"] = round(result.server_cpu_us_per_call, 1)
    return figures


def cold_pass(consent: Server, sizes: Sizes, report: Reporter, workdir: Path) -> dict[str, float]:
    """One check per customer: every call loads a customer from PostgreSQL, and warms the cache."""
    with report.step(f"cold pass over {sizes.customers:,} customers (warms the cache), concurrency 32"):
        spec = LoadSpec(consent.address, CHECK_METHOD, sweep_requests(sizes.customers), 32, sizes.load_processes, True)
        cold = run_load(spec, workdir)
    report.note(f"cold c32: {cold.qps:,.0f} calls/s, p99 {cold.percentile_ms(0.99):.2f} ms")
    return {
        "consent.check.cold_qps_c32": round(cold.qps, 1),
        "consent.check.cold_p99_ms_c32": round(cold.percentile_ms(0.99), 3),
    }


def warm_runs(consent: Server, noop: Server, sizes: Sizes, report: Reporter, workdir: Path) -> dict[str, float]:
    """At each concurrency the no-op baseline, then the consent service, with the same requests."""
    figures: dict[str, float] = {}
    requests = random_requests(sizes.customers, sizes.check_requests)
    for concurrency in (1, 32):
        for name, prefix, server in (("no-op", "noop", noop), ("consent", "consent.check", consent)):
            with report.step(f"{name} CheckConsent, concurrency {concurrency}, {sizes.duration_s:g} s"):
                result = timed(server, requests, concurrency, sizes, workdir)
            figures.update(figures_of(prefix, result, concurrency))
            report.note(
                f"{name} c{concurrency}: {result.qps:,.0f} calls/s, p50 {result.percentile_ms(0.5):.2f} ms, "
                f"p99 {result.percentile_ms(0.99):.2f} ms, server CPU {result.server_cpu_us_per_call:.0f} us/call"
            )
        ratio = figures[f"consent.check.qps_c{concurrency}"] / figures[f"noop.qps_c{concurrency}"]
        figures[f"consent.check.qps_ratio_c{concurrency}"] = round(ratio, 3)
    return figures


def run(context: Context) -> dict[str, float]:
    sizes = SMOKE if context.smoke else FULL
    scratch = SCRATCH_DIR / "consent"
    shutil.rmtree(scratch, ignore_errors=True)
    report = context.report
    with report.step("starting PostgreSQL, NATS and the consent service"):
        platform = Platform(scratch / "platform", services=["consent"], free_ports=True).start()
    try:
        running = platform.running["consent"]
        consent = Server(running.address, running.process.pid)
        report.note(f"consent service log: {running.log_file}")
        started = time.monotonic()
        imported = asyncio.run(import_consents(consent.address, sizes, report))
        figures = {"consent.import.records_per_s": round(imported / (time.monotonic() - started), 1)}
        asyncio.run(wait_outbox_drained(platform.service_database_url("consent"), report))
        figures.update(cold_pass(consent, sizes, report, scratch / "load"))
        asyncio.run(sanity_check(consent.address, sizes.customers))
        with running_noop_server(scratch / "noop.log") as noop:
            figures.update(warm_runs(consent, noop, sizes, report, scratch / "load"))
        return figures
    finally:
        with report.step("stopping"):
            platform.stop()
        # Keep the logs, not the ~0.5 GB of data (the next run starts from scratch anyway).
        for data in (scratch / "platform" / "postgres", scratch / "platform" / "nats", scratch / "load"):
            shutil.rmtree(data, ignore_errors=True)


BENCHMARK = Benchmark(
    name="consent",
    run=run,
    figures=[
        Figure("noop.qps_c1", "no-op baseline QPS, concurrency 1", "/s"),
        Figure("noop.p50_ms_c1", "no-op baseline p50 latency, concurrency 1", "ms"),
        Figure("noop.p99_ms_c1", "no-op baseline p99 latency, concurrency 1", "ms"),
        Figure("noop.cpu_us_per_call_c1", "no-op server CPU time per call, concurrency 1", "µs"),
        Figure("noop.qps_c32", "no-op baseline QPS, concurrency 32", "/s"),
        Figure("noop.p50_ms_c32", "no-op baseline p50 latency, concurrency 32", "ms"),
        Figure("noop.p99_ms_c32", "no-op baseline p99 latency, concurrency 32", "ms"),
        Figure("noop.cpu_us_per_call_c32", "no-op server CPU time per call, concurrency 32", "µs"),
        Figure("consent.check.qps_c1", "CheckConsent QPS, concurrency 1 (warm cache)", "/s"),
        Figure("consent.check.p50_ms_c1", "CheckConsent p50 latency, concurrency 1 (warm cache)", "ms"),
        Figure("consent.check.p99_ms_c1", "CheckConsent p99 latency, concurrency 1 (warm cache)", "ms"),
        Figure("consent.check.qps_ratio_c1", "CheckConsent QPS / no-op QPS, concurrency 1"),
        Figure("consent.check.cpu_us_per_call_c1", "consent server CPU time per call, concurrency 1", "µs"),
        Figure("consent.check.qps_c32", "CheckConsent QPS, concurrency 32 (warm cache)", "/s"),
        Figure("consent.check.p50_ms_c32", "CheckConsent p50 latency, concurrency 32 (warm cache)", "ms"),
        Figure("consent.check.p99_ms_c32", "CheckConsent p99 latency, concurrency 32 (warm cache)", "ms", at_most(20)),
        Figure("consent.check.qps_ratio_c32", "CheckConsent QPS / no-op QPS, concurrency 32", "", at_least(0.7)),
        Figure("consent.check.cpu_us_per_call_c32", "consent server CPU time per call, concurrency 32", "µs"),
        Figure("consent.check.cold_qps_c32", "CheckConsent QPS, concurrency 32, cold cache (first pass)", "/s"),
        Figure("consent.check.cold_p99_ms_c32", "CheckConsent p99 latency, concurrency 32, cold cache", "ms"),
        Figure("consent.import.records_per_s", "ImportConsents throughput (4 streams)", "/s"),
    ],
    notes=[
        "Data: 100,000 customers with 2-3 consent records each (seeded), loaded with ImportConsents "
        "over 4 parallel streams; the benchmark then waits until the outbox has published every consent.changed.",
        'Warm cache: the CheckConsent figures without "cold" are measured after one pass over every customer. '
        "That pass is the cold-cache figure: each of its calls loads one customer from PostgreSQL.",
        "Checks: a uniformly random customer; half ask about a (purpose, channel) the customer has a record "
        "for, half about any of 5 purposes x (6 channels or purpose-wide).",
        "Processes: each server is its own process (the consent service started by the launcher; the no-op "
        "baseline bench/noop_server.py is grpc.aio with the same server options, no interceptors, and an empty "
        "response). The client is bench/loadgen.py: separate grpc.aio processes (2 at concurrency 32, 1 at "
        "concurrency 1) keeping N calls in flight on one channel each, sending pre-serialized requests; the same "
        "client and requests for both servers, run one after the other.",
        "Timed runs: 2 s warm-up, then the calls started in a 10 s window; latency as seen by the client "
        "(so it includes client-side queueing). Server CPU per call: the server process's user+system CPU "
        "time over that window divided by the calls (less sensitive to other load on the machine than QPS).",
        "On a 2-core machine the client processes and the server share the cores, so QPS and latency figures "
        "depend on the client's CPU use too; compare figures only from the same machine.",
    ],
)
