"""The server's audio front-end for one stream: decode, resample, extract features.

It chains :class:`lstm_serve.features.PcmDecoder`, an optional
:class:`lstm_serve.resampling.StreamingResampler` and
:class:`lstm_serve.features.StreamingLogMel`, which carry their leftovers between
chunks, so any chunking of the same audio (including odd byte splits of PCM16) gives
the same feature frames.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from lstm_serve.domain import AudioFormat
from lstm_serve.errors import InvalidInput
from lstm_serve.features import (
    DecoderState,
    LogMelState,
    PcmDecoder,
    ResamplerState,
    StreamingLogMel,
    StreamingResampler,
)
from lstm_serve.manifest import LogMelFrontend

MAX_SAMPLE_RATE_HZ = 192_000
MAX_RATE_ERROR = 1e-4
"""Largest relative error of the resampling ratio accepted (any rate up to 192 kHz into
16 kHz is within 3e-5; see :class:`lstm_serve.resampling.StreamingResampler`)."""
BYTES_PER_SAMPLE = {"pcm16": 2, "float32": 4}


def check_audio_format(fmt: AudioFormat | None) -> AudioFormat:
    """Validate a stream's declared audio format."""
    if fmt is None:
        raise InvalidInput(
            "config.audio: required for audio input; set encoding (PCM16 or FLOAT32) and "
            "sample_rate_hz"
        )
    if fmt.encoding not in BYTES_PER_SAMPLE:
        raise InvalidInput(
            f"config.audio.encoding: unsupported encoding '{fmt.encoding}'; expected PCM16 or FLOAT32"
        )
    if not 0 < fmt.sample_rate_hz <= MAX_SAMPLE_RATE_HZ:
        raise InvalidInput(
            f"config.audio.sample_rate_hz: {fmt.sample_rate_hz} is out of range; expected 1 to "
            f"{MAX_SAMPLE_RATE_HZ}"
        )
    return fmt


@dataclass(frozen=True)
class AudioPipelineState:
    """An :class:`AudioPipeline` between two chunks."""

    format: AudioFormat
    decoder: DecoderState
    resampler: ResamplerState | None
    logmel: LogMelState


class AudioPipeline:
    """Streaming bytes-to-features for one session."""

    def __init__(self, frontend: LogMelFrontend, fmt: AudioFormat) -> None:
        self.format = fmt
        self.config = frontend
        self._decoder = PcmDecoder(fmt.encoding)
        self._resampler = (
            StreamingResampler(fmt.sample_rate_hz, frontend.sample_rate_hz)
            if fmt.sample_rate_hz != frontend.sample_rate_hz
            else None
        )
        if self._resampler is not None and abs(self._resampler.rate_error) > MAX_RATE_ERROR:
            raise InvalidInput(
                f"config.audio.sample_rate_hz: {fmt.sample_rate_hz} Hz cannot be resampled to the "
                f"model's {frontend.sample_rate_hz} Hz within {MAX_RATE_ERROR:g} (relative rate "
                f"error {self._resampler.rate_error:.2g}); send audio at a closer rate"
            )
        self._logmel = StreamingLogMel(frontend)
        self.bytes_per_second = BYTES_PER_SAMPLE[fmt.encoding] * fmt.sample_rate_hz

    def snapshot(self) -> AudioPipelineState:
        """The decoder's, resampler's and log-mel framer's state, as a value."""
        return AudioPipelineState(
            self.format,
            self._decoder.snapshot(),
            self._resampler.snapshot() if self._resampler is not None else None,
            self._logmel.snapshot(),
        )

    @classmethod
    def restore(cls, frontend: LogMelFrontend, state: AudioPipelineState) -> AudioPipeline:
        """A front-end that continues exactly where ``state`` was taken."""
        restored = cls(frontend, state.format)
        restored._decoder = PcmDecoder.restore(state.decoder)
        if state.resampler is not None:
            restored._resampler = StreamingResampler.restore(state.resampler)
        restored._logmel = StreamingLogMel.restore(frontend, state.logmel)
        return restored

    def seconds(self, data: bytes) -> float:
        """Duration of ``data`` in this stream's format."""
        return len(data) / self.bytes_per_second

    def accept(self, data: bytes) -> np.ndarray:
        """Feature frames completed by ``data`` (possibly none).

        Non-finite float32 samples are refused and leave the front-end as it was.
        Samples outside [-1, 1] are clipped to it, as a conversion to PCM would: the
        models were trained on that range, and a huge amplitude would otherwise
        overflow the power spectrum into Inf.
        """
        decoder = copy.copy(self._decoder)
        samples = decoder.accept(data)
        if self.format.encoding == "float32":
            finite = np.isfinite(samples)
            if not finite.all():
                raise InvalidInput(
                    f"chunk.audio: non-finite float32 sample (NaN or Inf) at sample "
                    f"{int(np.flatnonzero(~finite)[0])} of this chunk; the session is unchanged"
                )
            np.clip(samples, -1.0, 1.0, out=samples)
        self._decoder = decoder
        if self._resampler is not None:
            samples = self._resampler.accept(samples)
        return self._logmel.accept(samples)

    def flush(self) -> np.ndarray:
        """The frames still buffered at the end of the stream."""
        if self._decoder.pending_bytes:
            raise InvalidInput(
                f"chunk.audio: the PCM16 stream ended with {self._decoder.pending_bytes} stray "
                "byte(s); the total audio length must be a whole number of samples"
            )
        samples = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
        frames = self._logmel.accept(samples) if samples.size else np.zeros((0, 0), np.float32)
        tail = self._logmel.flush()
        if frames.size == 0:
            return tail
        return np.concatenate([frames, tail]) if tail.size else frames
