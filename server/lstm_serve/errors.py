"""Domain exceptions.

The layers below transport raise these; one interceptor
(:mod:`lstm_serve.transport.interceptor`) maps them to gRPC status codes. Each message
names the field at fault and what was expected, so a person can act on it.
"""

from __future__ import annotations

ECHO_LIMIT = 64
"""Most characters of a client's value that an error message repeats."""

MAX_ID_BYTES = 16 * 1024
"""Longest session id, model name or version accepted, in UTF-8 bytes. Error
messages echo such values only truncated, so the status trailer stays far below
gRPC's metadata limits (8 KiB soft, 16 KiB hard)."""


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``value`` as an error message may repeat it: at most ``limit`` characters,
    then a marker counting what was cut."""
    text = str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def check_id(value: str, field: str) -> str:
    """Refuse an identifier longer than :data:`MAX_ID_BYTES` with INVALID_ARGUMENT."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise InvalidInput(
            f"{field}: {size} bytes exceeds the limit of {MAX_ID_BYTES} bytes (UTF-8); "
            f"got '{echo(value)}'"
        )
    return value


class ServeError(Exception):
    """Base class of every error the service reports to clients."""


class InvalidInput(ServeError):
    """The request is malformed: wrong shape, dtype, values or message order."""


class ModelNotFound(ServeError):
    """No model, or no such version, in the repository."""


class ModelNotReady(ServeError):
    """The model version exists but failed to load or is unloading."""


class SessionNotFound(ServeError):
    """The session id is unknown, or its state expired."""


class SessionConflict(ServeError):
    """The session is attached to another stream or bound to another model."""


class PreconditionFailed(ServeError):
    """The request is valid but cannot be served in this state (e.g. streaming a
    non-causal model, or a sequence-number gap)."""


class OffsetMismatch(PreconditionFailed):
    """A Predict stated a frame offset the session does not stand at."""

    def __init__(self, message: str, stated: int, current: int, previous: int | None) -> None:
        super().__init__(message)
        self.stated = stated
        self.current = current
        self.previous = previous


class Overloaded(ServeError):
    """A bounded resource is full: the session cap, the batch queue or a rate limit.
    ``retry_after_ms``, where a retry makes sense, becomes the status's
    ``grpc-retry-pushback-ms`` trailer."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class StoreUnavailable(ServeError):
    """The shared session store did not answer within its budget."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """When a retry has a chance: the store's next reconnect attempt."""


class Draining(ServeError):
    """The server is shutting down and accepts no new work."""


class Unauthenticated(ServeError):
    """The call carries no credential, or one that is invalid, expired or unknown.
    The message says which, never what the credential was."""


class PermissionDenied(ServeError):
    """The caller is authenticated but may not use this model."""


class DeadlineExceeded(ServeError):
    """A server-side timeout passed (e.g. a stream idle for too long)."""


class ManifestError(Exception):
    """A model package is invalid. Carries the path and the field at fault."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        super().__init__(f"{path}: {field}: {problem}")
        self.path = path
        self.field = field
        self.problem = problem
