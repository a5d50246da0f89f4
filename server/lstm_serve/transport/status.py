"""The one mapping from domain errors to gRPC status codes: a pure function, used by
the interceptor for every service and by any servicer for in-band stream errors."""

from __future__ import annotations

import math

import grpc

from lstm_serve import errors

STATUS_OF: dict[type[errors.ServeError], grpc.StatusCode] = {
    errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
    errors.SessionNotFound: grpc.StatusCode.NOT_FOUND,
    errors.ModelNotReady: grpc.StatusCode.FAILED_PRECONDITION,
    errors.SessionConflict: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PreconditionFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Draining: grpc.StatusCode.UNAVAILABLE,
    errors.StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}

INTERNAL_MESSAGE = "internal error; see the server log"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a client gets for ``exc``. Anything that is not a
    domain error is INTERNAL, with a message that reveals nothing of the server."""
    if isinstance(exc, errors.ServeError):
        for cls in type(exc).__mro__:
            if cls in STATUS_OF:
                return STATUS_OF[cls], str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


RETRY_PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""The trailer gRPC retry policies read (gRFC A6): how long to wait before a retry."""


def retry_pushback_ms(exc: BaseException) -> int | None:
    """How many milliseconds a client should wait before retrying after ``exc``, for
    errors that know (a session store that is down until its next reconnect attempt, a full batch
    queue)."""
    if isinstance(exc, errors.StoreUnavailable):
        return max(1, math.ceil(exc.retry_after_s * 1000))
    if isinstance(exc, errors.Overloaded):
        return exc.retry_after_ms
    return None
