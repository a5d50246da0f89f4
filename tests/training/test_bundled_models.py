"""The bundled models in ``models/`` still score what their manifests claim, on held-out data.

Each test re-evaluates a package with onnxruntime on its real test split and checks
the figure against ``provenance`` (within ±0.005) and against the accuracy floor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstm_serve.manifest import load_manifest

MODELS = Path(__file__).resolve().parents[2] / "models"
TOLERANCE = 0.005


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
    from lstm_train.kws import evaluate_package, test_set

    package = MODELS / "kws" / "1"
    manifest = load_manifest(package)
    extra = manifest.provenance.model_dump()
    data = test_set()
    assert extra["test_variants"] == data.variants  # the same unseen voices as in training
    figures = evaluate_package(package, data)
    assert manifest.provenance.test_accuracy is not None
    assert abs(figures["clip_accuracy"] - manifest.provenance.test_accuracy) <= TOLERANCE
    assert abs(figures["events"]["f1"] - extra["test_event_f1"]) <= TOLERANCE
    assert figures["clip_accuracy"] >= 0.93
    assert figures["events"]["f1"] >= 0.85
    assert (package / "model.onnx").stat().st_size < 5_000_000


def test_bundled_packages_have_reports() -> None:
    for name in ("har", "har-gru", "vowels", "kws"):
        package = MODELS / name / "1"
        for report in ("model.onnx", "manifest.json", "report.json", "report.md", "curves.png",
                       "confusion.png"):
            assert (package / report).is_file(), f"{package}/{report}"
