"""The bundled models in ``models/`` still score what their manifests claim, on held-out data.

Each test re-evaluates a package with onnxruntime on its real test split and checks
the figure against ``provenance`` (within ±0.005) and against the accuracy floor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lstm_serve.manifest import load_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
TOLERANCE = 0.005
#: a guard against regressions at the bundled figure (0.690); the earlier isolated-word
#: model had 0.939 on these clips at 776 false alarms per hour of running speech
KWS_CLIP_FLOOR = 0.68


@pytest.mark.parametrize(
    ("name", "dataset", "floor", "states"),
    [
        ("har", "basic_motions", 0.975, 2),
        ("har-gru", "basic_motions", 0.975, 1),
        ("vowels", "japanese_vowels", 0.97, 2),
    ],
)
def test_sensor_model_accuracy(name: str, dataset: str, floor: float, states: int) -> None:
    from lstm_train.recipes import load_dataset, predict_package

    package = MODELS / name / "1"
    manifest = load_manifest(package)
    assert len(manifest.states) == states
    test = load_dataset(dataset, "test")
    assert manifest.output.labels == test.labels
    accuracy = float(np.mean(predict_package(package, test) == test.y))
    claimed = manifest.provenance.test_accuracy
    assert claimed is not None
    assert abs(accuracy - claimed) <= TOLERANCE, (accuracy, claimed)
    assert accuracy >= floor
    assert max(manifest.provenance.parity.values()) <= 1e-5
    assert (package / "model.onnx").stat().st_size < 5_000_000


@pytest.mark.slow
def test_kws_model_clip_accuracy_and_event_f1() -> None:
    """The clip accuracy and the sentence event F1 of the package, re-measured. The F1's
    match needs the event's start within 0.3 s of the keyword's start, which an
    end-aligned spotter (it fires as the word ends) often misses on long keywords: it is
    re-measured, not held to a floor; the spotter figures are the other test's."""
    from lstm_train.kws_score import evaluate_package
    from lstm_train.kws_sets import test_set

    package = MODELS / "kws" / "1"
    manifest = load_manifest(package)
    extra = manifest.provenance.model_dump()
    data = test_set()
    assert extra["test_variants"] == data.variants  # the same unseen voices as in training
    figures = evaluate_package(package, data)
    assert manifest.provenance.test_accuracy is not None
    assert abs(figures["clip_accuracy"] - manifest.provenance.test_accuracy) <= TOLERANCE
    # one event more or less moves the F1 of 167 keywords by about 0.007; the recorded F1
    # was measured before synthesis was reseeded per utterance (lstm_train.synth), when
    # the sentences differed between processes (seen: 0.5522 and 0.5576 for the same
    # package), and other CPUs round differently: two events of slack
    assert abs(figures["events"]["f1"] - extra["test_event_f1"]) <= 0.015
    assert figures["clip_accuracy"] >= KWS_CLIP_FLOOR
    assert (package / "model.onnx").stat().st_size < 2_000_000


def test_bundled_packages_have_reports() -> None:
    for name in ("har", "har-gru", "vowels", "kws"):
        package = MODELS / name / "1"
        for report in ("model.onnx", "manifest.json", "report.json", "report.md", "curves.png",
                       "confusion.png"):
            assert (package / report).is_file(), f"{package}/{report}"
    kws = MODELS / "kws" / "1"
    for report in ("kws_eval.json", "kws_eval_quick.json", "kws_det.png", "tuning.json"):
        assert (kws / report).is_file(), report
    assert "![kws DET curve](kws_det.png)" in (kws / "report.md").read_text()


def test_forecast_model_beats_baselines_and_streams() -> None:
    from lstm_train.forecast import (
        HORIZON,
        LinearAR,
        evaluate_package,
        output_labels,
        persistence,
        score,
    )
    from lstm_train.recipes import load_dataset, stratified_split

    package = MODELS / "forecast" / "1"
    manifest = load_manifest(package)
    assert manifest.output.task == "regression"
    assert manifest.output.activation == "none"
    assert manifest.output.head == "per_frame" and manifest.causal
    assert manifest.output.dim == HORIZON * manifest.input.feature_dim == 30
    assert manifest.output.labels == output_labels()
    extra = manifest.provenance.model_dump()
    test = np.stack(load_dataset("basic_motions", "test").x).astype(np.float32)
    assert manifest.input.normalization is not None
    std = np.asarray(manifest.input.normalization.std, np.float32)
    figures = evaluate_package(package, test, std)  # streamed in chunks, state carried
    assert figures["stream_vs_whole"] <= 1e-5
    assert abs(figures["mae"] - extra["test_mae"]) <= TOLERANCE
    assert abs(figures["rmse"] - extra["test_rmse"]) <= TOLERANCE
    persist = score(persistence(test), test, std)["mae"]
    assert abs(persist - extra["baseline_persistence_mae"]) <= TOLERANCE
    assert figures["mae"] < persist
    # the linear AR baseline, refit with the recorded choice on the training recordings
    train = load_dataset("basic_motions", "train")
    train_idx, _ = stratified_split(train.y, 0.2, 0)
    x_train = np.stack(train.x).astype(np.float32)[train_idx]
    mean = np.asarray(manifest.input.normalization.mean, np.float32)
    report = json.loads((package / "report.json").read_text())
    choice = report["linear_ar_choice"]
    ar = LinearAR(int(choice["p"]), float(choice["ridge"]), mean, std).fit(x_train)
    ar_mae = score(ar.predict(test), test, std)["mae"]
    assert abs(ar_mae - extra["baseline_linear_ar_mae"]) <= TOLERANCE
    assert figures["mae"] < ar_mae
    assert max(manifest.provenance.parity.values()) <= 1e-5
    for report_file in ("model.onnx", "manifest.json", "report.json", "report.md",
                        "curves.png", "forecast.png"):
        assert (package / report_file).is_file(), report_file


@pytest.mark.slow
def test_kws_false_alarms_per_hour_on_quick_subset() -> None:
    """The spotter figures of ``models/kws/1/kws_eval_quick.json`` (written by
    ``python -m lstm_train.kws_eval --quick``) re-measured on the same fixed subset of
    held-out voices, with the real-time factor and the size; the full-scale figures are
    in ``kws_eval.json``."""
    from lstm_train import kws_eval

    package = MODELS / "kws" / "1"
    manifest = load_manifest(package)
    recorded = json.loads((package / "kws_eval_quick.json").read_text())
    streams = kws_eval.build("test", kws_eval.QUICK)
    assert streams.variants == recorded["variants"]
    figures = kws_eval.evaluate(package, streams)
    got, want = figures["shipped"], recorded["shipped"]
    assert got["keywords"] == want["keywords"]
    # the streams are the same on every run (synthesis is seeded per utterance), but a
    # CPU with other vector kernels rounds the model differently and may flip a
    # borderline detection: allow a couple of events
    slack = 2
    assert abs(got["false_alarms"] - want["false_alarms"]) <= slack, (got, want)
    assert abs(got["misses"] - want["misses"]) <= slack, (got, want)
    assert abs(got["false_alarms_per_hour"] - want["false_alarms_per_hour"]) <= slack / (
        figures["keyword_free_hours"])
    for row_got, row_want in zip(figures["det"], recorded["det"], strict=True):
        assert row_got["threshold"] == row_want["threshold"]
        # low thresholds fire on many borderline frames: 5 % of the events there
        allowed = max(slack / figures["keyword_free_hours"], 0.05 * row_want["false_alarms_per_hour"])
        assert abs(row_got["false_alarms_per_hour"] - row_want["false_alarms_per_hour"]) <= allowed
    assert figures["real_time_factor"] < 0.05  # one core, front-end and model
    assert figures["model_bytes"] < 2_000_000
    full = json.loads((package / "kws_eval.json").read_text())
    assert full["keyword_free_hours"] >= 1.0 and full["shipped"]["keywords"] >= 500
    assert manifest.output.postprocess is not None
    assert full["operating_point"] == manifest.output.postprocess.model_dump()
    assert recorded["operating_point"] == full["operating_point"]
    background = set(manifest.output.postprocess.background_labels)
    assert {"_silence_", "_unknown_"} <= background
    for event_label in (*full["shipped"]["false_alarms_by_label"],
                        *got["false_alarms_by_label"]):
        assert event_label not in background  # only keywords emit events
    assert full["real_time_factor"] < 0.05
