"""The `tailor` command as a user (or a Helm hook job) runs it: a real process, real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import nats
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tailor.consent.v1 import consent_pb2, consent_pb2_grpc
from tailor_cli.embedded import EmbeddedPostgres, free_port
from tailor_cli.launcher import Platform, ensure_databases
from tailor_cli.testing import Infra
from tailor_platform.channels import WORKER_HEADER, ChannelPool
from tailor_platform.config import database_url_for
from tailor_platform.db import driver_url
from tailor_platform.service import BACKGROUND_NICENESS


def tailor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tailor_cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_streams_provisions_every_stream_idempotently(infra: Infra) -> None:
    for _ in range(2):
        result = tailor("streams", TAILOR_NATS_URL=infra.nats_url)
        assert result.returncode == 0, result.stderr

    async def names() -> set[str]:
        connection = await nats.connect(infra.nats_url)
        try:
            return {info.config.name for info in await connection.jetstream().streams_info() if info.config.name}
        finally:
            await connection.close()

    assert {"TAILOR_CONSENT", "TAILOR_IDENTITY", "TAILOR_DLQ", "TAILOR_INGEST"} <= asyncio.run(names())


def test_migrate_is_idempotent(infra: Infra) -> None:
    asyncio.run(ensure_databases(infra.server_url, ["cli_migrate"]))
    url = database_url_for(infra.server_url, "cli_migrate")
    for _ in range(2):
        result = tailor("migrate", "consent", TAILOR_CONSENT_DATABASE_URL=url)
        assert result.returncode == 0, result.stderr

    async def tables() -> set[str]:
        connection = await asyncpg.connect(driver_url(url))
        try:
            rows = await connection.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {row["tablename"] for row in rows}
        finally:
            await connection.close()

    assert {"consent", "consent_audit", "outbox", "processed_message", "alembic_version"} <= asyncio.run(tables())


def test_health_fails_for_an_address_where_nothing_listens() -> None:
    result = tailor("health", f"127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert "UNREACHABLE" in result.stdout


def test_service_packages_bring_their_commands_and_groups_of_commands() -> None:
    """Entry points `tailor.commands`: a function is a command, a Typer app a group."""
    top = tailor("--help")
    assert top.returncode == 0 and "demo-data" in top.stdout and "profile" in top.stdout
    group = tailor("identity", "--help")
    assert group.returncode == 0, group.stderr
    for command in ("graph", "candidates", "review", "merge", "unmerge", "rekey"):
        assert command in group.stdout


def test_unknown_service_is_a_clear_error() -> None:
    result = tailor("migrate", "billing")
    assert result.returncode != 0
    assert "unknown service(s): billing" in result.stderr + result.stdout


def test_a_bad_setting_stops_serve_and_migrate_with_one_line_naming_it() -> None:
    served = tailor("serve", "consent", TAILOR_CONSENT_WORKERS="two")
    assert served.returncode != 0
    assert "TAILOR_CONSENT_WORKERS" in served.stderr
    assert "Traceback" not in served.stderr
    migrated = tailor("migrate", "consent", TAILOR_CONSUMER_MAX_DELIVER="0")
    assert migrated.returncode != 0
    assert "TAILOR_CONSUMER_MAX_DELIVER" in migrated.stdout + migrated.stderr
    assert "Traceback" not in migrated.stdout + migrated.stderr


async def both_workers_listening(address: str) -> None:
    """The service answers once one worker listens; the other may still be starting."""
    pool = ChannelPool(address, 2, interceptors=[])
    try:
        assert await pool.spread_evenly(), "the second worker never answered"
    finally:
        await pool.close()


async def workers_reached(address: str, size: int) -> Counter[str]:
    """How many of a spread pool's connections reach each worker (by the health check's header)."""
    pool = ChannelPool(address, size, interceptors=[])
    try:
        await pool.spread()
        reached: Counter[str] = Counter()
        for _ in range(size):
            call = health_pb2_grpc.HealthStub(pool.channel()).Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
            reached[dict(await call.initial_metadata())[WORKER_HEADER]] += 1
            await call
        return reached
    finally:
        await pool.close()


def test_workers_share_the_port_and_stop_together(start_platform: Callable[..., Platform]) -> None:
    """TAILOR_<SERVICE>_WORKERS=2: two worker processes answer on the one port (connections are
    spread over them), a third one at a lower CPU priority relays their outbox commits at once, and
    SIGTERM to the service stops all of them cleanly."""
    # Without the commits passed on, the relay would only find an event at its next poll.
    platform = start_platform(["consent"], {"TAILOR_CONSENT_WORKERS": "2", "TAILOR_OUTBOX_POLL_INTERVAL_S": "60"})
    supervisor = psutil.Process(platform.running["consent"].process.pid)
    workers = [child for child in supervisor.children() if "resource_tracker" not in " ".join(child.cmdline())]
    assert len(workers) == 3
    assert sorted(worker.nice() - supervisor.nice() for worker in workers) == [0, 0, BACKGROUND_NICENESS]
    asyncio.run(consent_changed_is_published(platform, "c-relayed-1"))  # the relay runs by now
    assert asyncio.run(consent_changed_is_published(platform, "c-relayed-2")) < 20

    async def check_over_many_connections() -> None:
        pool = ChannelPool(platform.address("consent"), 8, interceptors=[])
        try:
            for _ in range(16):
                stub = consent_pb2_grpc.ConsentServiceStub(pool.channel())
                reply = await stub.CheckConsent(
                    consent_pb2.CheckConsentRequest(customer_id="c-1", purpose="marketing", channel="email")
                )
                assert not reply.allowed
        finally:
            await pool.close()

    asyncio.run(check_over_many_connections())
    asyncio.run(both_workers_listening(platform.address("consent")))
    # Left to the kernel, a pool's two connections reach the same worker half of the time; spread,
    # every pool of 2 has one connection per worker and a pool of 4 two (5 pools: 1/32 by chance).
    for size in (2, 2, 2, 4, 4):
        assert asyncio.run(workers_reached(platform.address("consent"), size)) == {"0/2": size // 2, "1/2": size // 2}
    assert all(worker.is_running() for worker in workers)
    assert platform.stop_service("consent") == 0
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)


async def consent_changed_is_published(platform: Platform, customer_id: str) -> float:
    """Seconds from a SetConsent call to its consent.changed on NATS (which the outbox relays)."""
    assert platform.nats_url is not None
    connection = await nats.connect(platform.nats_url)
    subscription = await connection.subscribe("tailor.consent.>")
    pool = ChannelPool(platform.address("consent"), 2, interceptors=[])
    try:
        assert await pool.spread_evenly()
        started = time.monotonic()
        for channel in range(2):  # a call through each worker (round robin over the spread connections)
            await consent_pb2_grpc.ConsentServiceStub(pool.channel()).SetConsent(
                consent_pb2.SetConsentRequest(
                    customer_id=customer_id,
                    purpose="marketing",
                    channel=("email", "sms")[channel],
                    granted=True,
                    source="test",
                    request_id=f"{customer_id}-{channel}",
                )
            )
        for _ in range(2):
            message = await subscription.next_msg(timeout=90)
            assert customer_id.encode() in message.data
        return time.monotonic() - started
    finally:
        await pool.close()
        await connection.close()


@contextlib.contextmanager
def tailor_up(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], list[psutil.Process], str]]:
    """`tailor up` of consent alone, once it says it is up: the process, its children (services
    and NATS), and what it printed. Whatever a test leaves running is killed afterwards."""
    command = [sys.executable, "-m", "tailor_cli", "up", "--services", "consent", "--demo-people", "0"]
    up = subprocess.Popen(
        [*command, "--data-dir", str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    started: list[psutil.Process] = []
    try:
        assert up.stdout is not None
        printed, deadline = "", time.monotonic() + 120
        while "Ctrl-C to stop" not in printed:
            assert up.poll() is None and time.monotonic() < deadline, f"tailor up did not come up:\n{printed}"
            printed += up.stdout.readline()
        started += psutil.Process(up.pid).children(recursive=True)
        assert any("serve consent" in " ".join(child.cmdline()) for child in started)
        yield up, started, printed
    finally:
        # PostgreSQL is not a child (pg_ctl detaches it): found by its data directory in its command line.
        everything = psutil.process_iter(["cmdline"])
        of_this_directory = [p for p in everything if str(data_dir) in " ".join(p.info["cmdline"] or [])]
        for process in [*started, *of_this_directory]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def test_up_stops_everything_even_when_ctrl_c_is_pressed_twice(tmp_path: Path) -> None:
    """The services run in sessions of their own: a second Ctrl-C during the stop must not leave
    any of them (or PostgreSQL, or NATS) running."""
    with tailor_up(tmp_path) as (up, started, _):
        up.send_signal(signal.SIGINT)
        time.sleep(0.3)  # into the stop
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=90) == 0
        _, alive = psutil.wait_procs(started, timeout=10)
        assert alive == []


def test_up_stops_what_a_killed_launcher_left_running_in_its_data_directory(tmp_path: Path) -> None:
    """A launcher killed outright stops nothing; the next one on the same directory does, before a
    second NATS opens the same JetStream store."""
    with tailor_up(tmp_path) as (killed, left, _):
        killed.kill()
        killed.wait(timeout=10)
        assert all(process.is_running() for process in left)
        with tailor_up(tmp_path) as (up, started, printed):
            assert "stopped what an earlier run left running" in printed and "consent" in printed
            _, alive = psutil.wait_procs(left, timeout=5)
            assert alive == []
            assert all(process.is_running() for process in started)
            up.send_signal(signal.SIGINT)
            assert up.wait(timeout=90) == 0
    assert not (tmp_path / "processes.json").exists()


def test_down_stops_what_a_killed_launcher_left_running_without_starting_anything(tmp_path: Path) -> None:
    with tailor_up(tmp_path) as (killed, left, _):
        killed.kill()
        killed.wait(timeout=10)
        postgres = EmbeddedPostgres(tmp_path)
        assert postgres.is_running()

        down = tailor("down", "--data-dir", str(tmp_path))

        assert down.returncode == 0, down.stdout
        assert "stopped in" in down.stdout and all(name in down.stdout for name in ("consent", "nats", "postgres"))
        _, alive = psutil.wait_procs(left, timeout=5)
        assert alive == []
        assert not postgres.is_running()
        again = tailor("down", "--data-dir", str(tmp_path))
        assert again.returncode == 0 and "nothing was running" in again.stdout


def test_a_demo_load_that_fails_leaves_the_platform_up(tmp_path: Path) -> None:
    """`tailor up` loads the demo into the running platform; if profile cannot take it, the error
    is reported and the platform keeps running (before, the SystemExit of the load stopped it)."""
    from tailor_cli.main import _load_demo

    class Unreachable:
        data_dir = tmp_path

        def address(self, service: str) -> str:
            return f"127.0.0.1:{free_port()}"  # nothing listens there

    _load_demo(Unreachable(), people=3)  # type: ignore[arg-type]
    assert not (tmp_path / "demo" / "loaded").exists()
