"""CallGuard on a real grpc.aio server: status mapping, details, authentication hook."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tailor_platform.errors import InvalidArgument, NotFound, Unauthenticated, field_violations
from tailor_platform.interceptors import CallGuard


class TokenAuthenticator:
    def authenticate(self, method: str, metadata: Mapping[str, str | bytes]) -> None:
        if metadata.get("authorization") != "Bearer letmein":
            raise Unauthenticated(f"no valid token for {method}")


async def say(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    if request == b"bad":
        raise InvalidArgument.field("text", "must not be 'bad'")
    if request == b"missing":
        raise NotFound("no such thing")
    if request == b"bug":
        raise RuntimeError("secret internals")
    if request == b"abandoned":  # awaits work someone else cancelled: the call itself was not
        abandoned: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        abandoned.cancel()
        await abandoned
    return request.upper()


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[CallGuard(TokenAuthenticator())])
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)})]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as client:
        yield client
    await server.stop(None)


AUTH = (("authorization", "Bearer letmein"),)


async def call(channel: grpc.aio.Channel, text: bytes, metadata: tuple[tuple[str, str], ...] = AUTH) -> bytes:
    say: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/Say")
    return await say(text, metadata=metadata)


async def test_calls_pass_through(channel: grpc.aio.Channel) -> None:
    assert await call(channel, b"hi") == b"HI"
    assert await call(channel, b"again") == b"AGAIN"  # the cached wrapper


async def test_domain_errors_become_their_status_with_details(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await call(channel, b"bad")
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [(v.field, v.description) for v in field_violations(invalid.value)] == [("text", "must not be 'bad'")]
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await call(channel, b"missing")
    assert (missing.value.code(), missing.value.details()) == (grpc.StatusCode.NOT_FOUND, "no such thing")


async def test_bugs_are_internal_without_leaking_text(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(channel, b"bug")
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in (error.value.details() or "")


async def test_authenticator_decides_and_health_stays_open(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call(channel, b"hi", metadata=())
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())  # type: ignore[attr-defined]
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_cancellation_that_is_not_the_calls_own_is_internal_not_a_hang(channel: grpc.aio.Channel) -> None:
    """A CancelledError from work the handler awaited (a shared load another caller cancelled) is
    a failure of this call like any other: INTERNAL at once, not a call left unanswered until the
    client's deadline (or for ever, without one)."""
    say: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary("/test.Echo/Say")
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await say(b"abandoned", metadata=AUTH, timeout=5)
    assert error.value.code() == grpc.StatusCode.INTERNAL
    assert await call(channel, b"still fine") == b"STILL FINE"
