"""Server interceptors every service installs: error mapping and authentication.

grpc.aio interceptors see only the handler, so each wraps the handler's behaviour for all four
call shapes and rebuilds it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from tailor_platform.auth import Authenticator
from tailor_platform.errors import TailorError

log = logging.getLogger(__name__)

Behaviour = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    if isinstance(error, TailorError):
        status = error.to_status()
        await context.abort(
            error.code,
            error.message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
    log.exception("unhandled error in RPC", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


def _wrap_unary(behaviour: Behaviour) -> Behaviour:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behaviour(request, context)
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, error)

    return wrapper


def _wrap_streaming(behaviour: Behaviour) -> Behaviour:
    async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behaviour(request, context):
                yield response
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await _abort(context, error)

    return wrapper


def _rebuild(
    handler: Handler,
    wrap_unary: Callable[[Behaviour], Behaviour],
    wrap_streaming: Callable[[Behaviour], Behaviour],
) -> Handler:
    kwargs = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(wrap_unary(handler.unary_unary), **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(wrap_unary(handler.stream_unary), **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(wrap_streaming(handler.unary_stream), **kwargs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(wrap_streaming(handler.stream_stream), **kwargs)


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Domain errors become their status code with rich details; anything else is INTERNAL."""

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        return _rebuild(handler, _wrap_unary, _wrap_streaming)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Asks the configured Authenticator about every call except health and reflection."""

    OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Continuation,
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(self.OPEN_SERVICES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        authenticator = self.authenticator

        def checked(behaviour: Behaviour) -> Behaviour:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                try:
                    authenticator.authenticate(method, metadata)
                except TailorError as error:
                    await _abort(context, error)
                return await behaviour(request, context)

            return wrapper

        def checked_streaming(behaviour: Behaviour) -> Behaviour:
            async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                try:
                    authenticator.authenticate(method, metadata)
                except TailorError as error:
                    await _abort(context, error)
                async for response in behaviour(request, context):
                    yield response

            return wrapper

        return _rebuild(handler, checked, checked_streaming)
