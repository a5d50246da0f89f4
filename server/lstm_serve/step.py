"""The session step: one chunk for one session, the same for every API.

sequence check -> audio front-end -> batcher -> keyword spotter -> commit.

The step reads the session's :class:`~lstm_serve.state.SessionState`, computes the
next one and commits it (:func:`~lstm_serve.sessions.commit`): to the store with
compare-and-set on its version, or, for a stream on a shared store between
write-backs, in memory under a confirmed lease.
It never changes the state in place and never calls back up into a use case. The
front-end's DSP and the spotter run off the event loop, like onnxruntime. When any
part fails, nothing is committed and the live front-end objects are rebuilt from the
committed state, so a resend of the same chunk is processed exactly once.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lstm_serve.audio import AudioPipeline
from lstm_serve.batching import Batcher
from lstm_serve.domain import AudioFormat
from lstm_serve.errors import OffsetMismatch, PreconditionFailed, echo
from lstm_serve.events import Event, KeywordSpotter
from lstm_serve.manifest import LogMelFrontend, Manifest
from lstm_serve.metrics import Metrics
from lstm_serve.session_store import SessionStore
from lstm_serve.sessions import LiveSession, commit
from lstm_serve.state import SessionState


@dataclass(frozen=True)
class StepOutput:
    """What one step produced."""

    frame_offset: int
    """The session frame of the first output row."""
    frames: int
    outputs: np.ndarray | None
    """``[frames, dim]`` rows (one row for a sequence head), or None for no frames."""
    events: list[Event] = field(default_factory=list)
    duplicate: bool = False


def hydrate(live: LiveSession, manifest: Manifest) -> None:
    """Build the live front-end and spotter from the committed state (fresh ones for
    a session that has none yet). Builds filters: call it off the event loop."""
    state = live.state
    live.audio = None
    live.spotter = None
    if isinstance(manifest.frontend, LogMelFrontend):
        if state.audio is not None:
            live.audio = AudioPipeline.restore(manifest.frontend, state.audio)
        elif live.audio_format is not None:
            live.audio = AudioPipeline(manifest.frontend, live.audio_format)
    post = manifest.output.postprocess
    if post is not None and live.spot_events:
        labels, rate = manifest.output.labels, manifest.input.frame_rate_hz
        live.spotter = (
            KeywordSpotter.restore(post, labels, rate, state.spotter)
            if state.spotter is not None
            else KeywordSpotter(post, labels, rate)
        )


async def attach_front_end(
    live: LiveSession, manifest: Manifest, audio_format: AudioFormat | None, spot_events: bool, field: str
) -> None:
    """Give a live session the front-end and spotter its caller asked for. A session
    keeps the audio format it started with (``field`` names the caller's). Restoring a
    front-end designs its resampling filter, so that runs off the event loop."""
    committed = live.state.audio
    if audio_format is not None and committed is not None and committed.format != audio_format:
        raise PreconditionFailed(
            f"{field}: session '{echo(live.id)}' was started with {committed.format}; a session keeps "
            "its audio format"
        )
    live.audio_format = audio_format
    live.spot_events = spot_events
    if isinstance(manifest.frontend, LogMelFrontend) or manifest.output.postprocess is not None:
        await asyncio.to_thread(hydrate, live, manifest)
    else:
        hydrate(live, manifest)


class SessionStep:
    """Runs steps of the sessions of one model version."""

    def __init__(
        self, manifest: Manifest, batcher: Batcher, store: SessionStore, metrics: Metrics | None = None
    ) -> None:
        self.manifest = manifest
        self._batcher = batcher
        self._store = store
        self._metrics = metrics

    def _rows(self, output: np.ndarray) -> np.ndarray:
        return output if self.manifest.output.head == "per_frame" else output[np.newaxis]

    async def run(
        self,
        live: LiveSession,
        *,
        sequence_number: int | None,
        features: np.ndarray | None = None,
        audio: bytes | None = None,
        frame_offset: int | None = None,
    ) -> StepOutput:
        """Apply one chunk (feature frames ``[T, F]`` or audio bytes). With a
        ``sequence_number``, a repeat of an applied one is answered as a duplicate and a
        gap is refused; None (stateful Predict) applies the chunk as the next. With a
        ``frame_offset``, the session must stand there (:class:`OffsetMismatch`)."""
        async with live.lock:
            state = live.state
            if frame_offset is not None and frame_offset != state.frame_offset:
                raise OffsetMismatch(
                    f"frame_offset: the call continues from frame {frame_offset}, but session "
                    f"'{echo(state.session_id)}' stands at frame {state.frame_offset}; nothing was applied",
                    frame_offset, state.frame_offset, state.previous_offset,
                )
            if sequence_number is not None:
                expected = state.next_sequence_number
                if sequence_number < expected:
                    return StepOutput(state.frame_offset, 0, None, duplicate=True)
                if sequence_number > expected:
                    raise PreconditionFailed(
                        f"chunk.sequence_number: expected {expected}, got {sequence_number}; the "
                        f"session is unchanged, resume from {expected}"
                    )
            try:
                if audio is not None:
                    assert live.audio is not None
                    return await self._advance(live, state, functools.partial(live.audio.accept, audio), None,
                                               sequence_number is not None)
                assert features is not None
                return await self._advance(live, state, None, features, sequence_number is not None)
            except BaseException:
                hydrate(live, self.manifest)
                raise

    async def flush(self, live: LiveSession) -> StepOutput:
        """End of stream: run the audio still buffered and close open detections."""
        async with live.lock:
            state = live.state
            try:
                prepare = live.audio.flush if live.audio is not None else self._no_frames
                return await self._advance(live, state, prepare, None, False, flush=True)
            except BaseException:
                hydrate(live, self.manifest)
                raise

    def _no_frames(self) -> np.ndarray:
        return np.zeros((0, self.manifest.input.feature_dim), np.float32)

    async def _advance(
        self, live: LiveSession, state: SessionState, prepare: Callable[[], np.ndarray] | None,
        features: np.ndarray | None, numbered: bool, flush: bool = False,
    ) -> StepOutput:
        """One model step from ``features`` or from what ``prepare`` (the front-end)
        makes of the chunk, then the spotter; the front-end, the model and the spotter
        all run on the executor thread in one hop."""
        spotter = live.spotter
        spot = functools.partial(_spot, spotter, flush=flush) if spotter is not None else None
        outputs: np.ndarray | None
        events: list[Event]
        if prepare is None and spot is None:
            assert features is not None
            output, states = await self._batcher.submit(features, list(state.states))
            frames, outputs, new_states, events = features.shape[0], self._rows(output), tuple(states), []
        else:
            done = await self._batcher.submit_prepared(prepare, features, list(state.states), spot)
            frames, new_states = done.frames, tuple(done.states)
            outputs = self._rows(done.outputs) if done.outputs is not None else None
            events = done.finished or []
        finals = tuple(e for e in events if e.is_final)
        await commit(
            self._store,
            live,
            state.advanced(
                states=new_states,
                next_sequence_number=state.next_sequence_number + (1 if numbered else 0),
                frame_offset=state.frame_offset + frames,
                previous_offset=state.frame_offset,
                audio=live.audio.snapshot() if live.audio is not None else state.audio,
                spotter=spotter.snapshot() if spotter is not None else state.spotter,
                final_events=state.final_events + finals,
            ),
            self._metrics,
        )
        return StepOutput(state.frame_offset, frames, outputs, events)


def _spot(spotter: KeywordSpotter, outputs: np.ndarray | None, *, flush: bool) -> list[Event]:
    events = spotter.update(outputs) if outputs is not None and len(outputs) else []
    return events + spotter.flush() if flush else events
