"""`tailor demo-data`: write a demo population as JSON Lines plus its ground truth, and optionally
stream it into a running platform through ProfileService.IngestEvents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import grpc
import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tailor.profile.v1 import profile_pb2 as pb
from tailor.profile.v1 import profile_pb2_grpc
from tailor_platform.channels import ChannelPool
from tailor_platform.terminal import errors, exit_on_failed_call

from tailor_profile import intake
from tailor_profile.demo.generator import DemoConfig, interleaved, person_events, population

console = Console()
EARLIEST = datetime.fromtimestamp(intake.EARLIEST, UTC)
"""Intake rejects events before this."""
BATCH = 500
IN_FLIGHT = 4
"""IngestEvents calls in flight while streaming: enough to keep every worker of profile busy."""
TRANSIENT = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
)
RETRY_PAUSES_S: tuple[float, ...] = (1.0, 2.0, 4.0)
"""Pauses before sending a batch again after a transient failure; after the last one the error
ends the command."""


def write_population(config: DemoConfig, out: Path) -> tuple[Path, Path, list[pb.Event]]:
    """events.jsonl (global time order) and truth.json in `out`; returns the paths and the events."""
    out.mkdir(parents=True, exist_ok=True)
    people = population(config)
    events_path, truth_path = out / "events.jsonl", out / "truth.json"
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:  # 1,000 people take half a minute
        generating = progress.add_task("generating people", total=len(people.people))
        found: list[pb.Event] = []
        for person in people.people:
            found += person_events(person, config)
            progress.advance(generating)
        events = interleaved(found)
        writing = progress.add_task("writing events", total=len(events))
        with events_path.open("w") as output:
            for number, event in enumerate(events, 1):
                output.write(json.dumps(json_format.MessageToDict(event), separators=(",", ":")) + "\n")
                if number % 5_000 == 0 or number == len(events):
                    progress.update(writing, completed=number)
    truth_path.write_text(json.dumps(people.truth(), indent=1))
    return events_path, truth_path, events


def send(address: str, events: Sequence[pb.Event]) -> dict[str, int]:
    """Stream the events into IngestEvents in batches of BATCH, IN_FLIGHT calls at a time over
    connections spread across the service's workers, with a progress bar; returns the outcome
    counts. Batches may land out of order: traits do not depend on the order events arrive in."""
    with exit_on_failed_call():
        return asyncio.run(_send(address, events))


async def _send(address: str, events: Sequence[pb.Event]) -> dict[str, int]:
    counts = {"accepted": 0, "duplicates": 0, "rejected": 0, "queued": 0}
    columns = (TextColumn("ingesting"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    pool = ChannelPool(address, IN_FLIGHT)
    await pool.spread()
    waiting = iter(range(0, len(events), BATCH))
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("events", total=len(events))

            async def lane() -> None:
                for start in waiting:  # the lanes share one iterator: each batch is sent once
                    batch = events[start : start + BATCH]
                    response = await _ingest(pool, batch)
                    counts["accepted"] += response.accepted
                    counts["duplicates"] += response.duplicates
                    counts["rejected"] += response.rejected
                    counts["queued"] += response.queued
                    progress.advance(task, len(batch))

            await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    finally:
        await pool.close()
    return counts


async def _ingest(pool: ChannelPool, batch: Sequence[pb.Event]) -> pb.IngestEventsResponse:
    """One batch, sent again after a transient failure (a worker restarting, a deadline under
    load): the event ids are fixed, so events that landed the first time come back as duplicates."""
    for pause in (*RETRY_PAUSES_S, None):
        stub = profile_pb2_grpc.ProfileServiceStub(pool.channel())
        try:
            response: pb.IngestEventsResponse = await stub.IngestEvents(
                pb.IngestEventsRequest(events=batch), timeout=120
            )
            return response
        except grpc.aio.AioRpcError as error:
            if pause is None or error.code() not in TRANSIENT:
                raise
            await asyncio.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def demo_data(
    people: Annotated[int, typer.Option(help="How many people.", min=1)] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same population.")] = 42,
    days: Annotated[int, typer.Option(help="Length of the history in days.", min=7)] = 365,
    end: Annotated[str, typer.Option(help="Last day of the history (YYYY-MM-DD); default today.")] = "",
    churn_share: Annotated[float, typer.Option(help="Share of people who stop buying partway.", min=0, max=1)] = 0.2,
    out: Annotated[Path, typer.Option(help="Where events.jsonl and truth.json go.")] = Path(".tailor/demo"),
    send_to: Annotated[
        str, typer.Option("--send", help="host:port of a running profile service to stream the events into.")
    ] = "",
) -> None:
    """Generate a seeded omnichannel retail population with ground truth; optionally ingest it."""
    config = DemoConfig(people=people, seed=seed, days=days, churn_share=churn_share)
    if end:
        try:
            day = datetime.strptime(end, "%Y-%m-%d").replace(tzinfo=UTC)
        except ValueError:
            raise typer.BadParameter(f"{end!r} is not a date YYYY-MM-DD", param_hint="--end") from None
        if send_to and day > datetime.now(UTC):
            # intake rejects events more than 5 minutes ahead of the service's clock
            raise typer.BadParameter("a day in the future: the platform rejects future events", param_hint="--end")
        config = DemoConfig(people=people, seed=seed, days=days, churn_share=churn_share, end=day)
    try:
        start = config.end - timedelta(days=days + 1)  # a day before: emails opened before a session
    except OverflowError:
        start = datetime.min.replace(tzinfo=UTC)
    if start < EARLIEST:
        raise typer.BadParameter(
            f"the history would begin before {EARLIEST:%Y-%m-%d}, which intake rejects", param_hint="--days"
        )
    try:
        events_path, truth_path, events = write_population(config, out)
    except OSError as error:
        errors.print(f"cannot write the demo data to {out}: {error}", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    console.print(f"wrote {len(events)} events to [bold]{events_path}[/] and the ground truth to [bold]{truth_path}[/]")
    if send_to:
        counts = send(send_to, events)
        console.print(", ".join(f"{name}: {value}" for name, value in counts.items()))


def load_demo(address: str, people: int = 1000, seed: int = 42, out: Path = Path(".tailor/demo")) -> list[str]:
    """What `tailor up` (and so `make run`) calls once the platform is up: generate the demo
    population, stream it into profile, and return example commands to look at a customer.
    A data directory where the demo was loaded before is not loaded again."""
    marker = out / "loaded"
    if marker.exists():
        return example_commands(out / "truth.json")
    config = DemoConfig(people=people, seed=seed)
    _, truth_path, events = write_population(config, out)
    counts = send(address, events)
    console.print("demo data: " + ", ".join(f"{name} {value}" for name, value in counts.items()))
    marker.write_text(json.dumps(counts))
    return example_commands(truth_path)


def example_commands(truth_path: Path, count: int = 3) -> list[str]:
    truth = json.loads(truth_path.read_text())
    persons = [p for p in truth["persons"] if p["orders"]][:count]
    commands = []
    for person in persons:
        email = next(i["value"] for i in person["identifiers"] if i["type"] == "email")
        commands.append(f"tailor profile --email {email}")
    if persons:
        commands.append(f"tailor profile --email {email} --events 5")
    return commands


def main() -> None:  # pragma: no cover - `python -m tailor_profile.demo.cli`
    typer.run(demo_data)


if __name__ == "__main__":  # pragma: no cover
    main()
