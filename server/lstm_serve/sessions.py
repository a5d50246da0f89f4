"""Per-session recurrent state and the store that keeps it.

A session is bound to one model version for its whole life and holds the recurrent
states after the last processed chunk, the next expected sequence number, and, for
audio streams, the front-end and event-detector state. The store is a small
interface (get, put, delete, expire) so that a shared store can replace the default
in-memory one.

Lifecycle: a session is *held* while a stream (exclusively) or Predict calls (one at
a time, in arrival order) use it, and *detached* otherwise. Detached sessions expire
after ``ttl_s`` idle seconds. A stream
that ends without ``end`` (disconnect, cancel, error) only detaches its session, so
the client can resume it until the TTL runs out.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from lstm_serve.domain import ModelRef
from lstm_serve.errors import Overloaded, SessionConflict, SessionNotFound, echo
from lstm_serve.metrics import Metrics


@dataclass(eq=False)
class Session:
    """One session's state."""

    id: str
    model: ModelRef
    states: list[np.ndarray]
    next_sequence_number: int = 0
    frames: int = 0
    stream_attached: bool = False
    """A stream holds the session; nothing else may use it meanwhile."""
    predict_holds: int = 0
    """Predict calls holding (or queued on) the session."""
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    frontend: Any = None
    """Audio front-end state (decoder, resampler, feature extractor), if any."""
    spotter: Any = None
    """Keyword event detector state, if any."""
    pending: tuple[int, np.ndarray] | None = None
    """Features the front-end already produced for a chunk whose model step failed,
    keyed by its sequence number, so that resending that chunk does not feed its audio
    through the front-end twice."""

    @property
    def held(self) -> bool:
        """True while a stream or a Predict call uses the session."""
        return self.stream_attached or self.predict_holds > 0 or self.lock.locked()

    def touch(self) -> None:
        """Restart the idle clock."""
        self.last_used = time.monotonic()


class SessionStore(Protocol):
    """Where session state lives: the interface a shared store would implement."""

    ttl_s: float
    max_sessions: int

    def get(self, session_id: str) -> Session | None:
        """The session, or None."""

    def put(self, session: Session) -> None:
        """Insert or replace a session."""

    def delete(self, session_id: str, reason: str) -> None:
        """Remove a session (reason: ended, expired, evicted)."""

    def expire(self, now: float) -> list[str]:
        """Remove detached sessions idle past the TTL; return their ids."""

    def __len__(self) -> int:
        """Live sessions."""

    def was_expired(self, session_id: str) -> bool:
        """True when the id belonged to a session that expired recently."""


class InMemorySessionStore:
    """A process-local store with idle TTL and a cap on live sessions."""

    def __init__(self, ttl_s: float, max_sessions: int, metrics: Metrics) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._recently_expired: OrderedDict[str, float] = OrderedDict()
        self._metrics = metrics

    def get(self, session_id: str) -> Session | None:
        """The session, or None."""
        return self._sessions.get(session_id)

    def put(self, session: Session) -> None:
        """Insert or replace a session."""
        self._sessions[session.id] = session
        self._metrics.sessions_stored.set(len(self._sessions))

    def delete(self, session_id: str, reason: str) -> None:
        """Remove a session (reason: ended, expired, evicted)."""
        if self._sessions.pop(session_id, None) is not None:
            self._metrics.sessions_ended.labels(reason).inc()
            self._metrics.sessions_stored.set(len(self._sessions))

    def expire(self, now: float) -> list[str]:
        """Remove detached sessions idle past the TTL; return their ids."""
        expired = [
            s.id
            for s in self._sessions.values()
            if not s.held and now - s.last_used > self.ttl_s
        ]
        for session_id in expired:
            self.delete(session_id, "expired")
            self._recently_expired[session_id] = now
        while len(self._recently_expired) > 10_000:
            self._recently_expired.popitem(last=False)
        return expired

    def __len__(self) -> int:
        return len(self._sessions)

    def was_expired(self, session_id: str) -> bool:
        """True when the id belonged to a session that expired recently."""
        return session_id in self._recently_expired

    def evict_all(self) -> None:
        """Drop every session (shutdown)."""
        for session_id in list(self._sessions):
            self.delete(session_id, "evicted")


class SessionManager:
    """Finds, creates, attaches and detaches sessions, enforcing the cap and binding."""

    def __init__(self, store: SessionStore, metrics: Metrics) -> None:
        self.store = store
        self._metrics = metrics

    def acquire(
        self,
        session_id: str,
        model: ModelRef,
        requested_version: str,
        zero_states: list[np.ndarray],
        *,
        must_exist: bool,
        stream: bool,
    ) -> tuple[Session, bool]:
        """Find ``session_id`` (a new id when empty), creating it when allowed.

        A stream holds the session exclusively; Predict calls hold it together and
        serialize on ``session.lock``. Returns the session and whether it existed
        before. The caller must call :meth:`release` with the same ``stream`` when done.
        """
        session = self.store.get(session_id) if session_id else None
        if session is None:
            if must_exist:
                why = (
                    f"expired after {self.store.ttl_s:g} s idle (LSTM_SERVE_SESSIONS__TTL_S)"
                    if self.store.was_expired(session_id)
                    else "is unknown"
                )
                raise SessionNotFound(f"session_id: session '{echo(session_id)}' {why}")
            if len(self.store) >= self.store.max_sessions:
                self._metrics.sessions_rejected.labels("cap").inc()
                raise Overloaded(
                    f"session cap reached: {self.store.max_sessions} live sessions "
                    "(LSTM_SERVE_SESSIONS__MAX_SESSIONS). End idle sessions (End, or Predict "
                    "with end_session) or retry on another replica."
                )
            session = Session(id=session_id or uuid.uuid4().hex, model=model, states=zero_states)
            self._hold(session, stream)
            self.store.put(session)
            self._metrics.sessions_created.labels(model.name, model.version).inc()
            return session, False
        if session.model.name != model.name or (
            requested_version and requested_version != session.model.version
        ):
            self._metrics.sessions_rejected.labels("conflict").inc()
            raise SessionConflict(
                f"session_id: session '{echo(session.id)}' is bound to model '{session.model.name}' "
                f"version {session.model.version}, not '{echo(model.name)}'"
                + (f" version {echo(requested_version)}" if requested_version else "")
            )
        if session.stream_attached or (stream and session.predict_holds):
            self._metrics.sessions_rejected.labels("conflict").inc()
            holder = "attached to another stream" if session.stream_attached else "in use by a Predict call"
            raise SessionConflict(f"session_id: session '{echo(session.id)}' is {holder}; wait for it to finish")
        self._hold(session, stream)
        session.touch()
        return session, True

    def _hold(self, session: Session, stream: bool) -> None:
        if stream:
            session.stream_attached = True
        else:
            session.predict_holds += 1
        self._metrics.sessions_active.labels(session.model.name, session.model.version).inc()

    def release(self, session: Session, *, stream: bool, delete: bool = False) -> None:
        """Give up this caller's hold; delete the session when ``delete`` (the client
        ended it) and nobody else holds it."""
        if stream:
            session.stream_attached = False
        else:
            session.predict_holds -= 1
        self._metrics.sessions_active.labels(session.model.name, session.model.version).dec()
        session.touch()
        if delete and not session.held and self.store.get(session.id) is session:
            self.store.delete(session.id, "ended")
