"""Choosing the ``kws`` operating point on **validation** streams.

:func:`fast_events` re-implements :class:`lstm_serve.events.KeywordSpotter`'s final
events (causal moving average, open at the threshold, close below it, drop shorter than
``min_frames``, refractory period) with the smoothing vectorized and the scan visiting
only frames above the threshold, so that a grid of several thousand operating points
runs in seconds. The chosen point is re-scored with the server's own spotter
(:func:`lstm_train.kws_eval.score`) before it is shipped.

:func:`tune` picks, among the grid points whose false alarms per hour on the
validation keyword-free streams are at most ``fa_target``, the one with the lowest
validation miss rate (ties: fewer false alarms on the keyword streams, then the higher
threshold, then the longer ``min_frames``); if no point reaches ``fa_target``, the one
with the fewest false alarms, then the lowest miss rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from lstm_serve.events import Event
from lstm_serve.manifest import KeywordPostprocess
from lstm_train import kws_data as kd
from lstm_train.kws_eval import StreamSet, hits

SMOOTHING = (1, 3, 5, 8)
MIN_FRAMES = (2, 4, 6, 8, 10, 12)
REFRACTORY_S = (0.3, 0.6, 1.0)
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998,
              0.999)


def smooth(posteriors: np.ndarray, window: int) -> np.ndarray:
    """The spotter's causal moving average (the mean of the frames available so far at
    the stream start)."""
    p = np.asarray(posteriors, np.float64)
    c = np.cumsum(np.vstack([np.zeros((1, p.shape[1])), p]), axis=0)
    t = np.arange(p.shape[0])
    lo = np.maximum(t - window + 1, 0)
    return (c[t + 1] - c[lo]) / (t + 1 - lo)[:, None]


def fast_events(
    smoothed: np.ndarray, keywords: np.ndarray, labels: Sequence[str], threshold: float,
    min_frames: int, refractory_s: float, frame_rate_hz: float = 100.0,
) -> list[Event]:
    """The final events of :class:`lstm_serve.events.KeywordSpotter` on ``smoothed``
    (see the module docstring)."""
    kw = smoothed[:, keywords]
    best = kw.argmax(1)
    above = np.flatnonzero(kw[np.arange(kw.shape[0]), best] >= threshold)
    events: list[Event] = []
    n = smoothed.shape[0]
    blocked = 0
    i = 0
    while i < above.size:
        t = int(above[i])
        if t < blocked:
            i = int(np.searchsorted(above, blocked))
            continue
        label = int(keywords[best[t]])
        col = smoothed[t:, label]
        below = np.flatnonzero(col < threshold)
        last = t + (int(below[0]) - 1 if below.size else n - t - 1)
        if last - t + 1 >= min_frames:
            peak = float(col[: last - t + 1].max())
            events.append(Event(labels[label], t / frame_rate_hz, (last + 1) / frame_rate_hz,
                                peak, True))
            blocked = int(np.ceil(((last + 1) / frame_rate_hz + refractory_s) * frame_rate_hz
                                  - 1e-9))
        i = int(np.searchsorted(above, last + 1))
    return events


def sweep(
    streams: StreamSet, post_free: Sequence[np.ndarray], post_kw: Sequence[np.ndarray],
    labels: Sequence[str] = kd.LABELS, frame_rate_hz: float = 100.0, quiet: bool = False,
    smoothing: Sequence[int] = SMOOTHING, min_frames: Sequence[int] = MIN_FRAMES,
    refractory: Sequence[float] = REFRACTORY_S, thresholds: Sequence[float] = THRESHOLDS,
) -> list[dict[str, Any]]:
    """Validation figures of every grid point."""
    keywords = np.array([i for i, lab in enumerate(labels) if lab in kd.KEYWORDS])
    hours = streams.free_hours
    n_kw = max(streams.n_keywords, 1)
    rows: list[dict[str, Any]] = []
    for k in tqdm(smoothing, desc="tune", disable=quiet, leave=False, unit="smoothing"):
        sf = [smooth(p, k) for p in post_free]
        sk = [smooth(p, k) for p in post_kw]
        for m in min_frames:
            for r in refractory:
                for thr in thresholds:
                    fa = sum(len(fast_events(s, keywords, labels, thr, m, r, frame_rate_hz))
                             for s in sf)
                    misses = extra = 0
                    lat: list[float] = []
                    for s, stream in zip(sk, streams.keyword, strict=True):
                        ev = fast_events(s, keywords, labels, thr, m, r, frame_rate_hz)
                        a, b, c = hits(ev, stream.keywords)
                        lat, misses, extra = lat + a, misses + b, extra + c
                    rows.append({
                        "smoothing_frames": k, "min_frames": m, "refractory_s": r,
                        "threshold": thr, "false_alarms": fa,
                        "false_alarms_per_hour": fa / hours, "miss_rate": misses / n_kw,
                        "false_alarms_on_keyword_streams": extra,
                        "latency_p95_s": float(np.percentile(lat, 95)) if lat else 0.0,
                    })
    return rows


def choose(rows: Sequence[dict[str, Any]], fa_target: float = 1.0,
           max_latency_s: float = 0.3) -> dict[str, Any]:
    """The chosen grid point (see the module docstring); points whose p95 latency is
    above ``max_latency_s`` are only taken when no other point is left."""
    fast = [r for r in rows if r["latency_p95_s"] <= max_latency_s] or list(rows)
    ok = [r for r in fast if r["false_alarms_per_hour"] <= fa_target]
    if ok:
        return min(ok, key=lambda r: (r["miss_rate"], r["false_alarms_on_keyword_streams"],
                                      -r["threshold"], -r["min_frames"]))
    return min(fast, key=lambda r: (r["false_alarms"], r["miss_rate"], -r["threshold"]))


def postprocess_of(row: dict[str, Any]) -> KeywordPostprocess:
    """The manifest's ``postprocess`` for a grid point."""
    return KeywordPostprocess(
        smoothing_frames=int(row["smoothing_frames"]), threshold=float(row["threshold"]),
        refractory_s=float(row["refractory_s"]), background_labels=[kd.SILENCE, kd.UNKNOWN],
        min_frames=int(row["min_frames"]),
    )
