"""The `tailor` command."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, TypeVar

import nats
import typer
from rich.console import Console
from rich.table import Table
from tailor_platform.bus.streams import ensure_streams
from tailor_platform.config import ConfigError, PlatformSettings, load_settings
from tailor_platform.db import migrate as migrate_database
from tailor_platform.service import ServiceSpec, run_service

from tailor_cli import registry
from tailor_cli.launcher import Platform, health_status

SettingsT = TypeVar("SettingsT")

app = typer.Typer(help="Tailor: hyper-personalization CRM platform.", no_args_is_help=True)
console = Console()


def _select(names: str | None) -> dict[str, ServiceSpec]:
    try:
        return registry.select(names)
    except registry.UnknownService as error:
        raise typer.BadParameter(str(error)) from None


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Where embedded PostgreSQL and NATS keep their data.")] = Path(
        ".tailor"
    ),
    services: Annotated[str | None, typer.Option(help="Comma-separated subset, e.g. consent,identity.")] = None,
    demo_people: Annotated[int, typer.Option(help="Load a demo population of this size (0: none).", min=0)] = 1000,
) -> None:
    """Run the whole platform in the foreground; Ctrl-C or SIGTERM stops everything cleanly."""
    _select(services)  # a misspelt name fails here, before anything starts
    platform = Platform(data_dir, services=services.split(",") if services else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with console.status("starting PostgreSQL and NATS…"):
            platform.start_infrastructure()
        if platform.stopped_leftovers:
            left = ", ".join(platform.stopped_leftovers)
            console.print(f"[yellow]stopped what an earlier run left running in {data_dir}: {left}[/]")
        with console.status("migrating databases…"):
            platform.migrate()
        for name in platform.specs:
            with console.status(f"starting {name}…"):
                platform.wait_serving(platform.start_service(name))
        console.print(_status_table(platform))
        if demo_people and "profile" in platform.running:
            _load_demo(platform, demo_people)
        console.print(f"data in [bold]{platform.data_dir}[/], logs in [bold]{platform.data_dir / 'logs'}[/]")
        console.print("Ctrl-C to stop")
        while not stop.wait(1.0):
            for name, running in platform.running.items():
                if running.process.poll() is not None:
                    console.print(f"[red]{name} exited with code {running.process.returncode}[/]")
                    stop.set()
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C (or SIGTERM) must not cut the stop short: the services run in sessions of
        # their own, so whatever is not stopped here would be left running.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with console.status("stopping…"):
            platform.stop()
        console.print("stopped")


@app.command()
def down(
    data_dir: Annotated[Path, typer.Option(help="The data directory `tailor up` ran on.")] = Path(".tailor"),
) -> None:
    """Stop what `tailor up` left running in a data directory when it was killed outright or its
    terminal closed: its services, NATS and PostgreSQL. A `tailor up` still running there stops too."""
    stopped = Platform(data_dir).stop_left_running()
    if stopped:
        console.print(f"stopped in {data_dir}: {', '.join(stopped)}")
    else:
        console.print(f"nothing was running in {data_dir}")


def _load_demo(platform: Platform, people: int) -> None:
    """Generate (once per data directory) and ingest a demo population, then show how to look."""
    from tailor_profile.demo.cli import load_demo  # only where the profile service is installed

    try:
        for line in load_demo(platform.address("profile"), people, out=platform.data_dir / "demo"):
            console.print(line)
    except SystemExit:
        # Its error is printed already; the platform is up and stays up (the next start loads again).
        console.print("[yellow]the demo population was not loaded; the platform runs without it[/]")


def _status_table(platform: Platform) -> Table:
    table = Table(title="Tailor")
    table.add_column("service")
    table.add_column("address")
    table.add_column("health")
    for name, running in platform.running.items():
        status = health_status(running.address)
        colour = "green" if status == "SERVING" else "red"
        table.add_row(name, running.address, f"[{colour}]{status}[/]")
    table.add_row("nats", platform.nats_url or "", "")
    table.add_row("postgres", (platform.database_url or "").split("?")[0], "")
    return table


def _settings_or_exit(load: Callable[[], SettingsT]) -> SettingsT:
    try:
        return load()
    except ConfigError as error:
        console.print(f"[red]invalid configuration: {error}[/]")
        raise typer.Exit(2) from None


@app.command()
def serve(
    name: Annotated[str, typer.Argument(help="The service to run, e.g. consent.", envvar="TAILOR_SERVICE")],
) -> None:
    """Run one service's gRPC server (what the container image runs)."""
    spec = _select(name)[name]
    run_service(spec)


@app.command()
def migrate(
    names: Annotated[list[str] | None, typer.Argument(help="Services to migrate (default: all).")] = None,
) -> None:
    """Apply each service's database migrations to the database its settings name (idempotent)."""
    specs = _select(",".join(names) if names else None)
    for name, spec in specs.items():
        settings = _settings_or_exit(spec.settings)
        migrate_database(spec.migrations_dir, settings.service_database_url)
        console.print(f"migrated [bold]{name}[/]")


@app.command()
def streams() -> None:
    """Create or update every JetStream stream (idempotent)."""

    async def provision() -> list[str]:
        settings = _settings_or_exit(lambda: load_settings(PlatformSettings))
        connection = await nats.connect(settings.nats_url)
        try:
            return await ensure_streams(connection.jetstream(), replicas=settings.nats_replicas)
        finally:
            await connection.close()

    for line in asyncio.run(provision()):
        console.print(line)


@app.command()
def health(
    address: Annotated[str, typer.Argument(help="host:port of a service.")],
    service: Annotated[str, typer.Option(help="A gRPC service name; empty for the whole server.")] = "",
) -> None:
    """Exit 0 if the service reports SERVING over grpc.health.v1."""
    status = health_status(address, service, timeout_s=3.0)
    console.print(f"{address}: {status}")
    raise typer.Exit(0 if status == "SERVING" else 1)


def _add_service_commands() -> None:
    """Sub-commands that installed service packages bring (entry points `tailor.commands`): a
    function is one command, a Typer app a group of them (`tailor identity graph ...`)."""
    for entry in entry_points(group="tailor.commands"):
        command = entry.load()
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=entry.name)
        else:
            app.command(entry.name)(command)


@app.command("services")
def list_services() -> None:
    """The services installed in this environment."""
    table = Table()
    table.add_column("service")
    table.add_column("default port")
    for name, spec in registry.available_services().items():
        table.add_row(name, str(spec.settings_class.default_port))
    console.print(table)


_add_service_commands()
