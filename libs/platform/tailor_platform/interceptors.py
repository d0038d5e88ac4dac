"""The server interceptor every service installs: authentication and error mapping.

grpc.aio interceptors see only the handler, so the guard wraps each method's behaviour (for all
four call shapes) once, and reuses the wrapped handler on every later call of that method: the
hot paths pay for one extra coroutine frame, not for rebuilding handlers per call.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from tailor_platform.auth import Authenticator
from tailor_platform.errors import TailorError

log = logging.getLogger(__name__)

Behaviour = Callable[..., Any]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"

# Probes and tooling must work without credentials.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


async def abort_with(context: Context, error: Exception) -> None:
    """End the call with the status the error maps to (INTERNAL, without its text, for a bug)."""
    if isinstance(error, TailorError):
        status = error.to_status()
        await context.abort(
            error.code,
            error.message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
    log.error("unhandled error in RPC", exc_info=error)
    await context.abort(grpc.StatusCode.INTERNAL, "internal error")


class CallGuard(grpc.aio.ServerInterceptor):
    """Authenticates each call (except health and reflection) and maps domain errors to statuses."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _check(self, method: str, context: Context) -> None:
        metadata = {key: value for key, value in context.invocation_metadata() or ()}
        self.authenticator.authenticate(method, metadata)

    def _wrap(self, method: str, handler: Handler) -> Handler:
        open_method = method.startswith(OPEN_METHOD_PREFIXES)
        check = self._check

        def unary(behaviour: Behaviour) -> Behaviour:
            async def guarded(request: Any, context: Context) -> Any:
                try:
                    if not open_method:
                        check(method, context)
                    return await behaviour(request, context)
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort_with(context, error)

            return guarded

        def streaming(behaviour: Behaviour) -> Behaviour:
            async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
                try:
                    if not open_method:
                        check(method, context)
                    async for response in behaviour(request, context):
                        yield response
                except grpc.aio.AbortError:
                    raise
                except Exception as error:
                    await abort_with(context, error)

            return guarded

        return _rebuild(handler, unary, streaming)


def _rebuild(
    handler: Handler, unary: Callable[[Behaviour], Behaviour], streaming: Callable[[Behaviour], Behaviour]
) -> Handler:
    serializers = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **serializers)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **serializers)
