"""A client may declare any sample rate up to 192 kHz: the resampler's filter size,
build time, cache and per-call memory stay bounded, and the rate error stays within
what :class:`StreamingResampler` documents."""

from __future__ import annotations

import math
import threading
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest

from lstm_serve import resampling
from lstm_serve.resampling import (
    FILTER_CACHE_BYTES,
    MAX_RATIO_TERM,
    StreamingResampler,
    resample,
)

# the bound stated in StreamingResampler's docstring, for every input rate into 16 kHz
DOCUMENTED_MAX_RATE_ERROR = 3e-5
ODD_RATES = [191999, 176401, 128004, 1, 7, 12345, 99991, 18023, 18369]
MAX_TAPS = 2 * 16 * MAX_RATIO_TERM + 1


@pytest.fixture
def cold_cache() -> None:
    resampling._FILTER_CACHE.clear()


def test_an_odd_top_rate_builds_a_small_filter(cold_cache: None) -> None:
    # the exact ratio 16000/191999 needs 6.1 million taps; the build time follows the
    # filter's size (no wall-clock bound on a shared machine: that is the benchmark's)
    r = StreamingResampler(191999, 16000)
    assert r.filter_taps < 300_000
    assert r.filter_bytes < 4 * 2**20
    assert not r.exact and max(r.up, r.down) <= MAX_RATIO_TERM
    assert abs(r.rate_error) < DOCUMENTED_MAX_RATE_ERROR


@pytest.mark.parametrize("rate", ODD_RATES)
def test_odd_rates_stay_within_the_documented_error_and_size(rate: int) -> None:
    r = StreamingResampler(rate, 16000)
    assert max(r.up, r.down) <= MAX_RATIO_TERM
    assert r.filter_taps <= MAX_TAPS
    assert r.filter_bytes <= 4.2 * 2**20
    assert abs(r.rate_error) < DOCUMENTED_MAX_RATE_ERROR
    expected = float(Fraction(r.up * rate, r.down * 16000) - 1)
    assert r.rate_error == pytest.approx(expected, abs=1e-15)
    assert r.effective_out_rate == pytest.approx(16000 * (1 + r.rate_error), rel=1e-12)


def test_every_declarable_rate_meets_the_documented_error() -> None:
    worst = 0.0
    for rate in range(1, 192_001):
        up, down = resampling._approximate_ratio(16000, rate)
        assert max(up, down) <= MAX_RATIO_TERM
        worst = max(worst, abs(float(Fraction(up * rate, down * 16000) - 1)))
    assert worst < DOCUMENTED_MAX_RATE_ERROR


@pytest.mark.parametrize(
    ("in_rate", "out_rate", "up", "down"),
    [
        (44100, 16000, 160, 441),
        (48000, 16000, 1, 3),
        (8000, 16000, 2, 1),
        (22050, 16000, 320, 441),
        (32000, 16000, 1, 2),
        (11025, 16000, 640, 441),
        (96000, 16000, 1, 6),
        (192000, 16000, 1, 12),
        (16000, 48000, 3, 1),
        (1, 16000, 16000, 1),
        (16384, 16000, 125, 128),
    ],
)
def test_common_rates_keep_their_exact_ratio(in_rate: int, out_rate: int, up: int, down: int) -> None:
    r = StreamingResampler(in_rate, out_rate)
    assert (r.up, r.down) == (up, down)
    assert r.exact
    assert r.rate_error == 0.0
    assert r.effective_out_rate == out_rate


def test_rates_too_far_apart_are_clamped_not_unbounded() -> None:
    up = StreamingResampler(1, 48000)
    assert (up.up, up.down) == (MAX_RATIO_TERM, 1)
    down = StreamingResampler(192000, 1)
    assert (down.up, down.down) == (1, MAX_RATIO_TERM)
    for r in (up, down):
        assert r.filter_taps == MAX_TAPS
        assert not r.exact
        assert abs(r.rate_error) > 0.5  # reported, for the caller to refuse
    y = np.concatenate([down.accept(np.ones(MAX_RATIO_TERM * 3, np.float32)), down.flush()])
    assert y.size == 3


def test_the_cache_stays_under_its_byte_cap(cold_cache: None) -> None:
    # odd rates whose rounded ratio has a term near MAX_RATIO_TERM: 2-4 MiB filters each
    rates = [rate for rate in range(18001, 30000, 2)
             if max(resampling._approximate_ratio(16000, rate)) > MAX_RATIO_TERM // 2][:40]
    assert len(rates) == 40
    built = 0
    for rate in rates:
        built += StreamingResampler(rate, 16000).filter_bytes
        assert resampling._FILTER_CACHE.total_bytes <= FILTER_CACHE_BYTES
    assert built > 1.5 * FILTER_CACHE_BYTES  # the cap, not the rates, bounded the cache
    assert len(resampling._FILTER_CACHE) > 0
    entries = resampling._FILTER_CACHE._entries.values()
    assert sum(bank.nbytes for bank in entries) == resampling._FILTER_CACHE.total_bytes


def test_the_cache_evicts_least_recently_used_and_skips_oversized_filters() -> None:
    # with one zero crossing, (1, d) is a single phase of 2*d + 1 taps: 40, 56, 72 bytes
    cache = resampling._FilterCache(max_bytes=120)
    a = cache.get(1, 2, 1)
    b = cache.get(1, 3, 1)
    assert (a.nbytes, b.nbytes, cache.total_bytes) == (40, 56, 96)
    assert cache.get(1, 2, 1) is a  # a hit, and now the most recent
    c = cache.get(1, 4, 1)  # 96 + 72 > 120: evicts b, the least recently used
    assert len(cache) == 2 and cache.total_bytes == a.nbytes + c.nbytes
    assert cache.get(1, 2, 1) is a and cache.get(1, 4, 1) is c
    assert cache.get(1, 3, 1) is not b
    assert cache.total_bytes <= cache.max_bytes
    assert not a.flags.writeable
    tiny = resampling._FilterCache(max_bytes=30)
    assert tiny.get(1, 2, 1).nbytes == 40
    assert len(tiny) == 0 and tiny.total_bytes == 0


def test_the_cache_is_consistent_under_concurrent_builds() -> None:
    cache = resampling._FilterCache(max_bytes=6 * 2**20)
    keys = [(up, down, 16) for up, down in [(1, 12), (160, 441), (2047, 16377), (1, 3), (399, 4399)]]
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(15):
                key = keys[(i + offset) % len(keys)]
                bank = cache.get(*key)
                assert bank.shape[0] == key[0]
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert cache.total_bytes <= cache.max_bytes
    assert sum(bank.nbytes for bank in cache._entries.values()) == cache.total_bytes


def test_a_two_second_chunk_at_an_odd_top_rate_is_chunking_invariant() -> None:
    rate = 191999
    rng = np.random.default_rng(rate)
    x = rng.standard_normal(2 * rate).astype(np.float32)
    whole = resample(x, rate, 16000)
    r = StreamingResampler(rate, 16000)
    assert whole.size == math.ceil(x.size * r.up / r.down)
    out, i = [], 0
    while i < x.size:
        n = int(rng.integers(0, 20_000))
        out.append(r.accept(x[i : i + n]))
        i += n
    out.append(r.flush())
    got = np.concatenate(out)
    assert got.dtype == np.float32
    assert np.array_equal(got, whole)
    assert r.samples_out == whole.size == -(-x.size * r.up // r.down)


def test_a_large_chunk_is_resampled_in_bounded_memory() -> None:
    x = np.random.default_rng(0).standard_normal(2 * 192000).astype(np.float32)
    r = StreamingResampler(192000, 16000)
    tracemalloc.start()
    try:
        y = np.concatenate([r.accept(x), r.flush()])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert y.size == 32000
    # whole-chunk [outputs, taps] temporaries would be ~100 MB each
    assert peak < 24 * 2**20
