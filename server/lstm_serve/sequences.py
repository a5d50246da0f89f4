"""The sequence use case: one request of a Triton-style sequence (a correlation id
with START and END flags), as the Open Inference Protocol's sequence extension
defines it, over the same session step as every other API.

- A sequence id is a session id: a sequence started here continues on
  ``StreamPredict(session_id=...)`` or ``Predict(session_id=...)``, and the reverse.
- START opens the session afresh (an active id is restarted, with a log line);
  any other request needs the session to exist. END flushes buffered audio and
  an open keyword detection, answers, then deletes the session.
- Requests of one sequence run in arrival order, one at a time, however many a
  client pipelines; different sequences run concurrently and share batches.
- UNAVAILABLE (draining, session store down) is only ever raised before the step
  is applied, so a client's automatic retry never advances a sequence twice. A
  store that fails to confirm the commit of an applied step answers
  DEADLINE_EXCEEDED, which clients do not retry on their own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np

from lstm_serve.admission import Admission
from lstm_serve.audio import check_audio_format
from lstm_serve.domain import AudioFormat, ModelRef
from lstm_serve.errors import (
    DeadlineExceeded,
    InvalidInput,
    ModelNotReady,
    Overloaded,
    SessionNotFound,
    StoreUnavailable,
    echo,
)
from lstm_serve.events import Event
from lstm_serve.lanes import Lane, Lanes
from lstm_serve.predict import check_frames
from lstm_serve.session_registry import SessionRegistry
from lstm_serve.sessions import LiveSession, OpenMode
from lstm_serve.settings import Settings
from lstm_serve.step import StepOutput, attach_front_end


@dataclass(frozen=True)
class SequenceRequest:
    """One request of a sequence: feature frames ``[T, F]`` or audio bytes."""

    model: ModelRef
    sequence_id: str
    start: bool
    end: bool
    features: np.ndarray | None = None
    audio: bytes | None = None
    audio_format: AudioFormat | None = None
    """The format of ``audio``; a sequence keeps the one it started with."""


@dataclass(frozen=True)
class SequenceResult:
    """What one request of a sequence produced."""

    model: ModelRef
    sequence_id: str
    frame_offset: int
    """The session frame of the first output row."""
    frames: int
    outputs: np.ndarray
    """``[frames, dim]`` (``frames`` may be 0 for audio still buffered)."""
    events: list[Event] = field(default_factory=list)


class SequenceNotStarted(InvalidInput):
    """A request without START for a sequence the server does not have."""


class _Arrivals:
    """Runs the requests of each sequence one at a time, in the order they arrived:
    one FIFO lock per sequence with requests in flight (asyncio's lock wakes its
    waiters in order and costs nothing when nobody waits)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def acquire(self, key: str) -> None:
        """Wait for the requests of ``key`` that arrived before this one."""
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = (asyncio.Lock(), [0])
        entry[1][0] += 1
        try:
            await entry[0].acquire()
        except BaseException:
            self._leave(key)
            raise

    def release(self, key: str) -> None:
        """Let the next request of ``key`` run."""
        self._locks[key][0].release()
        self._leave(key)

    def _leave(self, key: str) -> None:
        users = self._locks[key][1]
        users[0] -= 1
        if users[0] == 0:
            del self._locks[key]


class SequenceUseCase:
    """Runs the requests of sequences."""

    def __init__(self, lanes: Lanes, sessions: SessionRegistry, admission: Admission, settings: Settings) -> None:
        self._lanes = lanes
        self._sessions = sessions
        self._admission = admission
        self._settings = settings
        self._arrivals = _Arrivals()

    async def step(self, request: SequenceRequest) -> SequenceResult:
        """Apply one request of a sequence, after the ones of the same id before it."""
        with self._admission.admitted():
            await self._arrivals.acquire(request.sequence_id)
            try:
                return await self._step(request)
            finally:
                self._arrivals.release(request.sequence_id)

    async def _lane(self, request: SequenceRequest) -> Lane:
        """The lane of the requested model; a sequence already running on a version
        unloaded since goes on there until it ends or expires."""
        try:
            return self._lanes.resolve(request.model)
        except ModelNotReady:
            if request.start:
                raise
            state = await self._sessions.store.get(request.sequence_id)
            if state is None or state.model.name != request.model.name:
                raise
            return self._lanes.bound(state)

    async def _step(self, request: SequenceRequest) -> SequenceResult:
        lane = await self._lane(request)
        manifest = lane.manifest
        if not manifest.causal:
            raise InvalidInput(
                f"sequence_id: model '{manifest.name}' is not a sequence model (it is bidirectional); "
                "send its requests without sequence_id, sequence_start or sequence_end"
            )
        audio_format = self._audio_format(request, lane)
        live = await self._open(request, lane)
        try:
            lane = self._lanes.bound(live.state)
            await attach_front_end(live, lane.manifest, audio_format, True, "sample_rate_hz")
            out = await self._apply(request, lane, live)
        except BaseException:
            await self._sessions.close(live, stream=False)
            raise
        await self._sessions.close(live, stream=False, delete=request.end)
        dim = lane.manifest.output.dim
        outputs = out.outputs if out.outputs is not None else np.zeros((0, dim), np.float32)
        return SequenceResult(lane.ref, live.id, out.frame_offset, out.frames, outputs, out.events)

    def _audio_format(self, request: SequenceRequest, lane: Lane) -> AudioFormat | None:
        manifest = lane.manifest
        if manifest.input_kind == "audio":
            if request.audio is None:
                raise InvalidInput(f"inputs: model '{manifest.name}' takes audio samples, not feature frames")
            return check_audio_format(request.audio_format)
        if request.features is None:
            raise InvalidInput(f"inputs: model '{manifest.name}' takes feature frames, not audio")
        return None

    async def _open(self, request: SequenceRequest, lane: Lane) -> LiveSession:
        sequence_id = request.sequence_id
        mode: OpenMode = "restart" if request.start else "continue"
        try:
            live, _ = await self._sessions.open(
                sequence_id, lane.fresh_state, requested_version=request.model.version, mode=mode, stream=False,
                model=lane.ref,
            )
        except SessionNotFound:
            expired = await self._sessions.store.was_expired(sequence_id)
            hint = (
                f"; the sequence expired after {self._sessions.store.ttl_s:g} s idle "
                "(max_sequence_idle_microseconds, LSTM_SERVE_SESSIONS__TTL_S)"
                if expired
                else ""
            )
            raise SequenceNotStarted(
                f"inference request for sequence {echo(sequence_id)} to model '{lane.manifest.name}' must "
                f"specify the START flag on the first request of the sequence{hint}"
            ) from None
        return live

    async def _apply(self, request: SequenceRequest, lane: Lane, live: LiveSession) -> StepOutput:
        step = lane.step
        try:
            if request.audio is not None:
                self._check_audio(request.audio, live)
                out = await step.run(live, sequence_number=None, audio=request.audio)
            else:
                assert request.features is not None
                check_frames(request.features, lane.manifest, "inputs", self._settings.sessions.max_chunk_frames)
                out = await step.run(live, sequence_number=None, features=request.features)
            if request.end and (live.audio is not None or live.spotter is not None):
                out = _joined(out, await step.flush(live))
        except StoreUnavailable as exc:
            raise DeadlineExceeded(
                f"{exc}; the step may have been applied, so it is not safe to retry blindly: restart the "
                "sequence with START, or continue it on StreamPredict from its frame offset"
            ) from exc
        return out

    def _check_audio(self, audio: bytes, live: LiveSession) -> None:
        if not audio:
            raise InvalidInput("inputs: empty audio; send at least one sample")
        assert live.audio is not None
        seconds = live.audio.seconds(audio)
        limit = self._settings.audio.max_chunk_ms / 1000
        if seconds > limit:
            raise Overloaded(
                f"inputs: {seconds * 1000:.0f} ms of audio exceed the limit of {limit * 1000:.0f} ms per "
                "request (LSTM_SERVE_AUDIO__MAX_CHUNK_MS); split it"
            )


def _joined(first: StepOutput, flushed: StepOutput) -> StepOutput:
    """A step and the flush that ended its sequence, as one result."""
    parts = [o for o in (first.outputs, flushed.outputs) if o is not None]
    outputs = np.concatenate(parts) if parts else None
    return StepOutput(first.frame_offset, first.frames + flushed.frames, outputs, first.events + flushed.events)
