"""The stream inbox: drain signals go first, and taking one leaves no stale wake-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from lstm_serve.domain import StreamEnd
from lstm_serve.streaming import _DrainSignal, _Inbox


async def _late_messages() -> AsyncIterator[StreamEnd]:
    await asyncio.sleep(0.05)
    yield StreamEnd()


def test_a_signal_taken_at_once_does_not_wake_the_next_wait() -> None:
    async def scenario() -> list[object]:
        inbox = _Inbox(_late_messages(), idle_timeout_s=0)
        inbox.signal(_DrainSignal(0.0, closing=False))
        got: list[object] = [await inbox.get(), await inbox.get(), await inbox.get()]
        await inbox.close()
        return got

    first, second, third = asyncio.run(scenario())
    assert isinstance(first, _DrainSignal)
    assert isinstance(second, StreamEnd)
    assert third is None
