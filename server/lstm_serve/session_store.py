"""Where session states live: the async :class:`SessionStore` interface and the
in-memory store, and the lease that fences a process's claim on a session.

:class:`SessionStore` is an async interface over :class:`~lstm_serve.state.SessionState`
values: get, create, compare-and-set, delete and expire. Every step commits the new
state with compare-and-set on the state's version, so a writer that lost the session
can never overwrite newer state (:class:`StaleState`). :class:`InMemorySessionStore` is
the default; :mod:`lstm_serve.redis_store` shares sessions between processes, and there
each process claims the sessions it serves with a :class:`Lease`.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from lstm_serve.errors import Overloaded, SessionConflict, StoreUnavailable, echo
from lstm_serve.metrics import Metrics
from lstm_serve.state import SessionState


class StaleState(SessionConflict):
    """A commit whose expected version is not the stored one: someone else advanced
    or removed the session meanwhile."""


class SessionStore(Protocol):
    """Session states by id."""

    ttl_s: float
    max_sessions: int
    shared: bool
    """True when other processes use the same store (leases and write-back apply)."""

    async def get(self, session_id: str) -> SessionState | None:
        """The committed state, or None."""

    async def create(self, state: SessionState) -> SessionState:
        """Insert a new session (version 1); RESOURCE_EXHAUSTED at the cap,
        :class:`StaleState` when the id exists."""

    async def compare_and_set(self, state: SessionState, expected_version: int) -> SessionState:
        """Replace the session if its stored version is ``expected_version``; return
        the state as stored (version + 1). :class:`StaleState` otherwise."""

    async def put(self, state: SessionState) -> SessionState:
        """Insert or replace a session with a state restored from a token (the
        store's version moves past any it held); RESOURCE_EXHAUSTED at the cap."""

    async def delete(self, session_id: str, reason: str) -> None:
        """Remove a session (reason: ended, expired, evicted, restarted)."""

    async def expire(self, now_ms: int, held: Callable[[str], bool]) -> list[str]:
        """Remove sessions idle past the TTL that nobody holds; return their ids."""

    async def count(self) -> int:
        """Live sessions."""

    async def was_expired(self, session_id: str) -> bool:
        """True when the id belonged to a session that expired recently."""

    async def acquire_lease(self, session_id: str, holder: str) -> None:
        """Own the session across processes (FAILED_PRECONDITION when another does)."""

    async def renew_lease(self, session_id: str, holder: str) -> bool:
        """Extend the lease; False when it was lost."""

    async def release_lease(self, session_id: str, holder: str) -> None:
        """Give the lease up."""


RECENTLY_EXPIRED_KEPT = 10_000
"""Expired ids remembered, so that a late client hears "expired", not "unknown"."""


class InMemorySessionStore:
    """A process-local store with idle TTL (wall clock) and a cap on live sessions."""

    shared = False

    def __init__(self, ttl_s: float, max_sessions: int, metrics: Metrics) -> None:
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self._states: dict[str, SessionState] = {}
        self._recently_expired: OrderedDict[str, int] = OrderedDict()
        self._metrics = metrics

    async def get(self, session_id: str) -> SessionState | None:
        """The committed state, or None."""
        return self._states.get(session_id)

    async def create(self, state: SessionState) -> SessionState:
        """Insert a new session at version 1."""
        if state.session_id in self._states:
            raise StaleState(f"session_id: session '{echo(state.session_id)}' exists already")
        self._check_cap()
        stored = state.advanced(version=1)
        self._states[state.session_id] = stored
        self._metrics.sessions_stored.set(len(self._states))
        return stored

    async def put(self, state: SessionState) -> SessionState:
        """Insert or replace a session with a restored state."""
        current = self._states.get(state.session_id)
        if current is None:
            self._check_cap()
        version = max(state.version, current.version if current is not None else 0) + 1
        stored = state.advanced(version=version)
        self._states[state.session_id] = stored
        self._metrics.sessions_stored.set(len(self._states))
        return stored

    def _check_cap(self) -> None:
        if len(self._states) >= self.max_sessions:
            self._metrics.sessions_rejected.labels("cap").inc()
            raise Overloaded(
                f"session cap reached: {self.max_sessions} live sessions "
                "(LSTM_SERVE_SESSIONS__MAX_SESSIONS). End idle sessions (End, or Predict "
                "with end_session) or retry on another replica."
            )

    async def compare_and_set(self, state: SessionState, expected_version: int) -> SessionState:
        """Replace the session if its stored version is ``expected_version``."""
        current = self._states.get(state.session_id)
        if current is None or current.version != expected_version:
            found = "gone" if current is None else f"at version {current.version}"
            raise StaleState(
                f"session_id: session '{echo(state.session_id)}' changed meanwhile (expected "
                f"version {expected_version}, {found}); this step was not applied"
            )
        stored = state.advanced(version=expected_version + 1)
        self._states[state.session_id] = stored
        return stored

    async def delete(self, session_id: str, reason: str) -> None:
        """Remove a session."""
        if self._states.pop(session_id, None) is not None:
            self._metrics.sessions_ended.labels(reason).inc()
            self._metrics.sessions_stored.set(len(self._states))

    async def expire(self, now_ms: int, held: Callable[[str], bool]) -> list[str]:
        """Remove sessions idle past the TTL that nobody holds."""
        ttl_ms = self.ttl_s * 1000
        expired = [
            sid for sid, state in self._states.items() if not held(sid) and now_ms - state.updated_ms > ttl_ms
        ]
        for session_id in expired:
            await self.delete(session_id, "expired")
            self._recently_expired[session_id] = now_ms
        while len(self._recently_expired) > RECENTLY_EXPIRED_KEPT:
            self._recently_expired.popitem(last=False)
        return expired

    async def count(self) -> int:
        """Live sessions."""
        return len(self._states)

    async def was_expired(self, session_id: str) -> bool:
        """True when the id belonged to a session that expired recently."""
        return session_id in self._recently_expired

    async def acquire_lease(self, session_id: str, holder: str) -> None:
        """One process owns every session of its own store: holds are enough."""

    async def renew_lease(self, session_id: str, holder: str) -> bool:
        """Always held."""
        return True

    async def release_lease(self, session_id: str, holder: str) -> None:
        """Nothing to give up."""


class Lease:
    """This process's claim on one session in the store, and until when it surely holds.

    ``valid_until`` counts from just before the request that set the lease went out, so
    it never outlasts the lease in the store. A renewal that finds the lease gone (it
    ran out while this process was paused or cut off, and another may have taken it)
    marks it lost for good."""

    def __init__(self, store: SessionStore, session_id: str, holder: str, lease_s: float) -> None:
        self._store = store
        self._id = session_id
        self._holder = holder
        self._lease_s = lease_s
        self.valid_until = 0.0
        """time.monotonic() before which no other process can hold the session."""
        self.lost = False

    async def acquire(self) -> None:
        """Take the lease (FAILED_PRECONDITION when another process holds it)."""
        started = time.monotonic()
        await self._store.acquire_lease(self._id, self._holder)
        self.valid_until = started + self._lease_s

    async def renew(self) -> bool:
        """Extend the lease; False (and lost from now on) when it was gone."""
        started = time.monotonic()
        if self.lost:
            return False
        if await self._store.renew_lease(self._id, self._holder):
            self.valid_until = started + self._lease_s
            return True
        self.lost = True
        return False

    async def confirm(self) -> None:
        """Raise :class:`StaleState` unless this process surely still holds the session:
        free while the last renewal is fresh, one renewal otherwise."""
        if not self.lost and time.monotonic() >= self.valid_until:
            await self.renew()
        if self.lost:
            raise StaleState(
                f"session_id: session '{echo(self._id)}' may have changed meanwhile: this replica lost its "
                f"lease (paused or cut off from the store for over {self._lease_s:g} s, "
                "LSTM_SERVE_SESSIONS__LEASE_S); this step was not applied and this copy is dropped. Resume "
                "by session id from started.next_sequence_number"
            )

    async def release(self) -> None:
        """Give the lease up (only if this process still has it). Best effort: a lease
        the store cannot take back now runs out by itself after ``lease_s``."""
        with contextlib.suppress(StoreUnavailable):
            await self._store.release_lease(self._id, self._holder)
