"""`tailor identity-rekey`: finish a key rotation by calling ReKey until nothing is left."""

from __future__ import annotations

from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from tailor.identity.v1 import identity_pb2 as pb
from tailor.identity.v1 import identity_pb2_grpc

console = Console()


def rekey(
    address: Annotated[str, typer.Option(help="host:port of the identity service.")] = "127.0.0.1:50051",
    batch: Annotated[int, typer.Option(help="Rows re-keyed per call (one transaction each).", min=1)] = 10_000,
) -> None:
    """Re-encrypt and re-index every stored identifier and person record under the active
    encryption and blind index keys. Run it after configuring new keys (with the old ones kept as
    old keys); once it finishes, the old keys can be removed from the configuration."""
    columns = (TextColumn("re-keying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    done = 0
    with grpc.insecure_channel(address) as channel, Progress(*columns, console=console) as progress:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        task = progress.add_task("rows", total=None)
        while True:
            response = stub.ReKey(pb.ReKeyRequest(limit=batch), timeout=600)
            done += response.rekeyed
            progress.update(task, completed=done, total=done + response.remaining)
            if response.remaining == 0:
                break
            if response.rekeyed == 0:
                # Every stale row is locked by another ReKey run (SKIP LOCKED): leave it to that run.
                console.print(f"[yellow]{response.remaining:,} rows are being re-keyed by another run[/yellow]")
                raise typer.Exit(1)
    console.print(
        f"{done:,} rows re-keyed: everything is under encryption key {response.active_key_id} "
        f"and blind index key {response.active_index_key_id}; the old keys can be removed."
    )
