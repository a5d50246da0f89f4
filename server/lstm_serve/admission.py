"""Admission: drain and the count of calls in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from lstm_serve.errors import Draining


class Admission:
    """Admits calls until the drain begins, and tells when none is in flight."""

    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin_drain(self) -> None:
        """Refuse new calls from now on; in-flight ones continue."""
        self.draining = True

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a call in flight; refuse it with UNAVAILABLE while draining."""
        if self.draining:
            raise Draining("server is draining (shutting down); retry on another replica")
        self._in_flight += 1
        self._idle.clear()
        try:
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
