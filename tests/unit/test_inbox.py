"""The stream inbox: drain signals go first, and taking one leaves no stale wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from lstm_serve.domain import StreamEnd
from lstm_serve.inbox import READ_AHEAD, DrainSignal, Inbox


async def _late_messages() -> AsyncIterator[StreamEnd]:
    await asyncio.sleep(0.05)
    yield StreamEnd()


def test_a_signal_taken_at_once_does_not_wake_the_next_wait() -> None:
    async def scenario() -> list[object]:
        inbox = Inbox(_late_messages(), idle_timeout_s=0)
        inbox.signal(DrainSignal(0.0, closing=False))
        got: list[object] = [await inbox.get(), await inbox.get(), await inbox.get()]
        await inbox.close()
        return got

    first, second, third = asyncio.run(scenario())
    assert isinstance(first, DrainSignal)
    assert isinstance(second, StreamEnd)
    assert third is None


async def _counted(read: list[int], count: int) -> AsyncIterator[StreamEnd]:
    for i in range(count):
        read.append(i)
        yield StreamEnd()


def test_the_reader_takes_the_client_messages_at_most_read_ahead() -> None:
    """gRPC's flow control must keep holding a client that sends faster than its
    chunks are processed: the inbox never buffers more than READ_AHEAD messages."""
    async def scenario() -> list[int]:
        read: list[int] = []
        inbox = Inbox(_counted(read, 10), idle_timeout_s=0)
        for _ in range(5):
            await asyncio.sleep(0)
        before_taking = len(read)
        await inbox.get()
        for _ in range(5):
            await asyncio.sleep(0)
        after_one = len(read)
        await inbox.close()
        return [before_taking, after_one]

    assert asyncio.run(scenario()) == [READ_AHEAD, READ_AHEAD + 1]


async def _failing() -> AsyncIterator[StreamEnd]:
    yield StreamEnd()
    raise ValueError("bad request")


def test_a_read_that_fails_raises_after_the_messages_before_it() -> None:
    async def scenario() -> tuple[object, BaseException | None]:
        inbox = Inbox(_failing(), idle_timeout_s=0)
        first = await inbox.get()
        try:
            await inbox.get()
        except ValueError as exc:
            return first, exc
        finally:
            await inbox.close()
        return first, None

    first, error = asyncio.run(scenario())
    assert isinstance(first, StreamEnd)
    assert isinstance(error, ValueError) and str(error) == "bad request"


async def _silent() -> AsyncIterator[StreamEnd]:
    await asyncio.Event().wait()
    yield StreamEnd()


def test_an_idle_stream_times_out_and_a_signal_still_wakes_a_waiting_one() -> None:
    from lstm_serve.errors import DeadlineExceeded

    async def scenario() -> tuple[str, object]:
        inbox = Inbox(_silent(), idle_timeout_s=0.05)
        try:
            await inbox.get()
        except DeadlineExceeded as exc:
            timed_out = str(exc)
        woken = Inbox(_silent(), idle_timeout_s=30)
        asyncio.get_running_loop().call_later(0.01, woken.signal, DrainSignal(0.0, closing=True))
        signal = await woken.get()
        await inbox.close()
        await woken.close()
        return timed_out, signal

    timed_out, signal = asyncio.run(scenario())
    assert "STREAM_IDLE_TIMEOUT_S" in timed_out
    assert isinstance(signal, DrainSignal) and signal.closing
