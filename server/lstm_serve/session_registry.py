"""Opening and closing sessions: :class:`SessionRegistry` enforces the open mode, the
cap, the model binding and the holds (a stream holds a session alone; Predict calls
share it, one step at a time).

A stream that ends without ``end`` (disconnect, cancel, error) only detaches its
session: the committed state stays in the store until its idle TTL runs out.

With authentication on, a session belongs to the principal that created it
(``SessionState.principal``, :func:`lstm_serve.auth.owner`); for any other principal
it does not exist: continuing it by id or by resume token is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Callable

from prometheus_client import Gauge

from lstm_serve import auth
from lstm_serve.domain import ModelRef
from lstm_serve.errors import Overloaded, ServeError, SessionConflict, SessionNotFound, echo
from lstm_serve.metrics import Metrics
from lstm_serve.session_store import Lease, SessionStore
from lstm_serve.sessions import LiveSession, OpenMode, save
from lstm_serve.settings import LimitSettings
from lstm_serve.state import SessionState, now_ms

log = logging.getLogger(__name__)

TOUCH_SLACK = 0.1
"""How stale, as a share of the TTL, a session's idle clock may be when a call that
held it ends without touching it; so a session can expire at most that much early."""


def _foreign_token() -> SessionNotFound:
    return SessionNotFound(
        "resume_token: its session is unknown to this principal; a session continues only "
        "for the principal that created it"
    )



class SessionRegistry:
    """Opens, holds and closes sessions against a store."""

    def __init__(
        self,
        store: SessionStore,
        metrics: Metrics,
        lease_s: float = 10.0,
        write_back_chunks: int = 1,
        limits: LimitSettings | None = None,
    ) -> None:
        self.store = store
        self._limits = limits if limits is not None else LimitSettings()
        self._live: dict[str, LiveSession] = {}
        self._metrics = metrics
        self._lease_s = lease_s
        self._write_back_every = write_back_chunks if store.shared else 1
        self._active_gauges: dict[ModelRef, Gauge] = {}
        self.holder = f"{socket.gethostname()}/{os.getpid()}"
        """This process's name in the leases it holds."""

    def bound_to(self, ref: ModelRef) -> bool:
        """True while this process holds a session of model version ``ref``."""
        return any(live.held and live.model == ref for live in self._live.values())

    def held(self, session_id: str) -> bool:
        """True while this process holds the session."""
        live = self._live.get(session_id)
        return live is not None and live.held

    async def open(
        self,
        session_id: str,
        fresh: Callable[[str], SessionState],
        *,
        requested_version: str,
        mode: OpenMode,
        stream: bool,
        restore: SessionState | None = None,
        model: ModelRef | None = None,
    ) -> tuple[LiveSession, bool]:
        """Hold ``session_id`` (a new id when empty). ``fresh(id)`` makes the state of
        a new session (only called when one is made); ``model``, the model asked for,
        is checked against an existing session's binding (default: ``fresh``'s);
        ``restore``, a state opened from a resume token, replaces any
        copy that is not held (a token is a checkpoint: resuming from an older one is
        allowed, but a session in use is never taken over). Returns the live session
        and whether it existed before. The caller must :meth:`close` it with the same
        ``stream``."""
        session_id = restore.session_id if restore is not None else (session_id or uuid.uuid4().hex)
        lease = None
        if session_id not in self._live:
            await self._check_owner_before_lease(session_id, restore)
            lease = Lease(self.store, session_id, self.holder, self._lease_s)
            await lease.acquire()
        try:
            live, existed = await self._open(session_id, fresh, requested_version, mode, stream, restore, model)
        except BaseException:
            if lease is not None and session_id not in self._live:
                await lease.release()
            raise
        if lease is not None:
            live.lease = lease
        if stream:
            live.write_back_every = self._write_back_every
            if live.renewal is None and live.lease is not None:
                live.renewal = asyncio.get_running_loop().create_task(
                    self._renew(live.lease), name=f"lease-{live.id[:16]}"
                )
        return live, existed

    async def _check_owner_before_lease(self, session_id: str, restore: SessionState | None) -> None:
        """With authentication on and a shared store, another principal's session is
        unknown (NOT_FOUND) before any lease is tried: a lease conflict would tell
        that the id is in use elsewhere."""
        if auth.current() is None or not self.store.shared:
            return
        if restore is not None:
            if restore.principal != auth.owner():
                raise _foreign_token()
            return
        state = await self.store.get(session_id)
        if state is not None and state.principal != auth.owner():
            raise self._not_found(session_id, "is unknown")

    async def _renew(self, lease: Lease) -> None:
        while True:
            await asyncio.sleep(self._lease_s / 3)
            try:
                if not await lease.renew():
                    return
            except ServeError:
                continue

    async def write_back(self, live: LiveSession, reason: str) -> None:
        """Write the steps kept in memory back to the store now (detach, end, drain)."""
        async with live.lock:
            if live.unsaved and not live.fenced:
                await save(self.store, live, live.state)
                self._metrics.write_backs.labels(reason).inc()

    async def _open(
        self,
        session_id: str,
        fresh: Callable[[str], SessionState],
        requested_version: str,
        mode: OpenMode,
        stream: bool,
        restore: SessionState | None,
        model: ModelRef | None,
    ) -> tuple[LiveSession, bool]:
        if restore is not None:
            if restore.principal != auth.owner():
                raise _foreign_token()
            return await self._restore(restore, stream), True
        self._check_principal_sessions(session_id)
        live = self._live.get(session_id)
        state = live.state if live is not None else await self.store.get(session_id)
        if state is not None and state.principal != auth.owner():
            # Another principal's session is reported as unknown, so ids do not leak.
            raise self._not_found(session_id, "is unknown")
        if state is not None and mode != "restart":
            self._check_age(state)
        if state is not None and mode == "create":
            raise SessionConflict(f"session_id: session '{echo(session_id)}' exists already")
        if state is not None and mode == "restart":
            if live is not None and live.held:
                raise self._conflict(live)
            await self.store.delete(session_id, "restarted")
            log.info("session %s of model '%s' restarted from the zero state", echo(session_id), state.model.name)
            self._live.pop(session_id, None)
            live, state = None, None
        if state is None:
            if mode == "continue":
                why = (
                    f"expired after {self.store.ttl_s:g} s idle (LSTM_SERVE_SESSIONS__TTL_S)"
                    if await self.store.was_expired(session_id)
                    else "is unknown"
                )
                raise self._not_found(session_id, why)
            new = fresh(session_id)
            if new.session_id in self._live:
                raise self._conflict(self._live[new.session_id])
            stored = await self.store.create(new)
            live = LiveSession(stored.session_id, stored)
            self._live[live.id] = live
            self._hold(live, stream)
            self._metrics.sessions_created.labels(stored.model.name, stored.model.version).inc()
            return live, False
        if live is None:
            live = self._live.setdefault(session_id, LiveSession(session_id, state))
        asked = model if model is not None else fresh(session_id).model
        if live.model.name != asked.name or (requested_version and requested_version != live.model.version):
            self._metrics.sessions_rejected.labels("conflict").inc()
            self._drop_if_idle(live)
            raise SessionConflict(
                f"session_id: session '{echo(live.id)}' is bound to model '{live.model.name}' "
                f"version {live.model.version}, not '{echo(asked.name)}'"
                + (f" version {echo(requested_version)}" if requested_version else "")
            )
        if live.stream_attached or (stream and live.predict_holds):
            self._metrics.resumes.labels("memory", "refused").inc()
            raise self._conflict(live)
        self._hold(live, stream)
        self._metrics.resumes.labels("memory", "ok").inc()
        return live, True

    @staticmethod
    def _not_found(session_id: str, why: str) -> SessionNotFound:
        return SessionNotFound(
            f"session_id: session '{echo(session_id)}' {why} here; nothing was started. Resume "
            "it with a resume_token, route the call by session id to the replica that holds it, "
            "or start a new session (frame_offset 0, or without must_exist)"
        )

    async def _restore(self, state: SessionState, stream: bool) -> LiveSession:
        live = self._live.get(state.session_id)
        if live is not None and live.held:
            raise self._conflict(live)
        stored = await self.store.put(state)
        live = LiveSession(stored.session_id, stored)
        self._live[live.id] = live
        self._hold(live, stream)
        self._metrics.sessions_created.labels(stored.model.name, stored.model.version).inc()
        return live

    def _check_principal_sessions(self, session_id: str) -> None:
        """RESOURCE_EXHAUSTED when the caller already holds its limit of sessions here."""
        limit, principal = self._limits.max_sessions_per_principal, auth.current()
        if limit <= 0 or principal is None:
            return
        owner = principal.owner
        held = sum(1 for live in self._live.values() if live.held and live.id != session_id
                   and live.state.principal == owner)
        if held >= limit:
            raise Overloaded(
                f"session_id: principal '{echo(principal.subject)}' holds {held} sessions in use, the limit "
                "(LSTM_SERVE_LIMITS__MAX_SESSIONS_PER_PRINCIPAL); end or detach one first",
                retry_after_ms=1000,
            )

    def _check_age(self, state: SessionState) -> None:
        """RESOURCE_EXHAUSTED for a session older than the age cap."""
        cap_s = self._limits.max_session_age_s
        if cap_s > 0 and now_ms() - state.created_ms > cap_s * 1000:
            raise Overloaded(
                f"session_id: session '{echo(state.session_id)}' is older than {cap_s:g} s "
                "(LSTM_SERVE_LIMITS__MAX_SESSION_AGE_S); start a new session"
            )

    def _conflict(self, live: LiveSession) -> SessionConflict:
        self._metrics.sessions_rejected.labels("conflict").inc()
        holder = "attached to another stream" if live.stream_attached else "in use by a Predict call"
        return SessionConflict(f"session_id: session '{echo(live.id)}' is {holder}; wait for it to finish")

    def _hold(self, live: LiveSession, stream: bool) -> None:
        if stream:
            live.stream_attached = True
        else:
            live.predict_holds += 1
        self._active(live.model).inc()

    def _active(self, ref: ModelRef) -> Gauge:
        """The active-sessions gauge of ``ref`` (labelled once: a call holds and
        releases a session on every request)."""
        gauge = self._active_gauges.get(ref)
        if gauge is None:
            gauge = self._active_gauges[ref] = self._metrics.sessions_active.labels(ref.name, ref.version)
        return gauge

    def _drop_if_idle(self, live: LiveSession) -> None:
        if not live.held and self._live.get(live.id) is live:
            del self._live[live.id]

    async def close(self, live: LiveSession, *, stream: bool, delete: bool = False) -> None:
        """Give up this caller's hold; delete the session when ``delete`` (the client
        ended it) and nobody else holds it. An idle session leaves the process: its
        committed state stays in the store."""
        if stream:
            live.stream_attached = False
            if live.renewal is not None:
                live.renewal.cancel()
                live.renewal = None
            live.write_back_every = 1
        else:
            live.predict_holds -= 1
        self._active(live.model).dec()
        if live.held:
            return
        current = self._live.get(live.id) is live
        self._drop_if_idle(live)
        try:
            if delete and current and not live.fenced:
                await self.store.delete(live.id, "ended")
            elif current and live.unsaved:
                await self.write_back(live, "detach")
            elif current and not live.fenced:
                await self._touch(live)
        finally:
            if current and live.lease is not None:
                await live.lease.release()

    async def _touch(self, live: LiveSession) -> None:
        """Restart the idle clock of a session that was only read, not advanced. A
        state committed within :data:`TOUCH_SLACK` of its TTL (at most a second) is
        fresh enough: no store round trip after a call that just advanced it."""
        slack_ms = min(1000.0, self.store.ttl_s * 1000 * TOUCH_SLACK)
        if now_ms() - live.state.updated_ms < slack_ms:
            return
        stored = await self.store.get(live.id)
        if stored is not None and stored.version == live.state.version and now_ms() > stored.updated_ms:
            live.state = await self.store.compare_and_set(stored, stored.version)

    async def evict_all(self) -> None:
        """Forget the live handles (shutdown); committed states stay in the store."""
        self._live.clear()
