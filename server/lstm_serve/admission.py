"""Admission: drain, the count of calls in flight, and the admission limits
(:class:`~lstm_serve.settings.LimitSettings`)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Literal

from lstm_serve import auth
from lstm_serve.errors import Draining, Overloaded
from lstm_serve.settings import LimitSettings

PRINCIPAL_PUSHBACK_MS = 200
"""The retry delay suggested when a principal is at its stream or call limit."""

Slot = Literal["call", "stream"]


class RateLimit:
    """A token bucket: ``rate`` per second with a burst of one second's worth."""

    def __init__(self, rate: float, what: str, setting: str) -> None:
        self._rate = rate
        self._tokens = max(1.0, rate)
        self._stamp = time.monotonic()
        self._what = what
        self._setting = setting

    def take(self) -> None:
        """Spend one token, or RESOURCE_EXHAUSTED with the wait until the next."""
        if self._rate <= 0:
            return
        now = time.monotonic()
        self._tokens = min(max(1.0, self._rate), self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            wait_ms = math.ceil((1.0 - self._tokens) / self._rate * 1000)
            raise Overloaded(
                f"{self._what}: more than {self._rate:g} per second on this stream ({self._setting}); slow down",
                retry_after_ms=wait_ms,
            )
        self._tokens -= 1.0


class Admission:
    """Admits calls until the drain begins, and tells when none is in flight."""

    def __init__(self, limits: LimitSettings | None = None) -> None:
        self.draining = False
        self.limits = limits if limits is not None else LimitSettings()
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._held: Counter[tuple[str, Slot]] = Counter()
        """Calls and streams in flight per principal (authenticated callers only)."""

    def stream_rate(self, what: str) -> RateLimit:
        """The chunk-rate limit of one new stream."""
        return RateLimit(self.limits.max_chunks_per_s, what, "LSTM_SERVE_LIMITS__MAX_CHUNKS_PER_S")

    @contextlib.contextmanager
    def principal_slot(self, slot: Slot) -> Iterator[None]:
        """Count a call or a stream of the caller against its per-principal limit."""
        principal = auth.current()
        limit = self.limits.max_calls_per_principal if slot == "call" else self.limits.max_streams_per_principal
        if principal is None or limit <= 0:
            yield
            return
        key = (principal.owner, slot)
        if self._held[key] >= limit:
            setting = "MAX_CALLS_PER_PRINCIPAL" if slot == "call" else "MAX_STREAMS_PER_PRINCIPAL"
            raise Overloaded(
                f"principal '{principal.subject[:64]}' has {self._held[key]} {slot}s in flight, the limit "
                f"(LSTM_SERVE_LIMITS__{setting}); wait for one to finish",
                retry_after_ms=PRINCIPAL_PUSHBACK_MS,
            )
        self._held[key] += 1
        try:
            yield
        finally:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def begin_drain(self) -> None:
        """Refuse new calls from now on; in-flight ones continue."""
        self.draining = True

    @contextlib.contextmanager
    def admitted(self, slot: Slot = "call") -> Iterator[None]:
        """Count a call or a stream in flight; refuse it with UNAVAILABLE while
        draining, or RESOURCE_EXHAUSTED when its principal is at its limit."""
        if self.draining:
            raise Draining("server is draining (shutting down); retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        try:
            with self.principal_slot(slot):
                yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight, at most ``timeout`` seconds; True if idle."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
