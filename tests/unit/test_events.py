"""Keyword events from posteriors: threshold, smoothing, refractory, partial -> final."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_serve.events import Event, KeywordSpotter, detect_events
from lstm_serve.manifest import KeywordPostprocess

LABELS = ["_silence_", "_unknown_", "yes", "no"]
RATE = 100.0


def _post(**overrides: object) -> KeywordPostprocess:
    base: dict[str, object] = dict(
        smoothing_frames=1, threshold=0.5, refractory_s=0.0,
        background_labels=["_silence_", "_unknown_"], min_frames=1,
    )
    base.update(overrides)
    return KeywordPostprocess.model_validate(base)


def _posteriors(frames: int, spans: list[tuple[str, int, int, float]]) -> np.ndarray:
    """Silence everywhere, ``label`` at probability ``p`` on frames ``[a, b)``."""
    y = np.zeros((frames, len(LABELS)), np.float32)
    y[:, 0] = 1.0
    for label, a, b, p in spans:
        k = LABELS.index(label)
        y[a:b, :] = (1 - p) / (len(LABELS) - 1)
        y[a:b, k] = p
    return y


def _run(post: KeywordPostprocess, y: np.ndarray, sizes: list[int] | None = None) -> list[Event]:
    spotter = KeywordSpotter(post, LABELS, RATE)
    events: list[Event] = []
    if sizes is None:
        events += spotter.update(y)
    else:
        i = 0
        for n in sizes:
            events += spotter.update(y[i : i + n])
            i += n
        events += spotter.update(y[i:])
    return events + spotter.flush()


def _finals(events: list[Event]) -> list[Event]:
    return [e for e in events if e.is_final]


def test_one_keyword_gives_one_final_event() -> None:
    y = _posteriors(100, [("yes", 20, 40, 0.9)])
    events = _finals(_run(_post(), y))
    assert len(events) == 1
    assert (events[0].label, events[0].start_s, events[0].end_s) == ("yes", 0.2, 0.4)
    assert events[0].score == pytest.approx(0.9) and events[0].is_final


def test_threshold_is_inclusive_and_background_never_fires() -> None:
    y = _posteriors(100, [("yes", 10, 20, 0.5), ("no", 40, 50, 0.49), ("_unknown_", 60, 90, 1.0)])
    events = _finals(_run(_post(), y))
    assert [e.label for e in events] == ["yes"]


def test_smoothing_suppresses_short_spikes_and_delays_onset() -> None:
    y = _posteriors(100, [("yes", 30, 32, 1.0), ("no", 60, 80, 1.0)])
    events = _finals(_run(_post(smoothing_frames=5), y))
    assert [e.label for e in events] == ["no"]
    # a 5-frame moving average crosses 0.5 on the third frame of the word
    assert events[0].start_s == pytest.approx(0.62)
    assert events[0].end_s == pytest.approx(0.82)  # frame 81 still averages 3/5


def test_smoothing_at_stream_start_averages_available_frames() -> None:
    y = _posteriors(20, [("yes", 0, 10, 1.0)])
    events = _finals(_run(_post(smoothing_frames=8), y))
    assert events[0].start_s == 0.0


def test_min_frames_drops_short_detections() -> None:
    y = _posteriors(100, [("yes", 10, 12, 0.9), ("no", 50, 60, 0.9)])
    events = _run(_post(min_frames=3), y)
    assert [(e.label, e.is_final) for e in events] == [("no", True)]


def test_refractory_blocks_a_second_detection() -> None:
    y = _posteriors(200, [("yes", 10, 20, 0.9), ("no", 30, 40, 0.9), ("no", 80, 90, 0.9)])
    no_refractory = _finals(_run(_post(), y))
    assert [e.label for e in no_refractory] == ["yes", "no", "no"]
    # yes ends at 0.20 s; 0.3 s refractory blocks until 0.50 s
    events = _finals(_run(_post(refractory_s=0.3), y))
    assert [(e.label, e.start_s) for e in events] == [("yes", 0.1), ("no", 0.8)]


def test_partial_then_final_once() -> None:
    y = _posteriors(100, [("yes", 20, 60, 0.9)])
    spotter = KeywordSpotter(_post(min_frames=2), LABELS, RATE)
    seen: list[Event] = []
    for i in range(0, 100, 10):
        seen += spotter.update(y[i : i + 10])
    seen += spotter.flush()
    partial = [e for e in seen if not e.is_final]
    final = [e for e in seen if e.is_final]
    assert len(final) == 1
    assert final[0].start_s == 0.2 and final[0].end_s == 0.6
    assert len(partial) == 4  # after the chunks ending at 30, 40, 50 and 60 frames
    assert {e.start_s for e in partial} == {0.2}
    assert [e.end_s for e in partial] == sorted(e.end_s for e in partial)
    assert all(e.label == "yes" for e in partial)


def test_flush_closes_an_open_detection() -> None:
    y = _posteriors(50, [("no", 30, 50, 0.95)])
    spotter = KeywordSpotter(_post(), LABELS, RATE)
    assert [e.is_final for e in spotter.update(y)] == [False]
    (final,) = spotter.flush()
    assert (final.label, final.start_s, final.end_s, final.is_final) == ("no", 0.3, 0.5, True)
    assert final.score == pytest.approx(0.95)
    assert spotter.flush() == []


def test_final_events_are_chunk_invariant() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1000, len(LABELS))) * 2
    logits[:, 0] += 1.5
    y = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    post = _post(smoothing_frames=5, threshold=0.4, refractory_s=0.1, min_frames=2)
    whole = _finals(_run(post, y))
    assert len(whole) > 3
    for high in (2, 7, 50, 333):
        sizes = list(rng.integers(0, high, 2000))
        assert _finals(_run(post, y, sizes)) == whole
    assert detect_events(y, post, LABELS, RATE) == whole


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="background"):
        KeywordSpotter(_post(background_labels=["nope"]), LABELS, RATE)
    spotter = KeywordSpotter(_post(), LABELS, RATE)
    with pytest.raises(ValueError, match="posteriors"):
        spotter.update(np.zeros((3, 2)))
    assert spotter.update(np.zeros((0, 4))) == []
