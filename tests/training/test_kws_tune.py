"""The fast operating-point scan of :mod:`lstm_train.kws_tune` gives the server
spotter's final events, and training streams are labelled at each keyword's end."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serve.events import detect_events
from lstm_train import kws_data as kd
from lstm_train import kws_running as kr
from lstm_train.kws_tune import fast_events, postprocess_of, smooth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_events_equal_the_spotter(seed: int) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((3000, len(kd.LABELS))) * 2.5
    logits[:, 0] += 2.0  # mostly silence, with bursts of keywords
    post = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    keywords = np.array([kd.LABELS.index(k) for k in kd.KEYWORDS])
    for k in (1, 3, 8):
        s = smooth(post, k)
        for thr in (0.3, 0.5, 0.8):
            for m in (1, 3, 6):
                for r in (0.0, 0.3):
                    row = {"smoothing_frames": k, "threshold": thr, "min_frames": m,
                           "refractory_s": r}
                    want = detect_events(post, postprocess_of(row), kd.LABELS, 100.0)
                    got = fast_events(s, keywords, kd.LABELS, thr, m, r)
                    assert [(e.label, e.start_s, e.end_s) for e in got] == [
                        (e.label, e.start_s, e.end_s) for e in want]
                    np.testing.assert_allclose([e.score for e in got],
                                               [e.score for e in want], atol=1e-9)


def test_end_aligned_labels() -> None:
    segments = [kd.Segment("stop", 1600, 8000), kd.Segment("often", 11200, 16000)]
    labels = kr.end_aligned_labels(200, segments)
    centres = np.arange(200) * kd.HOP + kd.WIN // 2
    stop = kd.LABELS.index("stop")
    assert set(labels[(centres >= 1600) & (centres < 4800)]) == {kr.IGNORE}  # first half
    assert set(labels[(centres >= 4800) & (centres < 8000 + 1600)]) == {stop}
    tail = (centres >= 8000 + 1600) & (centres < 11200)
    assert set(labels[tail]) == {kd.LABELS.index(kd.SILENCE)}
    assert set(labels[(centres >= 11200) & (centres < 16000)]) == {kd.LABELS.index(kd.UNKNOWN)}
    assert not set(kr.NEGATIVES) & set(kd.KEYWORDS)
