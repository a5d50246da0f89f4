"""The one place where domain exceptions become gRPC status codes.

It also times every RPC of the Inference service and counts errors by code, so no
servicer method deals with either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from lstm_serve import errors
from lstm_serve.metrics import Metrics

log = logging.getLogger(__name__)

STATUS_OF: dict[type[errors.ServeError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.SessionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SessionConflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
}

SERVICE_PREFIX = "/lstmserve.v1.Inference/"


def status_of(exc: errors.ServeError) -> grpc.StatusCode:
    """The status code for a domain error."""
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.INTERNAL


class _Outcome:
    """The status an RPC ended with, filled in as it fails."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK

    async def abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        if isinstance(exc, errors.ServeError):
            self.code = status_of(exc)
            await context.abort(self.code, str(exc))
        self.code = grpc.StatusCode.INTERNAL
        log.exception("unhandled error", exc_info=exc)
        await context.abort(self.code, f"internal error: {type(exc).__name__}; see server logs")

    def cancelled(self, context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes and records RPC latency and errors."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def _record(self, method: str, started: float, code: grpc.StatusCode) -> None:
        self._metrics.rpc_latency.labels(method, code.name).observe(time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            self._metrics.errors.labels(method, code.name).inc()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the Inference service's handlers; pass others through."""
        handler = await continuation(handler_call_details)
        full_method: str = handler_call_details.method
        if handler is None or not full_method.startswith(SERVICE_PREFIX):
            return handler
        method = full_method.removeprefix(SERVICE_PREFIX)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, method: str, behavior: Any) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started, outcome = time.perf_counter(), _Outcome()
            try:
                return await behavior(request, context)
            except asyncio.CancelledError:
                outcome.cancelled(context)
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await outcome.abort(context, exc)
            finally:
                self._record(method, started, outcome.code)

        return wrapped

    def _wrap_stream(self, method: str, behavior: Any) -> Any:
        async def wrapped(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started, outcome = time.perf_counter(), _Outcome()
            try:
                # aclosing: a client that goes away closes the whole generator chain at
                # once, so its session is released now, not when the garbage is collected.
                async with contextlib.aclosing(behavior(requests, context)) as responses:
                    async for response in responses:
                        yield response
            except (asyncio.CancelledError, GeneratorExit):
                outcome.cancelled(context)
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                await outcome.abort(context, exc)
            finally:
                self._record(method, started, outcome.code)

        return wrapped
