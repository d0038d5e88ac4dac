"""Output for people, shared by the services' commands (`tailor profile`, `tailor identity ...`):
titled tables, times in UTC, and a failed call as one line with its status code and exit code 1
instead of a traceback."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from rich import box
from rich.console import Console
from rich.table import Table
from tailor.identity.v1.identity_pb2 import Identifier

from tailor_platform.errors import describe

errors = Console(stderr=True)


def titled_table(title: str, *columns: str, numeric: Sequence[int] = ()) -> Table:
    """A table with its title above it on the left; the columns at `numeric` positions align right."""
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)
    for position, column in enumerate(columns):
        table.add_column(column, justify="right" if position in numeric else "left")
    return table


def moment(timestamp: Timestamp) -> str:
    """A timestamp as `YYYY-MM-DD HH:MM:SS UTC`; an unset one as a dash."""
    if not timestamp.seconds and not timestamp.nanos:
        return "—"
    return timestamp.ToDatetime(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@contextmanager
def exit_on_failed_call() -> Iterator[None]:
    """A gRPC call failing inside ends the command: one line on stderr, exit code 1."""
    try:
        yield
    except grpc.RpcError as error:
        errors.print(describe(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


def parse_identifier(text: str) -> Identifier:
    """An identifier as commands take it: TYPE:VALUE, or external:NAMESPACE:VALUE. ValueError
    otherwise (as a Typer `parser`, a usage error naming the option)."""
    kind, _, rest = text.partition(":")
    if not kind or not rest:
        raise ValueError(f"{text!r}: expected TYPE:VALUE, e.g. email:ann@example.com or phone:+14155550123")
    if kind == "external":
        namespace, _, value = rest.partition(":")
        if not namespace or not value:
            raise ValueError(f"{text!r}: expected external:NAMESPACE:VALUE")
        return Identifier(type=kind, value=value, namespace=namespace)
    return Identifier(type=kind, value=rest)
