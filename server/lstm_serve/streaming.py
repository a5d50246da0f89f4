"""The StreamPredict use case: the stream protocol (config, chunks, end) over the
session step. The state machine is documented in ``protos/lstmserve/v1/inference.proto``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator

from lstm_serve.admission import Admission, RateLimit
from lstm_serve.audio import check_audio_format
from lstm_serve.domain import (
    Chunk,
    ChunkResult,
    StreamConfig,
    StreamDraining,
    StreamEnd,
    StreamFinal,
    StreamMessage,
    StreamReply,
    StreamStarted,
)
from lstm_serve.errors import (
    Draining,
    InvalidInput,
    Overloaded,
    PreconditionFailed,
    StoreUnavailable,
)
from lstm_serve.events import Event
from lstm_serve.inbox import DrainSignal, Inbox
from lstm_serve.lanes import Lane, Lanes
from lstm_serve.metrics import Metrics
from lstm_serve.predict import check_frames
from lstm_serve.resume import ResumeTokens
from lstm_serve.session_registry import SessionRegistry
from lstm_serve.sessions import LiveSession
from lstm_serve.settings import Settings
from lstm_serve.step import StepOutput, attach_front_end

REALTIME_ALLOWANCE_S = 2.0
"""Audio a stream may send ahead of real time before the rate limit applies."""


class StreamUseCase:
    """Runs StreamPredict streams."""

    def __init__(
        self,
        lanes: Lanes,
        sessions: SessionRegistry,
        admission: Admission,
        tokens: ResumeTokens,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._lanes = lanes
        self._tokens = tokens
        self._sessions = sessions
        self._admission = admission
        self._settings = settings
        self._metrics = metrics
        self._open_streams: dict[_Stream, Inbox] = {}
        self._drain: DrainSignal | None = None

    async def stream(self, messages: AsyncIterator[StreamMessage]) -> AsyncGenerator[StreamReply, None]:
        """Run one stream: config, chunks, end (see the proto)."""
        inbox = Inbox(messages.__aiter__(), self._settings.sessions.stream_idle_timeout_s)
        try:
            first = await inbox.get()
            if first is None:
                return
            if not isinstance(first, StreamConfig):
                raise InvalidInput(f"the first stream message must be config, got {type(first).__name__.lower()}")
            with self._admission.admitted("stream"):
                stream = await self._open(first)
                self._open_streams[stream] = inbox
                try:
                    yield stream.started
                    if self._drain is not None:
                        inbox.signal(self._drain)
                    async for reply in self._serve(stream, inbox):
                        yield reply
                finally:
                    del self._open_streams[stream]
                    await stream.close()
        finally:
            await inbox.close()

    async def _serve(self, stream: _Stream, inbox: Inbox) -> AsyncGenerator[StreamReply, None]:
        while True:
            message = await inbox.get()
            if message is None:
                return
            if isinstance(message, DrainSignal):
                yield await stream.draining(message)
                if message.closing:
                    raise Draining(
                        "server is shutting down and the drain grace is over; resume the session on "
                        "another replica from the token in the last draining message"
                    )
                continue
            if isinstance(message, StreamConfig):
                raise InvalidInput("config: sent twice; config must be the first message only")
            if isinstance(message, StreamEnd):
                for reply in await stream.end(message.keep_session):
                    yield reply
                if await inbox.get_message() is not None:
                    raise InvalidInput("a message arrived after end; end must be the last message")
                return
            yield await stream.process(message, time.perf_counter())

    def announce_drain(self, grace_s: float) -> None:
        """Tell every open stream, at once, that the server drains within ``grace_s``."""
        self._drain = DrainSignal(time.monotonic() + grace_s, closing=False)
        for inbox in self._open_streams.values():
            inbox.signal(self._drain)

    def close_open_streams(self) -> int:
        """The grace is over: each open stream gets a last token, then UNAVAILABLE."""
        closing = DrainSignal(time.monotonic(), closing=True)
        for inbox in self._open_streams.values():
            inbox.signal(closing)
        return len(self._open_streams)

    async def _open(self, config: StreamConfig) -> _Stream:
        lane = self._lanes.resolve(config.model)
        manifest = lane.manifest
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
        restore = self._tokens.resume(config.resume_token, config.session_id, lane, "config.")
        if config.token_every:
            self._tokens.require("config.token_every")
        live, resumed = await self._sessions.open(
            restore.session_id if restore is not None else config.session_id, lane.fresh_state,
            requested_version=config.model.version,
            mode="continue" if config.must_exist else "create_or_continue", stream=True, restore=restore,
            model=lane.ref,
        )
        try:
            lane = self._lanes.bound(live.state)
            await attach_front_end(live, lane.manifest, audio_format, config.events is None or config.events,
                                   "config.audio")
            return _Stream(
                self._sessions, self._tokens, live, resumed, config, lane, self._settings, self._metrics,
                self._admission.stream_rate("chunk"),
            )
        except BaseException:
            await self._sessions.close(live, stream=True)
            raise


class _Stream:
    """One open stream attached to a session."""

    def __init__(
        self,
        sessions: SessionRegistry,
        tokens: ResumeTokens,
        live: LiveSession,
        resumed: bool,
        config: StreamConfig,
        lane: Lane,
        settings: Settings,
        metrics: Metrics,
        rate: RateLimit,
    ) -> None:
        self._sessions = sessions
        self._tokens = tokens
        self._rate = rate
        self._token_every = config.token_every
        self._live = live
        self._lane = lane
        self._manifest = manifest = lane.manifest
        self._ended = False
        self._chunks = 0
        self._events: list[Event] = []
        self._audio_seconds = 0.0
        self._wall_start: float | None = None
        self._return_state = config.return_state
        is_audio = manifest.input_kind == "audio"
        self._frame_outputs = config.frame_outputs if config.frame_outputs is not None else not is_audio
        labels = (manifest.name, manifest.version)
        self._chunk_latency = metrics.chunk_latency.labels(*labels)
        self._lag = metrics.stream_lag.labels(*labels)
        self._rtf = metrics.realtime_factor.labels(*labels)
        self._audio_counter = metrics.audio_seconds.labels(*labels)
        self._handoffs = metrics.draining_handoffs
        self._max_frames = settings.sessions.max_chunk_frames
        self._max_chunk_s = settings.audio.max_chunk_ms / 1000
        self._max_rtf = settings.audio.max_realtime_factor
        state = live.state
        self.started = StreamStarted(
            session_id=live.id,
            model=state.model,
            frame_rate_hz=manifest.input.frame_rate_hz,
            next_sequence_number=state.next_sequence_number,
            frame_offset=state.frame_offset,
            resumed=resumed,
            resume_token=tokens.seal(state, lane, "config.token_every") if config.token_every else b"",
        )

    async def close(self) -> None:
        """Detach the session when the stream ends without ``end``; state is kept."""
        if not self._ended:
            self._ended = True
            await self._sessions.close(self._live, stream=True)

    def _admit_audio(self, audio: bytes | None) -> float:
        """Check an audio chunk against the limits; its duration in seconds."""
        manifest = self._manifest
        if audio is None:
            raise InvalidInput(f"chunk.features: model '{manifest.name}' takes audio; send chunk.audio bytes")
        if not audio:
            raise InvalidInput("chunk.audio: empty; send at least one sample")
        assert self._live.audio is not None
        seconds = self._live.audio.seconds(audio)
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
        return seconds

    async def process(self, chunk: Chunk, arrived: float) -> ChunkResult:
        """Run one chunk and answer it."""
        live, step = self._live, self._lane.step
        if chunk.sequence_number < live.state.next_sequence_number:
            return ChunkResult(chunk.sequence_number, live.state.frame_offset, 0, duplicate=True)
        self._rate.take()
        started = time.perf_counter()
        seconds = 0.0
        if self._live.audio is not None:
            seconds = self._admit_audio(chunk.audio)
            out = await step.run(live, sequence_number=chunk.sequence_number, audio=chunk.audio)
            self._audio_seconds += seconds
            self._audio_counter.inc(seconds)
        else:
            if chunk.features is None:
                raise InvalidInput(
                    f"chunk.audio: model '{self._manifest.name}' takes feature frames; send chunk.features"
                )
            check_frames(chunk.features, self._manifest, "chunk.features", self._max_frames)
            out = await step.run(live, sequence_number=chunk.sequence_number, features=chunk.features)
        if out.duplicate:
            return ChunkResult(chunk.sequence_number, out.frame_offset, 0, duplicate=True)
        self._chunks += 1
        self._observe(arrived, started, seconds)
        due = self._token_every > 0 and self._chunks % self._token_every == 0
        return self._result(chunk.sequence_number, out, token=due)

    def _result(self, sequence_number: int, out: StepOutput, flush: bool = False, token: bool = False) -> ChunkResult:
        self._events.extend(e for e in out.events if e.is_final)
        outputs = out.outputs if self._frame_outputs else None
        sealed = self._tokens.seal(self._live.state, self._lane) if token else b""
        return ChunkResult(
            sequence_number, out.frame_offset, out.frames, outputs, out.events, flush=flush, resume_token=sealed
        )

    def _observe(self, arrived: float, started: float, seconds: float) -> None:
        now = time.perf_counter()
        self._chunk_latency.observe(now - arrived)
        if seconds > 0 and self._wall_start is not None:
            self._rtf.observe((now - started) / seconds)
            behind = (time.monotonic() - self._wall_start) - self._audio_seconds
            self._lag.observe(max(0.0, behind))

    async def draining(self, signal: DrainSignal) -> StreamDraining:
        """The warning for this stream, after the state kept in memory is written back:
        time left, a token, the last chunk applied. A store that cannot take the
        write-back now does not hold the warning back: the token carries the state."""
        with contextlib.suppress(StoreUnavailable):
            await self._sessions.write_back(self._live, "drain")
        state = self._live.state
        sealed = self._tokens.seal(state, self._lane) if self._tokens.enabled else b""
        ref = self._lane.ref
        self._handoffs.labels(ref.name, ref.version, str(signal.closing).lower()).inc()
        return StreamDraining(
            time_left_s=max(0.0, signal.deadline - time.monotonic()),
            resume_token=sealed,
            last_sequence_number=state.next_sequence_number - 1,
            closing=signal.closing,
        )

    async def end(self, keep_session: bool) -> list[ChunkResult | StreamFinal]:
        """Close the stream: flush buffered audio and delete the session, or keep both.

        With ``keep_session`` the stream is only paused: audio still buffered in the
        front-end and an open keyword detection stay in the session, and a resumed
        stream continues exactly where this one stopped. Otherwise the buffered audio is
        flushed through the model (the flush result) and the session is deleted.
        """
        live = self._live
        replies: list[ChunkResult | StreamFinal] = []
        if not keep_session and (live.audio is not None or live.spotter is not None):
            out = await self._lane.step.flush(live)
            if out.frames or out.events:
                replies.append(self._result(live.state.next_sequence_number, out, flush=True))
        state = live.state
        states = (
            {s.name: st for s, st in zip(self._manifest.states, state.states, strict=True)}
            if self._return_state
            else {}
        )
        sealed = self._tokens.seal(state, self._lane) if keep_session and self._tokens.enabled else b""
        final = StreamFinal(
            live.id, state.frame_offset, self._chunks, list(self._events), states, self._audio_seconds, sealed
        )
        self._ended = True
        await self._sessions.close(live, stream=True, delete=not keep_session)
        replies.append(final)
        return replies
