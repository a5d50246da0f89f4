"""The one audio front-end: PCM decoding, streaming resampling and streaming log-mel.

Training (``lstm_train``) and the server both compute features with this module, so
what a model saw in training is exactly what it sees when served. Everything here is
pure numpy/scipy and streaming-exact: feeding a signal in any chunking gives the same
output as feeding it whole (differences are float rounding only, far below 1e-6).
Resampling uses the exact rate ratio for every common rate and rounds the ratio of
odd ones to bound the filter's size; :class:`StreamingResampler` states the accuracy.

Log-mel framing
---------------
With ``win = round(window_ms * rate / 1000)`` and ``hop = round(hop_ms * rate / 1000)``
samples, frame ``i`` covers samples ``[i*hop, i*hop + win)`` of the (pre-emphasized)
signal. Frame ``i``'s time is ``i * hop / rate`` seconds: the frame rate is
``1000 / hop_ms`` Hz and frame offsets map to stream time without any delay term.

- :meth:`StreamingLogMel.accept` emits every frame whose window is complete.
- :meth:`StreamingLogMel.flush`, at the end of the stream, emits the frames that start
  inside the signal but whose window runs past its end, zero-padded. After a flush a
  signal of ``n > 0`` samples has produced exactly ``ceil(n / hop)`` frames (and ``0``
  for an empty signal). :func:`logmel` computes the same thing in one call.

Each frame is: pre-emphasis ``y[n] = x[n] - a*x[n-1]`` (``x[-1] = 0``), a periodic
Hann window, a ``n_fft``-point real FFT (zero-padded), the power spectrum, an
HTK-mel triangular filter bank over ``[f_min_hz, f_max_hz]`` and
``log(max(mel, log_floor))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from lstm_serve.manifest import LogMelFrontend
from lstm_serve.resampling import (
    ResamplerState,
    StreamingResampler,
    frozen,
    resample,
)

__all__ = [
    "DecoderState",
    "LogMelState",
    "PcmDecoder",
    "ResamplerState",
    "StreamingLogMel",
    "StreamingResampler",
    "frame_count",
    "logmel",
    "mel_filterbank",
    "resample",
]


# --------------------------------------------------------------------------- PCM


@dataclass(frozen=True)
class DecoderState:
    """A :class:`PcmDecoder` between two chunks."""

    encoding: Literal["pcm16", "float32"]
    pending: bytes
    samples_decoded: int


class PcmDecoder:
    """Decode little-endian PCM bytes to float32 samples, carrying partial samples.

    ``pcm16`` samples are scaled by 1/32768 into [-1, 1); ``float32`` samples pass
    through. A chunk may end in the middle of a sample (an odd byte for PCM16); the
    leftover bytes are kept and completed by the next chunk. At the end of a stream a
    non-zero :attr:`pending_bytes` means the total length was not a whole number of
    samples, which the caller should refuse.
    """

    def __init__(self, encoding: Literal["pcm16", "float32"]) -> None:
        if encoding not in ("pcm16", "float32"):
            raise ValueError(f"unsupported encoding {encoding!r}; use 'pcm16' or 'float32'")
        self.encoding = encoding
        self._dtype = np.dtype("<i2") if encoding == "pcm16" else np.dtype("<f4")
        self._pending = b""
        self.samples_decoded = 0

    @property
    def sample_width(self) -> int:
        """Bytes per sample: 2 for PCM16, 4 for float32."""
        return self._dtype.itemsize

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete trailing sample held until the next chunk."""
        return len(self._pending)

    def snapshot(self) -> DecoderState:
        """This decoder's state, as a value."""
        return DecoderState(self.encoding, self._pending, self.samples_decoded)

    @classmethod
    def restore(cls, state: DecoderState) -> PcmDecoder:
        """A decoder that continues exactly where ``state`` was taken."""
        decoder = cls(state.encoding)
        decoder._pending = state.pending
        decoder.samples_decoded = state.samples_decoded
        return decoder

    def accept(self, data: bytes) -> np.ndarray:
        """Decode ``data`` (after any pending bytes) into float32 samples."""
        buf = self._pending + bytes(data)
        whole = len(buf) - len(buf) % self.sample_width
        self._pending = buf[whole:]
        raw = np.frombuffer(buf[:whole], dtype=self._dtype)
        self.samples_decoded += raw.size
        if self.encoding == "pcm16":
            return raw.astype(np.float32) / np.float32(32768.0)
        return raw.astype(np.float32)


# ------------------------------------------------------------------------ log-mel


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def _filterbank(
    rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float
) -> np.ndarray:
    bins = np.arange(n_fft // 2 + 1) * rate / n_fft
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array(f_min)), _hz_to_mel(np.array(f_max)),
                                   n_mels + 2))
    fb = np.zeros((n_fft // 2 + 1, n_mels))
    for m in range(n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (bins - lo) / max(mid - lo, 1e-9)
        down = (hi - bins) / max(hi - mid, 1e-9)
        fb[:, m] = np.clip(np.minimum(up, down), 0.0, None)
    fb.setflags(write=False)
    return fb


def mel_filterbank(frontend: LogMelFrontend) -> np.ndarray:
    """The ``[n_fft//2 + 1, n_mels]`` triangular HTK-mel filter bank."""
    f_max = frontend.f_max_hz if frontend.f_max_hz is not None else frontend.sample_rate_hz / 2
    return _filterbank(
        frontend.sample_rate_hz, frontend.n_fft, frontend.n_mels, frontend.f_min_hz, f_max
    )


def window_hop(frontend: LogMelFrontend) -> tuple[int, int]:
    win = round(frontend.window_ms * frontend.sample_rate_hz / 1000)
    hop = round(frontend.hop_ms * frontend.sample_rate_hz / 1000)
    if win <= 0 or hop <= 0:
        raise ValueError(f"window {win} and hop {hop} samples must be positive")
    if win > frontend.n_fft:
        raise ValueError(f"window of {win} samples exceeds n_fft={frontend.n_fft}")
    return win, hop


def frame_count(n_samples: int, frontend: LogMelFrontend, *, flushed: bool = True) -> int:
    """Frames produced by ``n_samples`` samples, before or after the final flush."""
    win, hop = window_hop(frontend)
    if flushed:
        return -(-n_samples // hop) if n_samples > 0 else 0
    return 0 if n_samples < win else (n_samples - win) // hop + 1


@dataclass(frozen=True)
class LogMelState:
    """A :class:`StreamingLogMel` between two chunks: the samples of the next frame
    and the counters (the window and filter bank come from the manifest)."""

    previous_sample: float
    buffered: np.ndarray
    frames: int
    samples_in: int
    flushed: bool


class StreamingLogMel:
    """Streaming log-mel features: carries leftover samples between chunks.

    See the module docstring for the framing. Input is float32 mono audio at
    ``frontend.sample_rate_hz``; output is ``[n_frames, n_mels]`` float32.
    """

    def __init__(self, frontend: LogMelFrontend) -> None:
        self.frontend = frontend
        self.win, self.hop = window_hop(frontend)
        self._window = (0.5 - 0.5 * np.cos(2 * math.pi * np.arange(self.win) / self.win))
        self._fb = mel_filterbank(frontend)
        self._pre = float(frontend.preemphasis)
        self._prev = 0.0  # last raw sample, for pre-emphasis
        self._buf = np.zeros(0, np.float64)  # pre-emphasized samples from frame _next's start
        self._frames = 0
        self._n_in = 0
        self._flushed = False

    def snapshot(self) -> LogMelState:
        """This extractor's state, as a value."""
        return LogMelState(self._prev, frozen(self._buf), self._frames, self._n_in, self._flushed)

    @classmethod
    def restore(cls, frontend: LogMelFrontend, state: LogMelState) -> StreamingLogMel:
        """An extractor that continues exactly where ``state`` was taken."""
        logmel = cls(frontend)
        logmel._prev = state.previous_sample
        logmel._buf = np.array(state.buffered, dtype=np.float64)
        logmel._frames = state.frames
        logmel._n_in = state.samples_in
        logmel._flushed = state.flushed
        return logmel

    @property
    def frames_emitted(self) -> int:
        """Frames returned so far by :meth:`accept` and :meth:`flush`."""
        return self._frames

    @property
    def samples_accepted(self) -> int:
        """Samples received so far."""
        return self._n_in

    @property
    def frame_rate_hz(self) -> float:
        """Frames per second of audio."""
        return self.frontend.sample_rate_hz / self.hop

    def _compute(self, frames: np.ndarray) -> np.ndarray:
        spec = np.fft.rfft(frames * self._window, n=self.frontend.n_fft, axis=1)
        power = spec.real**2 + spec.imag**2
        mel = power @ self._fb
        return np.log(np.maximum(mel, self.frontend.log_floor)).astype(np.float32)

    def _take(self, n_frames: int) -> np.ndarray:
        if n_frames <= 0:
            return np.zeros((0, self.frontend.n_mels), np.float32)
        view = np.lib.stride_tricks.sliding_window_view(self._buf, self.win)[:: self.hop]
        out = self._compute(view[:n_frames])
        self._buf = self._buf[n_frames * self.hop :]
        self._frames += n_frames
        return out

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Add samples; return the frames whose window is now complete."""
        if self._flushed:
            raise RuntimeError("accept() after flush()")
        x = np.asarray(samples, dtype=np.float32).reshape(-1).astype(np.float64)
        if x.size == 0:
            return np.zeros((0, self.frontend.n_mels), np.float32)
        self._n_in += x.size
        if self._pre:
            shifted = np.empty_like(x)
            shifted[0] = self._prev
            shifted[1:] = x[:-1]
            self._prev = float(x[-1])
            x = x - self._pre * shifted
        self._buf = np.concatenate([self._buf, x])
        ready = 0 if self._buf.size < self.win else (self._buf.size - self.win) // self.hop + 1
        return self._take(ready)

    def flush(self) -> np.ndarray:
        """End of stream: emit the remaining frames that start inside the signal,
        zero-padded to a full window. Further calls return nothing."""
        if self._flushed:
            return np.zeros((0, self.frontend.n_mels), np.float32)
        self._flushed = True
        remaining = frame_count(self._n_in, self.frontend) - self._frames
        if remaining <= 0:
            return np.zeros((0, self.frontend.n_mels), np.float32)
        need = (remaining - 1) * self.hop + self.win
        self._buf = np.concatenate([self._buf, np.zeros(max(need - self._buf.size, 0))])
        return self._take(remaining)


def logmel(samples: np.ndarray, frontend: LogMelFrontend, *, flush: bool = True) -> np.ndarray:
    """Whole-signal log-mel features; equal to any chunking through
    :class:`StreamingLogMel` (followed by :meth:`~StreamingLogMel.flush` when
    ``flush`` is true)."""
    s = StreamingLogMel(frontend)
    first = s.accept(samples)
    return np.concatenate([first, s.flush()]) if flush else first
