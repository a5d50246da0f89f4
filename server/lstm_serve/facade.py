"""The domain facade: the thin layer every API's servicer calls, free of gRPC.

It holds the use cases (:mod:`lstm_serve.predict`, :mod:`lstm_serve.streaming`), the
model queries and the lifecycle (session reaper, drain, close). Its collaborators are
built in the composition root (:mod:`lstm_serve.server`) and injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from lstm_serve.admission import Admission
from lstm_serve.batching import Batcher
from lstm_serve.domain import ModelInfo, ModelRef, PredictInput, PredictOutput, StreamMessage, StreamReply
from lstm_serve.lanes import Lanes
from lstm_serve.metrics import Metrics
from lstm_serve.predict import PredictUseCase
from lstm_serve.repository import ModelEntry, ModelRepository
from lstm_serve.resume import ResumeTokens
from lstm_serve.sessions import SessionRegistry, SessionStore
from lstm_serve.settings import Settings
from lstm_serve.state import now_ms
from lstm_serve.streaming import StreamUseCase

log = logging.getLogger(__name__)


class DomainFacade:
    """Domain operations behind every API."""

    def __init__(
        self,
        repository: ModelRepository,
        settings: Settings,
        metrics: Metrics,
        *,
        store: SessionStore,
        executor: ThreadPoolExecutor,
        batchers: dict[ModelRef, Batcher],
        tokens: ResumeTokens,
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.sessions = SessionRegistry(
            store, metrics, settings.sessions.lease_s, settings.sessions.write_back_chunks
        )
        self.admission = Admission()
        self._executor = executor
        self._batchers = batchers
        lanes = Lanes(repository, batchers, store, metrics)
        self._predict = PredictUseCase(lanes, self.sessions, self.admission, tokens, settings.sessions)
        self._stream = StreamUseCase(lanes, self.sessions, self.admission, tokens, settings, metrics)
        self._reaper: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        """True once the drain began."""
        return self.admission.draining

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Start the batchers and the session reaper on the running loop."""
        for batcher in self._batchers.values():
            batcher.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="session-reaper")

    def begin_drain(self, grace_s: float) -> None:
        """Refuse new sessions and calls from now on; in-flight work continues, and
        every open stream is told, at once, to move within ``grace_s``."""
        self.admission.begin_drain()
        self._stream.announce_drain(grace_s)

    def close_open_streams(self) -> int:
        """The grace is over: open streams get a last token, then UNAVAILABLE."""
        return self._stream.close_open_streams()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no call is in flight, at most ``timeout`` seconds; True if idle."""
        return await self.admission.wait_idle(timeout)

    async def close(self) -> None:
        """Stop the reaper and batchers; forget live handles (states stay in the store)."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for batcher in self._batchers.values():
            await batcher.close()
        await self.sessions.evict_all()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sessions.reap_interval_s)
            expired = await self.store.expire(now_ms(), self.sessions.held)
            if expired:
                log.info("expired %d idle session(s)", len(expired))

    # ---- models --------------------------------------------------------------------
    def _info(self, entry: ModelEntry) -> ModelInfo:
        return ModelInfo(
            name=entry.name,
            version=entry.version,
            ready=entry.ready,
            error=entry.error,
            manifest=entry.manifest,
            providers=tuple(entry.runtime.providers) if entry.runtime is not None else (),
            versions=tuple(self.repository.versions(entry.name)),
        )

    def list_models(self) -> list[ModelInfo]:
        """Every model version, ready or not."""
        return [self._info(entry) for entry in self.repository]

    def model(self, ref: ModelRef) -> ModelInfo:
        """One model version, ready or not; NOT_FOUND when unknown."""
        return self._info(self.repository.find(ref.name, ref.version))

    # ---- inference -----------------------------------------------------------------
    async def predict(self, request: PredictInput) -> PredictOutput:
        """Run whole sequences, optionally continuing a session."""
        return await self._predict.predict(request)

    def stream(self, messages: AsyncIterator[StreamMessage]) -> AsyncGenerator[StreamReply, None]:
        """Run one StreamPredict stream."""
        return self._stream.stream(messages)
