"""The audio front-end is streaming-exact: any chunking equals the whole signal."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serve.features import (
    PcmDecoder,
    StreamingLogMel,
    StreamingResampler,
    frame_count,
    logmel,
    resample,
)
from lstm_serve.manifest import LogMelFrontend

FRONTEND = LogMelFrontend(
    sample_rate_hz=16000, window_ms=25, hop_ms=10, n_fft=512, n_mels=40, log_floor=1e-6,
    f_min_hz=20.0, f_max_hz=7600.0, preemphasis=0.97,
)


def _signal(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) * (t % 0.5 < 0.25)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _stream(s: StreamingLogMel, x: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i = [], 0
    for n in sizes:
        out.append(s.accept(x[i : i + n]))
        i += n
    out.append(s.accept(x[i:]))
    out.append(s.flush())
    return np.concatenate(out)


def _random_sizes(total: int, rng: np.random.Generator, high: int) -> list[int]:
    sizes, used = [], 0
    while used < total:
        n = int(rng.integers(0, high))
        sizes.append(n)
        used += n
    return sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logmel_random_chunkings_match_whole(seed: int) -> None:
    x = _signal(16000 + 123, seed)
    whole = logmel(x, FRONTEND)
    rng = np.random.default_rng(seed)
    got = _stream(StreamingLogMel(FRONTEND), x, _random_sizes(x.size, rng, 900))
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < 1e-6


def test_logmel_one_sample_chunks_match_whole() -> None:
    x = _signal(4000 + 7)
    s = StreamingLogMel(FRONTEND)
    got = _stream(s, x, [1] * x.size)
    whole = logmel(x, FRONTEND)
    assert np.abs(got - whole).max() < 1e-6
    assert s.frames_emitted == whole.shape[0]


@pytest.mark.parametrize("chunk_ms", [10, 20, 100, 333])
def test_logmel_fixed_chunk_sizes(chunk_ms: int) -> None:
    x = _signal(3 * 16000 + 55, seed=chunk_ms)
    step = 16 * chunk_ms
    got = _stream(StreamingLogMel(FRONTEND), x, [step] * (x.size // step))
    assert np.abs(got - logmel(x, FRONTEND)).max() < 1e-6


def test_frame_counts_and_flush() -> None:
    s = StreamingLogMel(FRONTEND)
    assert s.accept(np.zeros(399, np.float32)).shape == (0, 40)
    assert s.accept(np.zeros(1, np.float32)).shape == (1, 40)  # first full window
    assert s.accept(np.zeros(160, np.float32)).shape == (1, 40)
    # 560 samples: frames start at 0, 160, 320, 480 -> ceil(560/160) = 4 after flush
    assert s.flush().shape == (2, 40)
    assert s.frames_emitted == 4 == frame_count(560, FRONTEND)
    assert s.flush().shape == (0, 40)
    assert frame_count(0, FRONTEND) == 0
    assert frame_count(560, FRONTEND, flushed=False) == 2
    assert logmel(np.zeros(0, np.float32), FRONTEND).shape == (0, 40)
    with pytest.raises(RuntimeError):
        s.accept(np.zeros(10, np.float32))


def test_logmel_values_are_sane() -> None:
    sr = 16000
    t = np.arange(sr) / sr
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    feats = logmel(tone, FRONTEND)
    assert feats.dtype == np.float32
    silent = logmel(np.zeros(sr, np.float32), FRONTEND)
    assert np.allclose(silent, np.log(1e-6))
    # the 1 kHz tone lights up one mel band far above the rest
    mid = feats[50]
    assert mid.max() - np.median(mid) > 8


@pytest.mark.parametrize("encoding", ["pcm16", "float32"])
def test_pcm_decoder_odd_splits(encoding: str) -> None:
    rng = np.random.default_rng(3)
    if encoding == "pcm16":
        samples = rng.integers(-32768, 32768, 1001).astype("<i2")
        expected = samples.astype(np.float32) / 32768
    else:
        expected = rng.standard_normal(1001).astype("<f4")
        samples = expected
    data = samples.tobytes()
    dec = PcmDecoder(encoding)  # type: ignore[arg-type]
    out, i = [], 0
    while i < len(data):
        n = int(rng.integers(0, 9))
        out.append(dec.accept(data[i : i + n]))
        i += n
    got = np.concatenate(out)
    assert dec.pending_bytes == 0
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert dec.samples_decoded == 1001


def test_pcm16_odd_total_is_pending() -> None:
    dec = PcmDecoder("pcm16")
    assert dec.accept(b"\x01\x00\x02").tolist() == [1 / 32768]
    assert dec.pending_bytes == 1
    assert dec.accept(b"\x00").tolist() == [2 / 32768]
    assert dec.pending_bytes == 0
    dec.accept(b"\x05")
    assert dec.pending_bytes == 1  # the caller refuses this at end of stream
    assert PcmDecoder("pcm16").accept(b"\x00\x80").tolist() == [-1.0]


def test_pcm_decoder_rejects_unknown_encoding() -> None:
    with pytest.raises(ValueError, match="unsupported encoding"):
        PcmDecoder("mulaw")  # type: ignore[arg-type]


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampler_chunk_invariance(rate: int) -> None:
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(rate + 17).astype(np.float32)
    whole = resample(x, rate, 16000)
    assert whole.size == -(-x.size * 16000 // rate)
    for high in (2, 700, 5000):
        r = StreamingResampler(rate, 16000)
        out, i = [], 0
        for n in _random_sizes(x.size, rng, high):
            out.append(r.accept(x[i : i + n]))
            i += n
        out.append(r.flush())
        got = np.concatenate(out)
        assert got.shape == whole.shape
        assert np.abs(got - whole).max() < 1e-6
        assert r.samples_out == whole.size


@pytest.mark.parametrize(("rate", "freq"), [(8000, 1000.0), (44100, 3000.0), (48000, 440.0)])
def test_resampler_keeps_a_tone_in_place(rate: int, freq: float) -> None:
    t = np.arange(rate) / rate
    y = resample(np.sin(2 * np.pi * freq * t).astype(np.float32), rate, 16000)
    ref = np.sin(2 * np.pi * freq * np.arange(y.size) / 16000)
    # no delay and little distortion away from the edges
    assert np.abs(y - ref)[200:-200].max() < 1e-3


def test_resampler_passthrough_and_errors() -> None:
    x = np.arange(10, dtype=np.float32)
    r = StreamingResampler(16000, 16000)
    assert np.array_equal(r.accept(x), x)
    assert r.flush().size == 0
    with pytest.raises(ValueError):
        StreamingResampler(0, 16000)


def test_resampled_features_match_the_original() -> None:
    x = _signal(16000)
    up = resample(x, 16000, 48000)
    back = resample(up, 48000, 16000)
    a, b = logmel(x, FRONTEND), logmel(back, FRONTEND)
    assert a.shape == b.shape
    # the tone's bands survive the round trip (noise near Nyquist does not exactly)
    assert np.median(np.abs(a - b)) < 0.1
