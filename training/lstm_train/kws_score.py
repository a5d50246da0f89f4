"""The test figures of a ``kws`` package, measured on the exported graph.

- **clip accuracy**: 1.5 s clips (each keyword, filler words, noise only); a clip's
  prediction is the highest-scoring final event of :class:`lstm_serve.events.KeywordSpotter`
  over the clip, or background when there is none;
- **streaming event F1**: 8 s sentences streamed in 100 ms chunks through the server's
  own chain (:mod:`lstm_train.kws_stream`: audio front-end, the model step with its
  state carried, the spotter). An event is a true positive when an unmatched reference
  keyword has the same label and both its start and end lie within ``±0.3 s`` of the
  event's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lstm_serve.events import Event, KeywordSpotter
from lstm_serve.manifest import KeywordPostprocess
from lstm_train import kws_data as kd
from lstm_train.kws_sets import HeldOut
from lstm_train.kws_stream import stream_events
from lstm_train.report import confusion_matrix
from lstm_train.train import load_runtime, run_whole

TIMING_TOLERANCE_S = 0.3


def clip_predictions(
    posteriors: np.ndarray, postprocess: KeywordPostprocess, labels: Sequence[str],
    frame_rate_hz: float,
) -> list[str]:
    """Per clip: the label of the best final event, or ``_background_`` if none."""
    preds = []
    for post in posteriors:
        spotter = KeywordSpotter(postprocess, labels, frame_rate_hz)
        events = [e for e in spotter.update(post) + spotter.flush() if e.is_final]
        preds.append(max(events, key=lambda e: e.score).label if events else "_background_")
    return preds


def clip_accuracy(preds: Sequence[str], truth: Sequence[str]) -> float:
    """Keyword clips must give their keyword; background clips must give no event."""
    background = {kd.SILENCE, kd.UNKNOWN}
    ok = [
        (p == "_background_") if t in background else (p == t)
        for p, t in zip(preds, truth, strict=True)
    ]
    return float(np.mean(ok)) if ok else 0.0


def match_events(
    events: Sequence[Event], refs: Sequence[kd.KeywordTiming], tol: float = TIMING_TOLERANCE_S
) -> tuple[int, int, int]:
    """Greedy one-to-one matching in time order: ``(true_pos, false_pos, false_neg)``."""
    used = [False] * len(refs)
    tp = 0
    for e in sorted(events, key=lambda e: e.start_s):
        for i, r in enumerate(refs):
            if (
                not used[i]
                and r.label == e.label
                and abs(e.start_s - r.start_s) <= tol
                and abs(e.end_s - r.end_s) <= tol
            ):
                used[i] = True
                tp += 1
                break
    return tp, len(events) - tp, len(refs) - tp


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


def evaluate_package(package_dir: Path, data: HeldOut) -> dict[str, Any]:
    """Every test figure of a kws package, measured with the server's runtime."""
    runtime = load_runtime(package_dir)
    manifest = runtime.manifest
    post = manifest.output.postprocess
    assert post is not None
    labels = manifest.output.labels
    y = run_whole(runtime, data.clip_x)
    preds = clip_predictions(y, post, labels, manifest.input.frame_rate_hz)
    acc = clip_accuracy(preds, data.clip_labels)
    kw_mask = [t in kd.KEYWORDS for t in data.clip_labels]
    kw_acc = clip_accuracy(
        [p for p, m in zip(preds, kw_mask, strict=True) if m],
        [t for t, m in zip(data.clip_labels, kw_mask, strict=True) if m],
    )
    tp = fp = fn = 0
    for audio, refs in data.sentences:
        a, b, c = match_events(stream_events(runtime, audio), refs)
        tp, fp, fn = tp + a, fp + b, fn + c
    classes = [*kd.KEYWORDS, "_background_"]
    index = {lab: i for i, lab in enumerate(classes)}
    truth_idx = [index.get(t, index["_background_"]) for t in data.clip_labels]
    pred_idx = [index[p] for p in preds]
    return {
        "clip_accuracy": acc,
        "keyword_clip_accuracy": kw_acc,
        "clips": len(preds),
        "events": prf(tp, fp, fn),
        "sentences": len(data.sentences),
        "confusion": confusion_matrix(np.array(truth_idx), np.array(pred_idx), len(classes)),
        "confusion_labels": classes,
    }
