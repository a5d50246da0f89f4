"""The inference service: the domain logic behind every RPC, free of gRPC.

:class:`InferenceService` validates requests against the model's manifest, finds or
creates sessions, sends steps through the model's :class:`~lstm_serve.batching.Batcher`
and assembles results. :meth:`InferenceService.stream` runs the StreamPredict state
machine documented in ``protos/lstmserve/v1/inference.proto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from lstm_serve.audio import AudioFrontend, check_audio_format
from lstm_serve.batching import Batcher
from lstm_serve.domain import (
    Chunk,
    ChunkResult,
    ModelRef,
    PredictInput,
    PredictOutput,
    StreamConfig,
    StreamEnd,
    StreamFinal,
    StreamMessage,
    StreamReply,
    StreamStarted,
)
from lstm_serve.errors import (
    DeadlineExceeded,
    Draining,
    InvalidInput,
    Overloaded,
    PreconditionFailed,
    echo,
)
from lstm_serve.events import Event, KeywordSpotter
from lstm_serve.manifest import LogMelFrontend, Manifest
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry, ModelRepository
from lstm_serve.runtime import ModelRuntime
from lstm_serve.sessions import InMemorySessionStore, Session, SessionManager
from lstm_serve.settings import Settings

log = logging.getLogger(__name__)

REALTIME_ALLOWANCE_S = 2.0

PREDICT_RUNS_IN_FLIGHT = 8
"""Runs of one batched Predict that wait in the batcher at once: enough to fill its
calls, few enough that one large request never fills the shared queue."""




def check_frames(frames: np.ndarray, manifest: Manifest, field: str, max_frames: int) -> None:
    """Validate a ``[frames, feature_dim]`` array against the manifest."""
    if frames.ndim != 2:
        raise InvalidInput(f"{field}: expected shape [frames, {manifest.input.feature_dim}], got {list(frames.shape)}")
    if frames.shape[1] != manifest.input.feature_dim:
        raise InvalidInput(
            f"{field}: model '{manifest.name}' expects feature_dim {manifest.input.feature_dim}, "
            f"got {frames.shape[1]}"
        )
    if frames.shape[0] == 0:
        raise InvalidInput(f"{field}: empty; send at least one frame")
    if frames.shape[0] > max_frames:
        raise Overloaded(
            f"{field}: {frames.shape[0]} frames exceed the limit of {max_frames} per chunk or "
            "sequence (LSTM_SERVE_SESSIONS__MAX_CHUNK_FRAMES); split it"
        )
    if not np.isfinite(frames).all():
        bad = np.argwhere(~np.isfinite(frames))[0]
        raise InvalidInput(f"{field}: non-finite value (NaN or Inf) at frame {bad[0]}, feature {bad[1]}")


def check_rows(request: PredictInput, manifest: Manifest, max_frames: int) -> None:
    """Validate a Predict batch against the manifest, in whole-array operations (a
    legal batch may hold a hundred thousand rows)."""
    features, lengths = request.features, request.lengths

    def field(i: int) -> str:
        return f"features[{i}]" if request.batched else "features"

    if features.shape[2] != manifest.input.feature_dim:
        raise InvalidInput(
            f"features: model '{manifest.name}' expects feature_dim {manifest.input.feature_dim}, "
            f"got {features.shape[2]}"
        )
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        raise InvalidInput(f"{field(int(empty[0]))}: empty (length 0); send at least one frame")
    longest = int(np.argmax(lengths))
    if lengths[longest] > max_frames:
        raise Overloaded(
            f"{field(longest)}: {lengths[longest]} frames exceed the limit of {max_frames} per chunk or "
            "sequence (LSTM_SERVE_SESSIONS__MAX_CHUNK_FRAMES); split it"
        )
    finite = np.isfinite(features).all(axis=2)
    if not finite.all():
        bad = np.argwhere(~finite & (np.arange(features.shape[1]) < lengths[:, np.newaxis]))
        if bad.size:
            row, frame = (int(v) for v in bad[0])
            feature = int(np.flatnonzero(~np.isfinite(features[row, frame]))[0])
            raise InvalidInput(
                f"{field(row)}: non-finite value (NaN or Inf) at frame {frame}, feature {feature}"
            )


class InferenceService:
    """Domain operations behind the gRPC API."""

    def __init__(self, repository: ModelRepository, settings: Settings, metrics: Metrics) -> None:
        self.repository = repository
        self.settings = settings
        self.metrics = metrics
        self.store = InMemorySessionStore(settings.sessions.ttl_s, settings.sessions.max_sessions, metrics)
        self.sessions = SessionManager(self.store, metrics)
        self.draining = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onnxruntime")
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Create the batchers and the session reaper on the running loop."""
        batching = self.settings.batching
        for entry in self.repository:
            if entry.runtime is None:
                continue
            enabled = batching.enabled and entry.name not in batching.disabled_models
            batcher = Batcher(
                entry.runtime,
                self._executor,
                self.metrics,
                max_batch_size=batching.max_batch_size if enabled else 1,
                max_delay_s=batching.max_delay_ms / 1000 if enabled else 0.0,
                max_queue=batching.max_queue,
            )
            batcher.start()
            self._batchers[(entry.name, entry.version)] = batcher
        self._reaper = asyncio.get_running_loop().create_task(self._reap(), name="session-reaper")

    def begin_drain(self) -> None:
        """Refuse new sessions and calls from now on; in-flight work continues."""
        self.draining = True

    async def close(self) -> None:
        """Stop the reaper and batchers and drop all sessions."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for batcher in self._batchers.values():
            await batcher.close()
        self.store.evict_all()
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sessions.reap_interval_s)
            expired = self.store.expire(time.monotonic())
            if expired:
                log.info("expired %d idle session(s)", len(expired))

    @contextlib.contextmanager
    def _admitted(self) -> Iterator[None]:
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

    # ---- models --------------------------------------------------------------------
    def list_models(self) -> list[tuple[ModelEntry, list[str]]]:
        """Every model version, ready or not, with all versions of its model."""
        return [(entry, self.repository.versions(entry.name)) for entry in self.repository]

    def model(self, ref: ModelRef) -> tuple[ModelEntry, list[str]]:
        """One model version (ready or not) and all versions of its model; NOT_FOUND when unknown."""
        entry = self.repository.find(ref.name, ref.version)
        return entry, self.repository.versions(entry.name)

    def _runtime(self, ref: ModelRef) -> tuple[ModelRuntime, Batcher]:
        entry, runtime = self.repository.resolve(ref.name, ref.version)
        return runtime, self._batchers[(entry.name, entry.version)]

    # ---- Predict -------------------------------------------------------------------
    async def predict(self, request: PredictInput) -> PredictOutput:
        """Run whole sequences, optionally continuing a session."""
        with self._admitted():
            return await self._predict(request)

    async def _predict(self, request: PredictInput) -> PredictOutput:
        runtime, batcher = self._runtime(request.model)
        manifest = runtime.manifest
        ref = ModelRef(manifest.name, manifest.version)
        if manifest.input_kind == "audio":
            raise PreconditionFailed(
                f"model '{manifest.name}' takes audio; send it with StreamPredict "
                "(config.input_kind AUDIO)"
            )
        limits = self.settings.sessions
        batch, max_frames = request.features.shape[:2]
        if batch * max_frames > limits.max_predict_frames:
            raise Overloaded(
                f"features: {batch} x {max_frames} frames exceed the limit of "
                f"{limits.max_predict_frames} frames per call "
                "(LSTM_SERVE_SESSIONS__MAX_PREDICT_FRAMES); split the batch"
            )
        check_rows(request, manifest, limits.max_chunk_frames)
        if request.session_id:
            return await self._predict_session(request, runtime, batcher, ref)
        states = self._initial_states(request, runtime)
        if batch == 1:
            outputs, final = await batcher.submit_rows(
                request.features[:, : int(request.lengths[0])], states
            )
        else:
            outputs, final = await self._predict_runs(request, runtime, batcher, states)
        lengths = request.lengths.tolist() if manifest.output.head == "per_frame" else [1] * batch
        final_states = (
            {spec.name: st for spec, st in zip(manifest.states, final, strict=True)}
            if request.return_state
            else {}
        )
        return PredictOutput(ref, manifest.output.head, outputs, lengths, request.batched, final_states)

    async def _predict_runs(
        self, request: PredictInput, runtime: ModelRuntime, batcher: Batcher, states: list[np.ndarray]
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run a batch as runs of same-length rows, at most ``max_batch_size`` each, and
        put the results back in request order."""
        manifest = runtime.manifest
        lengths = request.lengths
        batch = request.batch
        order = np.argsort(lengths, kind="stable")
        edges = [0, *(np.flatnonzero(np.diff(lengths[order])) + 1).tolist(), batch]
        size = batcher.max_batch_size
        runs = [order[i : min(i + size, b)] for a, b in itertools.pairwise(edges) for i in range(a, b, size)]
        dim = manifest.output.dim
        per_frame = manifest.output.head == "per_frame"
        outputs = np.zeros((batch, int(lengths.max()), dim) if per_frame else (batch, dim), np.float32)
        final = [np.zeros_like(s) for s in states]
        pending = iter(runs)

        async def worker() -> None:
            for rows in pending:
                frames = int(lengths[rows[0]])
                out, new_states = await batcher.submit_rows(
                    request.features[rows, :frames], [s[:, rows] for s in states]
                )
                if per_frame:
                    outputs[rows, :frames] = out
                else:
                    outputs[rows] = out
                for target, new in zip(final, new_states, strict=True):
                    target[:, rows] = new

        async with asyncio.TaskGroup() as group:
            for _ in range(min(PREDICT_RUNS_IN_FLIGHT, len(runs))):
                group.create_task(worker())
        return outputs, final

    def _initial_states(self, request: PredictInput, runtime: ModelRuntime) -> list[np.ndarray]:
        zeros = runtime.zero_states(request.batch)
        if not request.initial_states:
            return zeros
        specs = runtime.manifest.states
        unknown = sorted(set(request.initial_states) - {s.name for s in specs})
        if unknown:
            raise InvalidInput(
                f"initial_states: unknown state(s) {echo(unknown)}; model states are {[s.name for s in specs]}"
            )
        states = []
        for spec, zero in zip(specs, zeros, strict=True):
            given = request.initial_states.get(spec.name)
            if given is None:
                states.append(zero)
                continue
            if given.shape != zero.shape:
                raise InvalidInput(
                    f"initial_states['{spec.name}']: expected shape {list(zero.shape)} "
                    f"[layers, batch, hidden], got {list(given.shape)}"
                )
            if not np.isfinite(given).all():
                raise InvalidInput(f"initial_states['{spec.name}']: contains NaN or Inf")
            states.append(np.ascontiguousarray(given, dtype=np.float32))
        return states

    async def _predict_session(
        self, request: PredictInput, runtime: ModelRuntime, batcher: Batcher, ref: ModelRef
    ) -> PredictOutput:
        manifest = runtime.manifest
        if request.batch != 1:
            raise InvalidInput(
                f"session_id: a session continues one sequence; got a batch of {request.batch}"
            )
        if request.initial_states:
            raise InvalidInput("initial_states: not allowed with session_id; the session holds the state")
        if not manifest.causal:
            raise PreconditionFailed(
                f"session_id: model '{manifest.name}' is not causal (bidirectional); it serves "
                "whole sequences only, without sessions"
            )
        frames = request.features[:, : int(request.lengths[0])]
        session, _ = self.sessions.acquire(
            request.session_id, ref, request.model.version, runtime.zero_states(1),
            must_exist=request.must_exist, stream=False,
        )
        try:
            async with session.lock:
                offset = session.frames
                output, states = await batcher.submit_rows(frames, session.states)
                session.states = states
                session.frames += frames.shape[1]
                final_states = (
                    {s.name: st for s, st in zip(manifest.states, states, strict=True)}
                    if request.return_state
                    else {}
                )
        finally:
            self.sessions.release(session, stream=False, delete=request.end_session)
        lengths = [frames.shape[1]] if manifest.output.head == "per_frame" else [1]
        return PredictOutput(
            ref, manifest.output.head, output, lengths, request.batched, final_states, session.id, offset
        )

    # ---- StreamPredict -------------------------------------------------------------
    async def stream(self, messages: AsyncIterator[StreamMessage]) -> AsyncGenerator[StreamReply, None]:
        """Run one StreamPredict stream: config, chunks, end (see the proto)."""
        iterator = messages.__aiter__()
        first = await self._next_message(iterator)
        if first is None:
            return
        if not isinstance(first, StreamConfig):
            raise InvalidInput(f"the first stream message must be config, got {type(first).__name__.lower()}")
        with self._admitted():
            stream = await self._open_stream(first)
            try:
                yield stream.started
                while True:
                    message = await self._next_message(iterator)
                    if message is None:
                        return
                    if isinstance(message, StreamConfig):
                        raise InvalidInput("config: sent twice; config must be the first message only")
                    if isinstance(message, StreamEnd):
                        for reply in await stream.end(message.keep_session):
                            yield reply
                        if await self._next_message(iterator) is not None:
                            raise InvalidInput("a message arrived after end; end must be the last message")
                        return
                    yield await stream.process(message, time.perf_counter())
            finally:
                stream.close()

    async def _next_message(self, iterator: AsyncIterator[StreamMessage]) -> StreamMessage | None:
        timeout = self.settings.sessions.stream_idle_timeout_s
        try:
            if timeout > 0:
                return await asyncio.wait_for(anext(iterator), timeout)
            return await anext(iterator)
        except StopAsyncIteration:
            return None
        except TimeoutError:
            raise DeadlineExceeded(
                f"stream idle for {timeout:g} s (LSTM_SERVE_SESSIONS__STREAM_IDLE_TIMEOUT_S); the "
                "session state is kept for resume until its TTL"
            ) from None

    async def _open_stream(self, config: StreamConfig) -> _Stream:
        runtime, batcher = self._runtime(config.model)
        manifest = runtime.manifest
        if not manifest.causal:
            raise PreconditionFailed(
                f"model '{manifest.name}' is not causal (bidirectional) and cannot stream; call "
                "Predict with the whole sequence"
            )
        kind = config.input_kind or manifest.input_kind
        if kind != manifest.input_kind:
            raise InvalidInput(
                f"config.input_kind: model '{manifest.name}' takes {manifest.input_kind}, not {kind}"
            )
        audio_format = check_audio_format(config.audio) if kind == "audio" else None
        ref = ModelRef(manifest.name, manifest.version)
        session, resumed = self.sessions.acquire(
            config.session_id, ref, config.model.version, runtime.zero_states(1),
            must_exist=config.must_exist, stream=True,
        )
        try:
            if audio_format is not None and session.frontend is None:
                assert isinstance(manifest.frontend, LogMelFrontend)
                # Designing a resampling filter takes milliseconds: not on the loop.
                session.frontend = await asyncio.to_thread(AudioFrontend, manifest.frontend, audio_format)
            return _Stream(self, session, resumed, config, runtime, batcher, audio_format)
        except BaseException:
            self.sessions.release(session, stream=True)
            raise


class _Stream:
    """One open StreamPredict stream attached to a session."""

    def __init__(
        self,
        service: InferenceService,
        session: Session,
        resumed: bool,
        config: StreamConfig,
        runtime: ModelRuntime,
        batcher: Batcher,
        audio_format: object,
    ) -> None:
        self._service = service
        self._session = session
        self._batcher = batcher
        self._manifest = manifest = runtime.manifest
        self._ended = False
        self._chunks = 0
        self._events: list[Event] = []
        self._audio_seconds = 0.0
        self._wall_start: float | None = None
        self._return_state = config.return_state
        is_audio = manifest.input_kind == "audio"
        self._frame_outputs = config.frame_outputs if config.frame_outputs is not None else not is_audio
        self._frontend: AudioFrontend | None = None
        if is_audio:
            assert isinstance(manifest.frontend, LogMelFrontend)
            assert audio_format is not None
            if session.frontend.format != audio_format:
                raise PreconditionFailed(
                    f"config.audio: session '{echo(session.id)}' was started with {session.frontend.format}; "
                    "a resumed session keeps its audio format"
                )
            self._frontend = session.frontend
        self._spotter: KeywordSpotter | None = None
        post = manifest.output.postprocess
        if post is not None and (config.events is None or config.events):
            if session.spotter is None:
                session.spotter = KeywordSpotter(post, manifest.output.labels, manifest.input.frame_rate_hz)
            self._spotter = session.spotter
        labels = (manifest.name, manifest.version)
        metrics = service.metrics
        self._chunk_latency = metrics.chunk_latency.labels(*labels)
        self._lag = metrics.stream_lag.labels(*labels)
        self._rtf = metrics.realtime_factor.labels(*labels)
        self._audio_counter = metrics.audio_seconds.labels(*labels)
        settings = service.settings
        self._max_frames = settings.sessions.max_chunk_frames
        self._max_chunk_s = settings.audio.max_chunk_ms / 1000
        self._max_rtf = settings.audio.max_realtime_factor
        self.started = StreamStarted(
            session_id=session.id,
            model=session.model,
            frame_rate_hz=manifest.input.frame_rate_hz,
            next_sequence_number=session.next_sequence_number,
            frame_offset=session.frames,
            resumed=resumed,
        )

    def close(self) -> None:
        """Detach the session when the stream ends without ``end``; state is kept."""
        if not self._ended:
            self._ended = True
            self._service.sessions.release(self._session, stream=True)

    async def _features_of(self, chunk: Chunk) -> np.ndarray:
        manifest = self._manifest
        if self._frontend is None:
            if chunk.features is None:
                raise InvalidInput(
                    f"chunk.audio: model '{manifest.name}' takes feature frames; send chunk.features"
                )
            check_frames(chunk.features, manifest, "chunk.features", self._max_frames)
            return chunk.features
        if chunk.audio is None:
            raise InvalidInput(
                f"chunk.features: model '{manifest.name}' takes audio; send chunk.audio bytes"
            )
        if not chunk.audio:
            raise InvalidInput("chunk.audio: empty; send at least one sample")
        seconds = self._frontend.seconds(chunk.audio)
        if seconds > self._max_chunk_s:
            raise Overloaded(
                f"chunk.audio: {seconds * 1000:.0f} ms exceeds the limit of "
                f"{self._max_chunk_s * 1000:.0f} ms per chunk (LSTM_SERVE_AUDIO__MAX_CHUNK_MS); split it"
            )
        now = time.monotonic()
        if self._wall_start is None:
            self._wall_start = now
        if self._max_rtf > 0:
            allowed = REALTIME_ALLOWANCE_S + self._max_rtf * (now - self._wall_start)
            if self._audio_seconds + seconds > allowed:
                raise Overloaded(
                    f"chunk.audio: audio arrives faster than {self._max_rtf:g}x real time "
                    "(LSTM_SERVE_AUDIO__MAX_REALTIME_FACTOR); pace the stream"
                )
        frames = await asyncio.to_thread(self._frontend.accept, chunk.audio)
        self._audio_seconds += seconds
        self._audio_counter.inc(seconds)
        return frames

    async def _run(self, frames: np.ndarray) -> np.ndarray:
        session = self._session
        output, states = await self._batcher.submit(frames, session.states)
        session.states = states
        session.frames += frames.shape[0]
        return output

    def _detect(self, outputs: np.ndarray | None, flush: bool = False) -> list[Event]:
        if self._spotter is None:
            return []
        events = self._spotter.update(outputs) if outputs is not None and len(outputs) else []
        if flush:
            events = events + self._spotter.flush()
        self._events.extend(e for e in events if e.is_final)
        return events

    def _as_rows(self, output: np.ndarray) -> np.ndarray:
        return output if self._manifest.output.head == "per_frame" else output[np.newaxis]

    async def process(self, chunk: Chunk, arrived: float) -> ChunkResult:
        """Run one chunk and answer it."""
        session = self._session
        expected = session.next_sequence_number
        if chunk.sequence_number < expected:
            return ChunkResult(chunk.sequence_number, session.frames, 0, duplicate=True)
        if chunk.sequence_number > expected:
            raise PreconditionFailed(
                f"chunk.sequence_number: expected {expected}, got {chunk.sequence_number}; the "
                f"session is unchanged, resume from {expected}"
            )
        started = time.perf_counter()
        async with session.lock:
            if session.pending is not None and session.pending[0] == chunk.sequence_number:
                frames = session.pending[1]
            else:
                frames = await self._features_of(chunk)
                session.pending = (chunk.sequence_number, frames) if self._frontend is not None else None
            offset = session.frames
            outputs: np.ndarray | None = None
            if frames.shape[0]:
                outputs = self._as_rows(await self._run(frames))
            session.pending = None
            session.next_sequence_number += 1
            session.touch()
        self._chunks += 1
        events = self._detect(outputs)
        self._observe(chunk, arrived, started)
        return ChunkResult(
            chunk.sequence_number,
            offset,
            int(frames.shape[0]),
            outputs if self._frame_outputs else None,
            events,
        )

    def _observe(self, chunk: Chunk, arrived: float, started: float) -> None:
        now = time.perf_counter()
        self._chunk_latency.observe(now - arrived)
        if self._frontend is not None and chunk.audio and self._wall_start is not None:
            seconds = self._frontend.seconds(chunk.audio)
            self._rtf.observe((now - started) / seconds)
            behind = (time.monotonic() - self._wall_start) - self._audio_seconds
            self._lag.observe(max(0.0, behind))

    async def end(self, keep_session: bool) -> list[ChunkResult | StreamFinal]:
        """Close the stream: flush buffered audio and delete the session, or keep both.

        With ``keep_session`` the stream is only paused: audio still buffered in the
        front-end and an open keyword detection stay in the session, and a resumed
        stream continues exactly where this one stopped. Otherwise the buffered audio is
        flushed through the model (the flush result) and the session is deleted.
        """
        session = self._session
        replies: list[ChunkResult | StreamFinal] = []
        outputs: np.ndarray | None = None
        offset = session.frames
        events: list[Event] = []
        if not keep_session:
            if self._frontend is not None:
                async with session.lock:
                    tail = self._frontend.flush()
                    if tail.shape[0]:
                        outputs = self._as_rows(await self._run(tail))
            events = self._detect(outputs, flush=True)
        frames = session.frames - offset
        if frames or events:
            replies.append(
                ChunkResult(
                    session.next_sequence_number, offset, frames,
                    outputs if self._frame_outputs else None, events, flush=True,
                )
            )
        states = (
            {s.name: st for s, st in zip(self._manifest.states, session.states, strict=True)}
            if self._return_state
            else {}
        )
        final = StreamFinal(
            session.id, session.frames, self._chunks, list(self._events), states, self._audio_seconds
        )
        self._ended = True
        self._service.sessions.release(session, stream=True, delete=not keep_session)
        replies.append(final)
        return replies
