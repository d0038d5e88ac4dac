"""`tailor demo-data`: write a demo population as JSON Lines plus its ground truth, and optionally
stream it into a running platform through ProfileService.IngestEvents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tailor.profile.v1 import profile_pb2 as pb
from tailor.profile.v1 import profile_pb2_grpc
from tailor_platform.channels import ChannelPool
from tailor_platform.terminal import exit_on_failed_call

from tailor_profile.demo.generator import DemoConfig, interleaved, population

console = Console()
BATCH = 500
IN_FLIGHT = 4
"""IngestEvents calls in flight while streaming: enough to keep every worker of profile busy."""


def write_population(config: DemoConfig, out: Path) -> tuple[Path, Path, list[pb.Event]]:
    """events.jsonl (global time order) and truth.json in `out`; returns the paths and the events."""
    out.mkdir(parents=True, exist_ok=True)
    people = population(config)
    events = interleaved(list(people.events()))
    events_path, truth_path = out / "events.jsonl", out / "truth.json"
    with events_path.open("w") as output:
        for event in events:
            output.write(json.dumps(json_format.MessageToDict(event), separators=(",", ":")) + "\n")
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
                    stub = profile_pb2_grpc.ProfileServiceStub(pool.channel())
                    response = await stub.IngestEvents(pb.IngestEventsRequest(events=batch), timeout=120)
                    counts["accepted"] += response.accepted
                    counts["duplicates"] += response.duplicates
                    counts["rejected"] += response.rejected
                    counts["queued"] += response.queued
                    progress.advance(task, len(batch))

            await asyncio.gather(*(lane() for _ in range(IN_FLIGHT)))
    finally:
        await pool.close()
    return counts


def demo_data(
    people: Annotated[int, typer.Option(help="How many people.", min=1)] = 1000,
    seed: Annotated[int, typer.Option(help="Same seed, same population.")] = 42,
    days: Annotated[int, typer.Option(help="Length of the history in days.", min=7)] = 365,
    end: Annotated[str, typer.Option(help="Last day of the history (YYYY-MM-DD); default today.")] = "",
    churn_share: Annotated[float, typer.Option(help="Share of people who stop buying partway.")] = 0.2,
    out: Annotated[Path, typer.Option(help="Where events.jsonl and truth.json go.")] = Path(".tailor/demo"),
    send_to: Annotated[
        str, typer.Option("--send", help="host:port of a running profile service to stream the events into.")
    ] = "",
) -> None:
    """Generate a seeded omnichannel retail population with ground truth; optionally ingest it."""
    config = DemoConfig(people=people, seed=seed, days=days, churn_share=churn_share)
    if end:
        day = datetime.strptime(end, "%Y-%m-%d").replace(tzinfo=UTC)
        config = DemoConfig(people=people, seed=seed, days=days, churn_share=churn_share, end=day)
    with console.status(f"generating {people} people…"):
        events_path, truth_path, events = write_population(config, out)
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
    with console.status(f"generating a demo population of {people} people…"):
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
