"""`tailor identity ...`: what an operator or data steward does by hand. Look at a customer's
identity graph, work the review queue of probable duplicates, merge and unmerge, and finish a key
rotation. Output is tables; a failed call is one line with its status code (exit code 1)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated

import grpc
import typer
from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from tailor.common.v1.common_pb2 import PageRequest
from tailor.identity.v1 import identity_pb2 as pb
from tailor.identity.v1 import identity_pb2_grpc
from tailor_platform.terminal import exit_on_failed_call, moment, parse_identifier, titled_table

console = Console()
app = typer.Typer(
    name="identity",
    help="Identity graphs, the review queue of probable duplicates, merges, key rotation.",
    no_args_is_help=True,
)
Stub = identity_pb2_grpc.IdentityServiceStub
Address = Annotated[str, typer.Option(help="host:port of the identity service.")]
DEFAULT_ADDRESS = "127.0.0.1:50051"
Reason = Annotated[str, typer.Option(help="Why: kept in the merge log.")]


@contextmanager
def identity_stub(address: str) -> Iterator[Stub]:
    """A stub for the duration of a command; a failed call ends the command with its status."""
    with exit_on_failed_call(), grpc.insecure_channel(address) as channel:
        yield Stub(channel)


# -- commands ---------------------------------------------------------------------------------------


@app.command()
def graph(
    customer_id: Annotated[str, typer.Argument(help="A customer id (or use --email / --id).")] = "",
    email: Annotated[str, typer.Option(help="Find the customer by email.")] = "",
    identifier: Annotated[
        pb.Identifier | None,
        typer.Option(
            "--id", parser=parse_identifier, help="Find the customer by TYPE:VALUE (external:NAMESPACE:VALUE)."
        ),
    ] = None,
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """A customer's identifiers with their evidence, its merge history and its conflicts."""
    if sum(map(bool, (customer_id, email, identifier is not None))) != 1:
        raise typer.BadParameter("give exactly one of a customer id, --email or --id")
    if customer_id:
        request = pb.GetGraphRequest(customer_id=customer_id)
    else:
        request = pb.GetGraphRequest(identifier=identifier or pb.Identifier(type="email", value=email))
    with identity_stub(address) as stub:
        console.print(graph_view(stub.GetGraph(request, timeout=10)))


@app.command()
def candidates(
    customer_id: Annotated[str, typer.Argument(help="One customer's candidates; all open ones when left out.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many.", min=1, max=1000)] = 50,
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """The review queue: probable duplicates below the auto-merge threshold, oldest first (and,
    for one customer, the links its rules refused)."""
    request = pb.FindCandidatesRequest(customer_id=customer_id, page=PageRequest(page_size=limit))
    with identity_stub(address) as stub:
        response = stub.FindCandidates(request, timeout=30)
    console.print(candidates_table(response.candidates))
    if response.page.next_page_token:
        console.print(f"more: the next page starts after candidate {response.page.next_page_token}")


@app.command()
def review(
    candidate_id: Annotated[int, typer.Argument(help="The candidate (from `tailor identity candidates`).", min=1)],
    accept: Annotated[bool, typer.Option("--accept/--reject", help="Merge the pair, or keep them apart.")],
    reason: Reason = "",
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Decide a review candidate: --accept merges the pair, --reject keeps them apart for good."""
    request = pb.ResolveCandidateRequest(candidate_id=candidate_id, accept=accept, reason=reason)
    with identity_stub(address) as stub:
        response = stub.ResolveCandidate(request, timeout=30)
    decided = response.candidate
    merged = f": merge {response.merge_id}, survivor {decided.other_customer_id}" if response.merge_id else ""
    console.print(f"candidate {decided.candidate_id} {decided.status}{merged}")


@app.command()
def merge(
    survivor_id: Annotated[str, typer.Argument(help="The customer that stays.")],
    absorbed_ids: Annotated[list[str], typer.Argument(help="The customers folded into it.")],
    reason: Annotated[str, typer.Option(help="Why: kept in the merge log (required).")],
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Merge customers into one (logged with its reason, reversible with `unmerge`)."""
    request = pb.MergeRequest(survivor_id=survivor_id, absorbed_ids=absorbed_ids, reason=reason)
    with identity_stub(address) as stub:
        response = stub.Merge(request, timeout=30)
    console.print(f"merge {response.merge_id}: {', '.join(absorbed_ids)} merged into {response.survivor_id}")


@app.command()
def unmerge(
    customer_id: Annotated[str, typer.Argument(help="The customer to separate.")],
    merge_id: Annotated[str, typer.Option(help="Reverse this merge (see `tailor identity graph`).")] = "",
    identifiers: Annotated[
        list[pb.Identifier] | None,
        typer.Option("--id", parser=parse_identifier, help="Or split these (TYPE:VALUE) off into a new customer."),
    ] = None,
    reason: Reason = "",
    address: Address = DEFAULT_ADDRESS,
) -> None:
    """Reverse a merge (--merge-id), or split identifiers off into a new customer (--id, repeated)."""
    request = pb.UnmergeRequest(customer_id=customer_id, merge_id=merge_id, identifiers=identifiers, reason=reason)
    with identity_stub(address) as stub:
        response = stub.Unmerge(request, timeout=30)
    console.print(f"unmerge {response.unmerge_id}: active again {', '.join(response.restored_ids) or '—'}")


@app.command()
def rekey(
    address: Address = DEFAULT_ADDRESS,
    batch: Annotated[
        int, typer.Option(help="Rows re-keyed per call (one transaction each).", min=1, max=100_000)
    ] = 10_000,
) -> None:
    """Re-encrypt and re-index every stored identifier and person record under the active
    encryption and blind index keys. Run it after configuring new keys (with the old ones kept as
    old keys); once it finishes, the old keys can be removed from the configuration."""
    columns = (TextColumn("re-keying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    done = 0
    with identity_stub(address) as stub, Progress(*columns, console=console) as progress:
        task = progress.add_task("rows", total=None)
        for response in rekey_run(stub, batch):
            done += response.rekeyed
            progress.update(task, completed=done, total=done + response.remaining)
    if response.remaining:
        console.print(f"[yellow]{response.remaining:,} rows are being re-keyed by another run[/yellow]")
        raise typer.Exit(1)
    console.print(
        f"{done:,} rows re-keyed: everything is under encryption key {response.active_key_id} "
        f"and blind index key {response.active_index_key_id}; the old keys can be removed."
    )


def rekey_run(stub: Stub, batch: int) -> Iterator[pb.ReKeyResponse]:
    """The ReKey calls of a whole run, each going on from the previous one's cursor. A pass that
    ends with rows left (written under an old key behind it, or held by another run) is followed by
    another, unless it re-keyed nothing: every row left is then held by another run. The last
    response's `remaining` tells whether everything is under the active keys."""
    cursor, done_this_pass = "", 0
    while True:
        response = stub.ReKey(pb.ReKeyRequest(limit=batch, cursor=cursor), timeout=600)
        yield response
        done_this_pass += response.rekeyed
        cursor = response.cursor
        if cursor:
            continue
        # The pass has read every row, and `remaining` is now a count, not an estimate.
        if response.remaining == 0 or done_this_pass == 0:
            return
        done_this_pass = 0


# -- views ------------------------------------------------------------------------------------------


def graph_view(found: pb.GetGraphResponse) -> RenderableType:
    status = found.status + (f", merged into {found.merged_into}" if found.merged_into else "")
    parts: list[RenderableType] = [
        f"[bold]customer {found.customer_id}[/] · {status} · {found.person_records} person record(s)"
    ]
    links = titled_table("identifiers", "type", "value", "source", "evidence", "linked")
    for link in found.links:
        value = (
            f"{link.identifier.namespace}:{link.identifier.value}"
            if link.identifier.namespace
            else link.identifier.value
        )
        links.add_row(link.identifier.type, value, link.source, link.evidence, moment(link.linked_at))
    parts.append(links)
    if found.merges:
        history = titled_table("merges", "when", "kind", "merge id", "survivor", "absorbed", "reason", "reversed by")
        for entry in found.merges:
            history.add_row(
                moment(entry.created_at),
                entry.kind,
                entry.merge_id,
                entry.survivor_id,
                "\n".join(entry.absorbed_ids),
                entry.reason or entry.evidence,
                entry.reverted_by or "—",
            )
        parts.append(history)
    if found.conflicts:
        refused = titled_table("conflicts (links a rule refused)", "when", "type", "other customer", "reason")
        for conflict in found.conflicts:
            refused.add_row(
                moment(conflict.created_at),
                conflict.identifier_type,
                conflict.other_customer_id or "—",
                conflict.reason,
            )
        parts.append(refused)
    return Group(*parts)


def candidates_table(found: Iterable[pb.Candidate]) -> Table:
    table = titled_table(
        "review queue", "id", "customer", "probable duplicate of", "probability", "status", "evidence", numeric=(3,)
    )
    for candidate in found:
        evidence = ", ".join(f"{field} {level}" for field, level in sorted(candidate.comparisons.items()))
        table.add_row(
            str(candidate.candidate_id or "—"),
            candidate.customer_id,
            candidate.other_customer_id or "—",
            f"{candidate.match_probability:.4f}" if candidate.status != "conflict" else "—",
            candidate.status,
            candidate.reason or evidence,
        )
    if not table.row_count:
        table.caption = "nothing to review"
    return table
