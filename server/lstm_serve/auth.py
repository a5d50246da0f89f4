"""Who is calling, and which models they may use: the domain side of authentication.

The design, for every API on the port (``lstmserve.v1`` today, ``kserve_v2`` next):

1. The one server interceptor (:mod:`lstm_serve.transport.interceptor`) authenticates
   each call *before* its handler runs, from the ``authorization: Bearer`` metadata or
   the mTLS client certificate (:mod:`lstm_serve.credentials`). It sets the caller's
   :class:`Principal` in a :class:`contextvars.ContextVar` for the life of the call
   (:func:`acting_as`). A missing or invalid credential never reaches a handler: the
   interceptor raises :class:`~lstm_serve.errors.Unauthenticated`.
2. Below transport, code asks this module, never gRPC:

   - :func:`require_model` (``PermissionDenied`` unless the caller may use the model)
     is called where a model is resolved: :meth:`DomainFacade.model` and
     :meth:`Lanes.resolve` (Predict, StreamPredict, and any use case that goes through
     the lanes). A servicer of another API gets the check for free by calling the
     facade; one that resolves a model by itself must call :func:`require_model` first.
   - :func:`allowed` filters listings (ListModels shows only the allowed models).
   - :func:`owner` names the principal a new session belongs to; a session owned by
     another principal is reported as unknown (NOT_FOUND), so ids do not leak.

When authentication is off no principal is set (:func:`current` is None): every model
is allowed and sessions have no owner (``""``). Tasks the handler creates copy the
context, so they act as the same principal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass

from lstm_serve.errors import PermissionDenied, echo

ALL_MODELS = "*"
"""In a principal's model list: every model."""


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    subject: str
    """Who: the key's or the certificate's ``subject``, or the JWT's ``sub``."""
    models: frozenset[str]
    """The model names it may use; :data:`ALL_MODELS` means every model."""
    method: str
    """How it proved it: ``api-key``, ``jwt`` or ``mtls``."""

    def allows(self, model: str) -> bool:
        """True when the principal may use ``model``."""
        return ALL_MODELS in self.models or model in self.models

    @property
    def owner(self) -> str:
        """The owner recorded in the sessions it creates: method and subject, so an
        API key and a JWT with the same subject are distinct owners."""
        return f"{self.method}:{self.subject}"


_current: ContextVar[Principal | None] = ContextVar("lstm_serve_principal", default=None)


def current() -> Principal | None:
    """The caller of the call in progress; None when authentication is off (or for
    an open service such as health)."""
    return _current.get()


@contextlib.contextmanager
def acting_as(principal: Principal | None) -> Iterator[None]:
    """Run the block as ``principal`` (None: unauthenticated, everything allowed)."""
    token = _current.set(principal)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # a generator closed from another context
            _current.reset(token)


def allowed(model: str) -> bool:
    """True when the current caller may use ``model``."""
    principal = _current.get()
    return principal is None or principal.allows(model)


def require_model(model: str) -> None:
    """Raise :class:`PermissionDenied` unless the current caller may use ``model``.

    Called before the model is looked up, so a caller learns nothing of models it may
    not use (an unknown name is PERMISSION_DENIED for it too)."""
    principal = _current.get()
    if principal is not None and not principal.allows(model):
        raise PermissionDenied(
            f"model.name: '{echo(model)}' is not allowed for principal '{echo(principal.subject)}'; "
            "ask for it to be added to the principal's models (keys file or the JWT's models claim)"
        )


def owner() -> str:
    """The owner of sessions the current caller creates; ``""`` without authentication."""
    principal = _current.get()
    return "" if principal is None else principal.owner
