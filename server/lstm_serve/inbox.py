"""A stream's incoming side: the client's messages, read a little ahead by one task, with
the server's drain signals put first and the stream's idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from lstm_serve.domain import StreamMessage
from lstm_serve.errors import DeadlineExceeded

READ_AHEAD = 2
"""Client messages read ahead of the one being processed, at most: one keeps the
reader from waiting on every message it hands over, two bound what a fast client
makes the server hold."""

@dataclass(frozen=True)
class DrainSignal:
    """The server is draining: the stream is told, and ends by ``deadline``."""

    deadline: float
    """time.monotonic() at which the grace ends."""
    closing: bool


@dataclass(frozen=True)
class _ReadFailed:
    """Reading the client's next message raised ``error`` (a request that does not
    convert, or the call going away)."""

    error: BaseException


def _settle(waiter: asyncio.Future[bool] | None, timed_out: bool) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(timed_out)


class Inbox:
    """A stream's client messages, with the server's drain signals put first.

    A reader task takes the client's messages at most ``READ_AHEAD`` ahead of the
    stream: it stops reading while that many wait, so gRPC's flow control still holds
    a client that sends faster than its chunks are processed. A stream waiting for a message
    waits on one future, which the message, a drain signal or the idle timeout
    resolves (no task or ``asyncio.wait`` per message)."""

    def __init__(self, messages: AsyncIterator[StreamMessage], idle_timeout_s: float) -> None:
        self._timeout = idle_timeout_s if idle_timeout_s > 0 else None
        self._signals: deque[DrainSignal] = deque()
        self._arrived: deque[StreamMessage | _ReadFailed] = deque()
        self._half_closed = False
        self._waiter: asyncio.Future[bool] | None = None
        self._taken: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._reader = self._loop.create_task(self._read(messages))

    async def _read(self, messages: AsyncIterator[StreamMessage]) -> None:
        try:
            async for message in messages:
                self._arrived.append(message)
                self._wake(timed_out=False)
                while len(self._arrived) >= READ_AHEAD:
                    self._taken = self._loop.create_future()
                    await self._taken
            self._half_closed = True
        except Exception as exc:
            self._arrived.append(_ReadFailed(exc))
        self._wake(timed_out=False)

    def _wake(self, *, timed_out: bool) -> None:
        _settle(self._waiter, timed_out)

    def signal(self, signal: DrainSignal) -> None:
        """Queue a drain signal ahead of any client message."""
        self._signals.append(signal)
        self._wake(timed_out=False)

    async def get(self) -> StreamMessage | DrainSignal | None:
        """The next signal or client message; None when the client half-closed."""
        while True:
            if self._signals:
                return self._signals.popleft()
            if self._arrived:
                item = self._arrived.popleft()
                if self._taken is not None and not self._taken.done():
                    self._taken.set_result(None)
                if isinstance(item, _ReadFailed):
                    raise item.error
                return item
            if self._half_closed:
                return None
            self._waiter = waiter = self._loop.create_future()
            timer = (
                self._loop.call_later(self._timeout, _settle, waiter, True)
                if self._timeout is not None else None
            )
            try:
                timed_out = await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if timed_out:
                raise DeadlineExceeded(
                    f"stream idle for {self._timeout:g} s (LSTM_SERVE_SESSIONS__STREAM_IDLE_TIMEOUT_S); the "
                    "session state is kept for resume until its TTL"
                )

    async def get_message(self) -> StreamMessage | None:
        """The next client message, passing over signals."""
        while True:
            item = await self.get()
            if not isinstance(item, DrainSignal):
                return item

    async def close(self) -> None:
        """Stop reading the client."""
        self._reader.cancel()
        with contextlib.suppress(BaseException):
            await self._reader
