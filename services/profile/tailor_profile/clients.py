"""Calls to other services (identity, consent) with deadlines and trace propagation.

Each client opens its channel on first use (inside the running event loop) and turns "the other
service is down or slow" into `ServiceUnavailable`, which callers handle as a normal outcome:
ingestion queues the batch, Customer 360 marks the section unavailable.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import grpc
from tailor.consent.v1 import consent_pb2, consent_pb2_grpc
from tailor.identity.v1 import identity_pb2, identity_pb2_grpc
from tailor_platform.channels import ChannelPool
from tailor_platform.errors import FieldViolation, InvalidArgument, field_violations

from tailor_profile.domain.unmerges import IdentifierKey

T = TypeVar("T")
LOOKUPS_IN_FLIGHT = 8
"""Concurrent GetGraph lookups of one `owners` / `active_customers` call."""
UNREACHABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


class ServiceUnavailable(Exception):
    """The other service did not answer in time, or failed in a way that a retry may fix."""


class _Client:
    service = ""

    def __init__(self, address: str, connections: int = 1) -> None:
        self.address = address
        self._pool = ChannelPool(address, connections)

    async def channel(self) -> grpc.aio.Channel:
        await self._pool.spread()
        return self._pool.channel()

    def _unavailable(self, error: grpc.aio.AioRpcError) -> ServiceUnavailable:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            self._pool.respread()  # reconnected connections land on whichever worker the kernel picks
        return ServiceUnavailable(f"{self.service}: {error.code().name}: {error.details()}")

    async def close(self) -> None:
        await self._pool.close()


class IdentityClient(_Client):
    service = "identity"

    def __init__(self, address: str, timeout_s: float, connections: int = 1) -> None:
        super().__init__(address, connections)
        self.timeout_s = timeout_s

    async def stub(self) -> identity_pb2_grpc.IdentityServiceAsyncStub:
        return identity_pb2_grpc.IdentityServiceStub(await self.channel())

    async def resolve_batch(self, records: list[identity_pb2.ResolveRequest]) -> identity_pb2.ResolveBatchResponse:
        try:
            response: identity_pb2.ResolveBatchResponse = await (await self.stub()).ResolveBatch(
                identity_pb2.ResolveBatchRequest(records=records), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in UNREACHABLE:
                raise self._unavailable(error) from error
            raise
        return response

    async def customer_of(self, identifier: identity_pb2.Identifier) -> str | None:
        """The customer an identifier belongs to, or None when identity does not know it (or
        finds it malformed: it then belongs to no one)."""
        try:
            return await self.customer_by_identifier(identifier)
        except InvalidArgument:
            return None

    async def customer_by_identifier(self, identifier: identity_pb2.Identifier) -> str | None:
        """Like `customer_of`, for a caller's request: an identifier identity finds malformed (an
        unknown type, an invalid email) is the caller's bad input, InvalidArgument naming the
        field as identity did (identifier.type, identifier.value), not "no such customer"."""
        try:
            graph = await self.graph(identity_pb2.GetGraphRequest(identifier=identifier), self.timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                violations = field_violations(error) or [FieldViolation("identifier", str(error.details()))]
                raise InvalidArgument(violations) from error
            raise
        return graph.merged_into or graph.customer_id or None

    async def owners(self, identifiers: Iterable[IdentifierKey]) -> dict[IdentifierKey, str]:
        """The customer that owns each identifier now; identifiers identity does not know are
        absent. One lookup per distinct identifier, a few at a time: this serves unmerges, which
        are rare operator actions, not a hot path."""
        keys = set(identifiers)
        found = await _gather_limited(
            [
                self.customer_of(identity_pb2.Identifier(type=key.type, value=key.value, namespace=key.namespace))
                for key in keys
            ]
        )
        return {key: owner for key, owner in zip(keys, found, strict=True) if owner}

    async def active_customers(self, customer_ids: Iterable[str]) -> dict[str, str]:
        """The active customer each one is (itself) or is now part of, following merges;
        customers identity does not know are absent."""
        ids = list(dict.fromkeys(customer_ids))
        found = await _gather_limited([self.active_customer(customer) for customer in ids])
        return {customer: active for customer, active in zip(ids, found, strict=True) if active}

    async def active_customer(self, customer_id: str) -> str | None:
        seen: set[str] = set()
        while customer_id not in seen:  # merged_into chains are short; a cycle would be a bug upstream
            seen.add(customer_id)
            graph = await self._known_graph(identity_pb2.GetGraphRequest(customer_id=customer_id))
            if graph is None:
                return None
            if graph.status != "merged" or not graph.merged_into:
                return graph.customer_id
            customer_id = graph.merged_into
        return None

    async def _known_graph(self, request: identity_pb2.GetGraphRequest) -> identity_pb2.GetGraphResponse | None:
        """The graph, or None when identity does not know the customer or identifier asked about."""
        try:
            return await self.graph(request, self.timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise

    async def graph(self, request: identity_pb2.GetGraphRequest, timeout_s: float) -> identity_pb2.GetGraphResponse:
        try:
            response: identity_pb2.GetGraphResponse = await (await self.stub()).GetGraph(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in UNREACHABLE:
                raise self._unavailable(error) from error
            raise
        return response


async def _gather_limited(calls: list[Coroutine[Any, Any, T]]) -> list[T]:
    limit = asyncio.Semaphore(LOOKUPS_IN_FLIGHT)

    async def one(call: Coroutine[Any, Any, T]) -> T:
        async with limit:
            return await call

    return list(await asyncio.gather(*(one(call) for call in calls)))


class ConsentClient(_Client):
    service = "consent"

    async def consents(self, customer_id: str, timeout_s: float) -> list[consent_pb2.Consent]:
        stub = consent_pb2_grpc.ConsentServiceStub(await self.channel())
        try:
            response = await stub.GetConsents(
                consent_pb2.GetConsentsRequest(customer_id=customer_id), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in UNREACHABLE:
                raise self._unavailable(error) from error
            raise
        return list(response.consents)
