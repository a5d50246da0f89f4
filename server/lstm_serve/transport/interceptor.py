"""The one place where domain exceptions become gRPC status codes, and where calls
are authenticated.

It wraps every service the server hosts: a request that does not parse gets
INVALID_ARGUMENT, never grpc's UNKNOWN or INTERNAL. It also times every RPC of the
Inference service and counts errors by code, so no servicer method deals with either.

With authentication on, every call to a service that is not open (health and
reflection are, by default) is authenticated before its handler runs, and runs as
its :class:`~lstm_serve.auth.Principal` (see :mod:`lstm_serve.auth` for how the
domain uses it). A missing or invalid credential is UNAUTHENTICATED; a model the
principal may not use is PERMISSION_DENIED, raised by the domain.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from lstm_serve import auth, errors
from lstm_serve.credentials import Authenticator
from lstm_serve.metrics import Metrics
from lstm_serve.transport.status import RETRY_PUSHBACK_KEY, retry_pushback_ms, status_for
from lstm_serve.transport.tls import peer_names

log = logging.getLogger(__name__)

AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

BEARER = "bearer "


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    """The token of the call's ``authorization: Bearer <token>`` metadata, or None
    without one. Any other form is UNAUTHENTICATED (without repeating it)."""
    values = [v for k, v in (context.invocation_metadata() or ()) if k == "authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise errors.Unauthenticated("invalid credential: more than one 'authorization' metadata entry")
    value = values[0] if isinstance(values[0], str) else values[0].decode(errors="replace")
    if not value[: len(BEARER)].lower() == BEARER:
        raise errors.Unauthenticated("invalid credential: 'authorization' metadata must be 'Bearer <token>'")
    return value[len(BEARER) :].strip()


class _Outcome:
    """The status an RPC ended with, filled in as it fails."""

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK

    async def abort(self, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        self.code, message = status_for(exc)
        if self.code is grpc.StatusCode.INTERNAL:
            log.exception("unhandled error", exc_info=exc)
        pushback = retry_pushback_ms(exc)
        if pushback is not None:
            context.set_trailing_metadata(((RETRY_PUSHBACK_KEY, str(pushback)),))
        await context.abort(self.code, message)

    def cancelled(self, context: grpc.aio.ServicerContext) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED


class _Undecodable:
    """Stands for a request message that did not parse, so the handler, not grpc's
    generic UNKNOWN/INTERNAL path, answers it."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> errors.InvalidInput:
        return errors.InvalidInput(f"request is not a valid {self.type_name}")


def _message_name(deserializer: Any) -> str:
    message_class = getattr(deserializer, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return str(getattr(descriptor, "full_name", "request message"))


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None
    type_name = _message_name(deserializer)

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            # DecodeError for garbage, truncation, endless varints and invalid UTF-8.
            return _Undecodable(type_name)

    return deserialize


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error()
        yield request


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps domain errors to status codes for every service on the server, answers
    undecodable requests with INVALID_ARGUMENT, and records the latency and errors of
    the RPCs of ``metered`` services (by full service name). With ``authenticator``,
    every call except those to the ``open`` services (full names) runs as the
    principal its credentials prove."""

    def __init__(
        self,
        metrics: Metrics,
        metered: Sequence[str],
        authenticator: Authenticator | None = None,
        open_services: Sequence[str] = (),
    ) -> None:
        self._metrics = metrics
        self._prefixes = tuple(f"/{name}/" for name in metered)
        self._authenticator = authenticator
        self._open = tuple(f"/{name}/" for name in open_services)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}
        """Each method's handler and its wrapped one, built on the method's first call
        (a registered method's handler is the same object on every call)."""

    def _record(
        self, method: str | None, started: float, code: grpc.StatusCode, principal: auth.Principal | None
    ) -> None:
        if code in AUTH_CODES:
            self._metrics.auth_refusals.labels(code.name, principal.method if principal else "none").inc()
        if method is None:
            return
        self._metrics.rpc_latency.labels(method, code.name).observe(time.perf_counter() - started)
        if code is not grpc.StatusCode.OK:
            self._metrics.errors.labels(method, code.name).inc()

    def _principal(self, guarded: bool, context: grpc.aio.ServicerContext) -> auth.Principal | None:
        if not guarded or self._authenticator is None:
            return None
        return self._authenticator.authenticate(bearer_token(context), peer_names(context))

    @contextlib.asynccontextmanager
    async def _handled(
        self, method: str | None, guarded: bool, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[None]:
        """Authenticate the call (when ``guarded``) and run the block as its principal;
        turn what it raises into its status, and record the RPC."""
        started, outcome = time.perf_counter(), _Outcome()
        principal = None
        try:
            principal = self._principal(guarded, context)
            with auth.acting_as(principal):
                yield
        except (asyncio.CancelledError, GeneratorExit):
            outcome.cancelled(context)
            raise
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await outcome.abort(context, exc)
        finally:
            self._record(method, started, outcome.code, principal)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap every unary-unary, unary-stream and stream-stream handler (the only
        kinds served); pass others through."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method: str = handler_call_details.method
        cached = self._wrapped.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(full_method, handler)
        self._wrapped[full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, full_method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        method = next(
            (full_method.removeprefix(p) for p in self._prefixes if full_method.startswith(p)), None
        )
        guarded = self._authenticator is not None and not full_method.startswith(self._open)
        deserializer = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, guarded, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, guarded, handler.stream_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_unary_stream(method, guarded, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _wrap_unary(self, method: str | None, guarded: bool, behavior: Any) -> Any:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._handled(method, guarded, context):
                if isinstance(request, _Undecodable):
                    raise request.error()
                return await behavior(request, context)

        return wrapped

    def _wrap_stream(self, method: str | None, guarded: bool, behavior: Any) -> Any:
        async def wrapped(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # aclosing: a client that goes away closes the whole generator chain at
            # once, so its session is released now, not when the garbage is collected.
            async with (
                self._handled(method, guarded, context),
                contextlib.aclosing(behavior(_decoded(requests), context)) as responses,
            ):
                async for response in responses:
                    yield response

        return wrapped

    def _wrap_unary_stream(self, method: str | None, guarded: bool, behavior: Any) -> Any:
        """Health's Watch: a request that does not parse is INVALID_ARGUMENT (grpc
        alone answers UNKNOWN and logs a traceback), and when health is not open it is
        authenticated like the rest. It writes with ``context.write``, so it stays a
        coroutine; a generator handler stays a generator."""
        if not inspect.isasyncgenfunction(behavior):
            return self._wrap_unary(method, guarded, behavior)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._handled(method, guarded, context):
                if isinstance(request, _Undecodable):
                    raise request.error()
                async with contextlib.aclosing(behavior(request, context)) as responses:
                    async for response in responses:
                        yield response

        return wrapped
