"""End to end: the identity service as its own process (the launcher), called over gRPC, its
events on NATS."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import asyncpg
import grpc
import nats
import pytest
from tailor.events.v1.envelope_pb2 import Envelope
from tailor.identity.v1 import identity_pb2 as pb
from tailor.identity.v1 import identity_pb2_grpc
from tailor_cli.launcher import Platform
from tailor_identity.cli import app as identity_commands
from tailor_identity.domain.crypto import dev_key
from tailor_platform.db import driver_url
from tailor_platform.errors import field_violations
from typer.testing import CliRunner


def ident(kind: str, value: str, namespace: str = "") -> pb.Identifier:
    return pb.Identifier(type=kind, value=value, namespace=namespace)


@pytest.fixture
def platform(start_platform: Callable[..., Platform]) -> Platform:
    return start_platform(["identity"])


async def test_resolve_link_merge_unmerge_over_grpc(platform: Platform) -> None:
    assert platform.nats_url is not None
    nc = await nats.connect(platform.nats_url)
    seen: list[Envelope] = []
    js = nc.jetstream()
    subscription = await js.subscribe("tailor.identity.>", ordered_consumer=True)
    async with grpc.aio.insecure_channel(platform.address("identity")) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        first = await stub.Resolve(pb.ResolveRequest(identifiers=[ident("email", "Kim@Example.com")]), timeout=10)
        assert first.created and first.matched_by == "new"
        batch = await stub.ResolveBatch(
            pb.ResolveBatchRequest(
                records=[
                    pb.ResolveRequest(identifiers=[ident("email", "kim@example.com"), ident("loyalty_id", "L-9")]),
                    pb.ResolveRequest(identifiers=[ident("phone", "not a phone")]),
                    pb.ResolveRequest(identifiers=[ident("fax", "123")]),
                    pb.ResolveRequest(),
                    pb.ResolveRequest(identifiers=[ident("device_id", "cookie-7")]),
                ]
            ),
            timeout=10,
        )
        assert batch.results[0].customer_id == first.customer_id
        assert [(e.index, e.field) for e in batch.errors] == [
            (1, "identifiers[0].value"),
            (2, "identifiers[0].type"),
            (3, "identifiers"),
        ]
        assert batch.results[1].customer_id == "" and batch.results[4].created
        cookie = batch.results[4].customer_id

        merged = await stub.Merge(
            pb.MergeRequest(survivor_id=first.customer_id, absorbed_ids=[cookie], reason="same browser"), timeout=10
        )
        graph = await stub.GetGraph(pb.GetGraphRequest(identifier=ident("device_id", "cookie-7")), timeout=10)
        assert graph.customer_id == first.customer_id
        assert {link.identifier.type for link in graph.links} == {"email", "loyalty_id", "device_id"}
        assert [m.kind for m in graph.merges] == ["merge"]
        undone = await stub.Unmerge(
            pb.UnmergeRequest(customer_id=first.customer_id, merge_id=merged.merge_id, reason="wrong"), timeout=10
        )
        assert list(undone.restored_ids) == [cookie]
        again = await stub.Resolve(pb.ResolveRequest(identifiers=[ident("device_id", "cookie-7")]), timeout=10)
        assert again.customer_id == cookie

        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await stub.ResolveBatch(
                pb.ResolveBatchRequest(records=[pb.ResolveRequest(identifiers=[ident("device_id", "x")])] * 1001),
                timeout=10,
            )
        assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in field_violations(too_many.value)] == ["records"]
        with pytest.raises(grpc.aio.AioRpcError) as bad_email:
            await stub.Resolve(pb.ResolveRequest(identifiers=[ident("email", "no-at-sign")]), timeout=10)
        assert [v.field for v in field_violations(bad_email.value)] == ["identifiers[0].value"]
        assert "no-at-sign" not in (bad_email.value.details() or "")

    async def collect() -> None:
        while len({e.type for e in seen}) < 3:
            message = await subscription.next_msg(timeout=5)
            seen.append(Envelope.FromString(message.data))

    await asyncio.wait_for(collect(), timeout=15)
    await nc.close()
    assert {"identity.resolved", "identity.merged", "identity.unmerged"} <= {e.type for e in seen}
    log = (platform.data_dir / "logs" / "identity.log").read_text()
    assert "kim@example.com" not in log.lower()


def test_key_rotation_with_the_rekey_command(start_platform: Callable[..., Platform]) -> None:
    """New encryption and blind index keys: rows written under the old ones stay found until
    `tailor identity rekey` has moved them, after which the old keys can go."""
    platform = start_platform(["identity"])
    kim = pb.ResolveRequest(
        identifiers=[ident("email", "kim@example.com")], person=pb.PersonAttributes(given_name="Kim", surname="Ode")
    )

    def resolve() -> pb.ResolveResponse:
        with grpc.insecure_channel(platform.address("identity")) as channel:
            response: pb.ResolveResponse = identity_pb2_grpc.IdentityServiceStub(channel).Resolve(kim, timeout=10)
            return response

    first = resolve()
    new_keys = {
        "TAILOR_IDENTITY_ENCRYPTION_KEY": base64.b64encode(bytes(range(32))).decode(),
        "TAILOR_IDENTITY_ENCRYPTION_KEY_ID": "2",
        "TAILOR_IDENTITY_BLIND_INDEX_KEY": base64.b64encode(bytes(range(1, 33))).decode(),
        "TAILOR_IDENTITY_BLIND_INDEX_KEY_ID": "2",
    }
    old_keys = {
        "TAILOR_IDENTITY_OLD_ENCRYPTION_KEYS": json.dumps({"1": base64.b64encode(dev_key("encryption")).decode()}),
        "TAILOR_IDENTITY_OLD_BLIND_INDEX_KEYS": json.dumps({"1": base64.b64encode(dev_key("blind-index")).decode()}),
    }
    platform.extra_env.update(new_keys | old_keys)
    platform.restart_service("identity")
    during = resolve()
    assert (during.customer_id, during.created) == (first.customer_id, False)

    with grpc.insecure_channel(platform.address("identity")) as channel, pytest.raises(grpc.RpcError) as bad:
        identity_pb2_grpc.IdentityServiceStub(channel).ReKey(pb.ReKeyRequest(cursor="person/1"), timeout=10)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "cursor" in (bad.value.details() or "")
    with grpc.insecure_channel(platform.address("identity")) as channel, pytest.raises(grpc.RpcError) as too_many:
        identity_pb2_grpc.IdentityServiceStub(channel).ReKey(pb.ReKeyRequest(limit=100_001), timeout=10)
    assert too_many.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in (too_many.value.details() or "")

    result = CliRunner().invoke(identity_commands, ["rekey", "--address", platform.address("identity"), "--batch", "1"])
    assert result.exit_code == 0, result.output
    assert "2 rows re-keyed" in result.output  # the identifier and the person record

    for name in old_keys:
        del platform.extra_env[name]
    platform.restart_service("identity")
    after = resolve()
    assert (after.customer_id, after.created) == (first.customer_id, False)


async def test_a_graceful_stop_saves_the_match_pattern_counts_still_in_memory(platform: Platform) -> None:
    """Pattern counts (EM's data) are saved about once a second; stopping right after a batch
    that compared person records must not lose them."""
    twins = [
        pb.ResolveRequest(person=pb.PersonAttributes(given_name=name, surname="Lindqvist", date_of_birth="1980-04-02"))
        for name in ("Annika", "Anika")
    ]
    async with grpc.aio.insecure_channel(platform.address("identity")) as channel:
        stub = identity_pb2_grpc.IdentityServiceStub(channel)
        await stub.ResolveBatch(pb.ResolveBatchRequest(records=twins), timeout=10)
    assert platform.stop_service("identity") == 0
    connection = await asyncpg.connect(driver_url(platform.service_database_url("identity")))
    try:
        pairs = await connection.fetchval("SELECT coalesce(sum(pair_count), 0) FROM match_pattern")
    finally:
        await connection.close()
    assert pairs >= 1
