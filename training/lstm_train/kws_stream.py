"""Streaming a kws package through the server's own chain, in process.

One stream goes chunk by chunk through the same components, in the same order, as the
server's session step (:class:`lstm_serve.step.SessionStep`) for ``StreamPredict`` with
audio: :class:`lstm_serve.audio.AudioPipeline` (decode, resample, log-mel), the model
step through :class:`lstm_serve.runtime.ModelRuntime` with the recurrent states
carried between chunks, then :class:`lstm_serve.events.KeywordSpotter`; at the end the
front-end's buffered audio is flushed and the open detection closed. The batcher, the
store and the event loop are left out: they do not change the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstm_serve.audio import AudioPipeline
from lstm_serve.domain import AudioFormat
from lstm_serve.events import Event, KeywordSpotter
from lstm_serve.manifest import LogMelFrontend
from lstm_serve.runtime import ModelRuntime

CHUNK_MS = 100


@dataclass(frozen=True)
class Streamed:
    """What one stream produced."""

    posteriors: np.ndarray
    """``[frames, dim]``: every per-frame output row, in order."""
    events: list[Event]
    """The final events."""


def stream(runtime: ModelRuntime, audio: np.ndarray, chunk_ms: float = CHUNK_MS,
           sample_rate_hz: int | None = None) -> Streamed:
    """Stream ``audio`` (float32 samples in [-1, 1], at ``sample_rate_hz``, by default
    the model's rate) as FLOAT32 chunks of ``chunk_ms``."""
    manifest = runtime.manifest
    frontend = manifest.frontend
    if not isinstance(frontend, LogMelFrontend):
        raise ValueError(f"{manifest.name} takes feature frames, not audio")
    post = manifest.output.postprocess
    if post is None:
        raise ValueError(f"{manifest.name} has no keyword_events post-processing")
    rate = sample_rate_hz or frontend.sample_rate_hz
    pipeline = AudioPipeline(frontend, AudioFormat("float32", rate))
    spotter = KeywordSpotter(post, manifest.output.labels, manifest.input.frame_rate_hz)
    states = runtime.zero_states(1)
    rows: list[np.ndarray] = []
    events: list[Event] = []

    def advance(frames: np.ndarray) -> None:
        nonlocal states
        if frames.shape[0]:
            output, states = runtime.run(frames[np.newaxis], states)
            rows.append(output[0])
            events.extend(spotter.update(output[0]))

    samples = np.ascontiguousarray(audio, dtype="<f4")
    step = max(int(rate * chunk_ms / 1000), 1)
    for start in range(0, samples.size, step):
        advance(pipeline.accept(samples[start : start + step].tobytes()))
    advance(pipeline.flush())
    events.extend(spotter.flush())
    posteriors = (
        np.concatenate(rows) if rows else np.zeros((0, manifest.output.dim), np.float32)
    )
    return Streamed(posteriors, [e for e in events if e.is_final])


def stream_events(runtime: ModelRuntime, audio: np.ndarray, chunk_ms: float = CHUNK_MS
                  ) -> list[Event]:
    """The final events of one stream (see :func:`stream`)."""
    return stream(runtime, audio, chunk_ms).events
