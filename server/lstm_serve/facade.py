"""The domain facade: the thin layer every API's servicer calls, free of gRPC.

It holds the use cases (:mod:`lstm_serve.predict`, :mod:`lstm_serve.streaming`), the
model queries and the lifecycle (session reaper, drain, close). Its collaborators are
built in the composition root (:mod:`lstm_serve.server`) and injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from lstm_serve import auth
from lstm_serve.admission import Admission, RateLimit
from lstm_serve.batching import Batcher
from lstm_serve.domain import ModelInfo, ModelRef, PredictInput, PredictOutput, StreamMessage, StreamReply
from lstm_serve.lanes import Lanes
from lstm_serve.metrics import Metrics
from lstm_serve.predict import PredictUseCase
from lstm_serve.repository import ModelEntry, ModelRepository, RepositoryChange
from lstm_serve.resume import ResumeTokens
from lstm_serve.sequences import SequenceRequest, SequenceResult, SequenceUseCase
from lstm_serve.session_registry import SessionRegistry
from lstm_serve.session_store import SessionStore
from lstm_serve.settings import Settings
from lstm_serve.state import now_ms
from lstm_serve.statistics import ModelStats, StatsBook
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
        stats: StatsBook,
        make_batcher: Callable[[ModelEntry], Batcher],
    ) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.store = store
        self.sessions = SessionRegistry(
            store, metrics, settings.sessions.lease_s, settings.sessions.write_back_chunks, settings.limits
        )
        self.admission = Admission(settings.limits)
        self._executor = executor
        self._batchers = batchers
        self.stats = stats
        self._make_batcher = make_batcher
        self._lanes = lanes = Lanes(repository, batchers, store, metrics)
        self._predict = PredictUseCase(lanes, self.sessions, self.admission, tokens, settings.sessions)
        self._stream = StreamUseCase(lanes, self.sessions, self.admission, tokens, settings, metrics)
        self._sequences = SequenceUseCase(lanes, self.sessions, self.admission, settings)
        self._reaper: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._retiring: dict[ModelRef, float] = {}
        """Unloaded versions and when (monotonic) their lanes may go."""
        self._repository_lock = asyncio.Lock()
        self.on_models_changed: Callable[[], Awaitable[None]] | None = None
        """Set by the composition root: refreshes health and the model gauges."""

    @property
    def draining(self) -> bool:
        """True once the drain began."""
        return self.admission.draining

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Start the batchers and the session reaper on the running loop."""
        for batcher in self._batchers.values():
            batcher.start()
        loop = asyncio.get_running_loop()
        self._reaper = loop.create_task(self._reap(), name="session-reaper")
        if self.settings.server.model_control == "poll":
            self._poller = loop.create_task(self._poll(), name="repository-poller")

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
        for task in (self._reaper, self._poller):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for lane in self._lanes:
            await lane.batcher.close()
        await self.sessions.evict_all()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sessions.reap_interval_s)
            expired = await self.store.expire(now_ms(), self.sessions.held)
            if expired:
                log.info("expired %d idle session(s)", len(expired))
            await self._retire_unloaded()

    async def _retire_unloaded(self) -> None:
        """Release the lanes of unloaded versions once their sessions had a TTL to end."""
        now = time.monotonic()
        for ref, after in list(self._retiring.items()):
            if now < after or self.sessions.bound_to(ref):
                continue
            del self._retiring[ref]
            lane = self._lanes.remove(ref)
            if lane is not None:
                await lane.batcher.close()
                log.info("released model %s version %s (unloaded)", ref.name, ref.version)

    # ---- model repository ------------------------------------------------------------
    async def load_model(self, name: str) -> RepositoryChange:
        """Load (or reload) ``name`` from the repository; see :meth:`ModelRepository.rescan`.
        Sessions of a version that did not change go on; a new version serves new work."""
        async with self._repository_lock:
            change = await asyncio.to_thread(self.repository.rescan, name)
            for entry in change.loaded + change.replaced:
                await self._serve_entry(entry)
            for entry in change.unloaded:
                self._retire(entry)
            await self._changed()
            return change

    async def unload_model(self, name: str) -> list[ModelEntry]:
        """Stop new work on every version of ``name`` at once. Sessions bound to them
        finish (streams stay attached, sessions continue until they end or expire);
        each version's runtime is released one session TTL after the unload, once no
        session of it is in use here."""
        async with self._repository_lock:
            unloaded = self.repository.unload(name)
            for entry in unloaded:
                self._retire(entry)
            await self._changed()
            return unloaded

    async def _serve_entry(self, entry: ModelEntry) -> None:
        ref = ModelRef(entry.name, entry.version)
        self._retiring.pop(ref, None)
        if not entry.ready:
            old = self._lanes.remove(ref)
        else:
            batcher = self._make_batcher(entry)
            batcher.start()
            old = self._lanes.add(entry, batcher)
        if old is not None:
            await old.batcher.close()

    def _retire(self, entry: ModelEntry) -> None:
        ref = ModelRef(entry.name, entry.version)
        self._retiring[ref] = time.monotonic() + self.settings.sessions.ttl_s
        log.info("unloaded model %s version %s: no new work; its sessions finish", ref.name, ref.version)

    async def _changed(self) -> None:
        if self.on_models_changed is not None:
            await self.on_models_changed()

    async def _poll(self) -> None:
        """``--model-control poll``: load what appeared or changed, unload what went."""
        while True:
            await asyncio.sleep(self.settings.server.poll_interval_s)
            try:
                on_disk = set(await asyncio.to_thread(self.repository.names_on_disk))
                for name in sorted(on_disk):
                    change = await self.load_model(name)
                    if change.loaded or change.replaced or change.unloaded:
                        log.info(
                            "repository poll: %s: %d new, %d reloaded, %d gone", name,
                            len(change.loaded), len(change.replaced), len(change.unloaded),
                        )
                for name in sorted(set(self.repository.entries) - on_disk):
                    if any(not e.unloaded for e in self.repository.entries[name].values()):
                        await self.unload_model(name)
            except Exception:
                log.exception("repository poll failed; trying again in %g s", self.settings.server.poll_interval_s)

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
        """Every model version the caller may use, ready or not."""
        return [self._info(entry) for entry in self.repository if auth.allowed(entry.name)]

    def model(self, ref: ModelRef) -> ModelInfo:
        """One model version, ready or not; PERMISSION_DENIED when the caller may not
        use it, NOT_FOUND when unknown."""
        auth.require_model(ref.name)
        return self._info(self.repository.find(ref.name, ref.version))

    def statistics(self, ref: ModelRef | None) -> list[tuple[ModelRef, ModelStats]]:
        """The inference totals of one model (every version when ``ref.version`` is
        empty), or of every version that has any when ``ref`` is None."""
        if ref is None:
            return [(r, stats) for r, stats in self.stats if auth.allowed(r.name)]
        auth.require_model(ref.name)
        if ref.version:
            entry = self.repository.find(ref.name, ref.version)
            versions = [entry.version]
        else:
            self.repository.find(ref.name)
            versions = self.repository.versions(ref.name)
        return [(ModelRef(ref.name, v), self.stats.of(ModelRef(ref.name, v))) for v in versions]

    # ---- inference -----------------------------------------------------------------
    async def predict(self, request: PredictInput) -> PredictOutput:
        """Run whole sequences, optionally continuing a session."""
        with self.timed(request.model):
            return await self._predict.predict(request)

    def stream(self, messages: AsyncIterator[StreamMessage]) -> AsyncGenerator[StreamReply, None]:
        """Run one StreamPredict stream."""
        return self._stream.stream(messages)

    @contextlib.contextmanager
    def stream_slot(self) -> Iterator[RateLimit]:
        """Hold a stream of the caller's against its stream limit (for APIs whose
        streams carry unary requests, such as ModelStreamInfer); the stream's
        request-rate limit."""
        with self.admission.principal_slot("stream"):
            yield self.admission.stream_rate("ModelStreamInfer request")

    async def sequence_step(self, request: SequenceRequest) -> SequenceResult:
        """Apply one request of a sequence (Triton's sequence semantics)."""
        with self.timed(request.model):
            return await self._sequences.step(request)

    @contextlib.contextmanager
    def timed(self, ref: ModelRef) -> Iterator[ModelStats]:
        """Count one inference request of ``ref`` (resolved to the version that serves
        it) as a success or a failure, with its duration, in the model's statistics.
        A request for an unknown model counts nowhere."""
        entry = self.repository.find(ref.name, ref.version)
        stats = self.stats.of(ModelRef(entry.name, entry.version))
        started = time.perf_counter()
        try:
            yield stats
        except BaseException:
            stats.fail.add(time.perf_counter() - started)
            raise
        stats.success.add(time.perf_counter() - started)
