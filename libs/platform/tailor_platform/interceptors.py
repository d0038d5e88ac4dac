"""The server interceptor every service installs: a server span, authentication, error mapping.

grpc.aio interceptors see only the handler, so the guard wraps each method's behaviour (for all
four call shapes) once, and reuses the wrapped handler on every later call of that method: the
hot paths pay for one extra coroutine frame, not for rebuilding handlers per call. The span is
made here too rather than by opentelemetry-instrumentation-grpc's aio interceptor, which costs
about 250 µs of CPU per call (measured), more than a cached CheckConsent itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc
from opentelemetry import propagate
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from tailor_platform import telemetry
from tailor_platform.auth import Authenticator
from tailor_platform.channels import HEALTH_CHECK, WORKER_HEADER
from tailor_platform.errors import TailorError

log = logging.getLogger(__name__)

Behaviour = Callable[..., Any]
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
"""The servicer context every service's API methods receive."""
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Continuation: TypeAlias = "Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]]"

# Probes and tooling must work without credentials, and would drown the traces.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
WORKER_ENV = "TAILOR_WORKER"
"""Set by the worker supervisor ("index/count"); health checks tell callers which worker answered
(ChannelPool.spread uses it to spread its connections)."""


class _Call:
    """What one guarded call does around the servicer: span, authentication, status mapping."""

    def __init__(self, method: str, authenticator: Authenticator, worker: str) -> None:
        self.method = method
        self.open = method.startswith(OPEN_METHOD_PREFIXES)
        self.worker_header = ((WORKER_HEADER, worker),) if worker and method == HEALTH_CHECK else None
        self.authenticator = authenticator
        service, _, name = method.lstrip("/").partition("/")
        self.span_name = f"{service}/{name}"
        self.attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}

    def start_span(self, context: Context) -> Span | None:
        if self.open:
            return None
        metadata = context.invocation_metadata() or ()
        parent = propagate.extract({key: value for key, value in metadata if isinstance(value, str)})
        return telemetry.tracer().start_span(
            self.span_name, context=parent, kind=SpanKind.SERVER, attributes=self.attributes
        )

    def authenticate(self, context: Context) -> None:
        if not self.open:
            metadata = {key: value for key, value in context.invocation_metadata() or ()}
            self.authenticator.authenticate(self.method, metadata)

    @staticmethod
    def finish(span: Span | None, code: grpc.StatusCode) -> None:
        if span is None:
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code not in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            span.set_status(Status(StatusCode.ERROR, code.name))
        span.end()


def _code_of(error: Exception, context: Context) -> grpc.StatusCode:
    if isinstance(error, TailorError):
        return error.code
    if isinstance(error, grpc.aio.AbortError):
        return context.code() or grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.INTERNAL


def _failure(error: asyncio.CancelledError | Exception, context: Context) -> tuple[grpc.StatusCode, bool]:
    """The status a failed call ends with, and whether the error must propagate as it is: the
    call's own cancellation, or an abort that already answered it. Anything else is answered by
    `abort_with`."""
    if isinstance(error, asyncio.CancelledError):
        own = _cancelling()
        return (grpc.StatusCode.CANCELLED if own else grpc.StatusCode.INTERNAL), own
    return _code_of(error, context), isinstance(error, grpc.aio.AbortError)


def _cancelling() -> bool:
    """Whether the call itself is being cancelled (the client went away, or its deadline passed);
    a CancelledError otherwise comes from something the handler awaited that someone else
    cancelled, a failure like any other: left to propagate, it would leave the call unanswered
    until the client's deadline (or for ever, without one)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def abort_with(context: Context, error: BaseException) -> None:
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
        self.worker = os.environ.get(WORKER_ENV, "")
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

    def _wrap(self, method: str, handler: Handler) -> Handler:
        call = _Call(method, self.authenticator, self.worker)

        def unary(behaviour: Behaviour) -> Behaviour:
            async def guarded(request: Any, context: Context) -> Any:
                span = call.start_span(context)
                code = grpc.StatusCode.OK
                try:
                    with telemetry.use_span(span):
                        call.authenticate(context)
                        if call.worker_header is not None:
                            await context.send_initial_metadata(call.worker_header)
                        return await behaviour(request, context)
                except (asyncio.CancelledError, Exception) as error:
                    code, propagate = _failure(error, context)
                    if propagate:
                        raise
                    await abort_with(context, error)
                finally:
                    call.finish(span, code)

            return guarded

        def streaming(behaviour: Behaviour) -> Behaviour:
            async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
                span = call.start_span(context)
                code = grpc.StatusCode.OK
                try:
                    with telemetry.use_span(span):
                        call.authenticate(context)
                        async for response in behaviour(request, context):
                            yield response
                except (asyncio.CancelledError, Exception) as error:
                    code, propagate = _failure(error, context)
                    if propagate:
                        raise
                    await abort_with(context, error)
                finally:
                    call.finish(span, code)

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
