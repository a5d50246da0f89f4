"""Every ``lstm-train`` recipe runs end to end with ``--quick`` and writes a valid package."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from lstm_serve.manifest import check_against_graph, load_manifest
from lstm_train.cli import main

REPORT_FILES = ("report.json", "report.md", "curves.png", "confusion.png")


def _check_package(package: Path, *, reports: tuple[str, ...] = REPORT_FILES) -> None:
    manifest = load_manifest(package)
    sess = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    check_against_graph(manifest, package, sess.get_inputs(), sess.get_outputs())
    parity = manifest.provenance.parity
    expected = {"ort_vs_torch", "batch_vs_single"} | ({"chunked_vs_whole"} if manifest.causal else set())
    assert set(parity) == expected
    assert max(parity.values()) <= 1e-5
    for name in reports:
        assert (package / name).is_file(), name
    x = np.zeros((2, 7, manifest.input.feature_dim), np.float32)
    feeds = {manifest.input.name: x}
    feeds |= {s.input: np.zeros((s.layers, 2, s.hidden), np.float32) for s in manifest.states}
    y = sess.run([manifest.output.name], feeds)[0]
    assert y.shape[0] == 2 and y.shape[-1] == manifest.output.dim
    if manifest.output.activation == "softmax":
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


def _run(recipe: str, out: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    assert main([recipe, "--quick", "--quiet", "--json", "--out", str(out), "--version", "7"]) == 0
    figures: dict[str, object] = json.loads(capsys.readouterr().out)
    return figures


@pytest.mark.parametrize(("recipe", "states"), [("har", 2), ("har-gru", 1), ("vowels", 2)])
def test_sensor_recipes_quick(
    recipe: str, states: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = _run(recipe, tmp_path, capsys)
    package = tmp_path / recipe / "7"
    assert figures["package"] == str(package)
    _check_package(package)
    manifest = load_manifest(package)
    assert len(manifest.states) == states
    assert manifest.causal is (recipe != "vowels")
    assert manifest.output.head == ("sequence" if recipe == "vowels" else "per_frame")
    assert manifest.provenance.test_accuracy == pytest.approx(figures["test_accuracy"], abs=1e-6)
    assert manifest.provenance.seed == 0
    assert manifest.input.normalization is not None
    report = json.loads((package / "report.json").read_text())
    assert report["test_accuracy"] == figures["test_accuracy"]
    assert len(report["confusion_matrix"]) == manifest.output.dim


@pytest.mark.slow
def test_kws_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = _run("kws", tmp_path, capsys)
    package = tmp_path / "kws" / "7"
    _check_package(package)
    manifest = load_manifest(package)
    assert manifest.input_kind == "audio"
    assert manifest.frontend.kind == "audio" and manifest.frontend.n_mels == 40
    assert manifest.output.postprocess is not None
    assert manifest.output.labels[:2] == ["_silence_", "_unknown_"]
    extra = manifest.provenance.model_dump()
    for key in ("test_accuracy", "test_event_f1", "test_event_precision", "test_event_recall"):
        assert key in extra
    assert 0.0 <= figures["test_event_f1"] <= 1.0  # type: ignore[operator]


def test_reference_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _run("reference", tmp_path, capsys)
    package = tmp_path / "reference" / "7"
    _check_package(package, reports=("report.json", "report.md"))
    manifest = load_manifest(package)
    assert (manifest.input.feature_dim, manifest.output.dim) == (40, 12)
    assert [(s.layers, s.hidden) for s in manifest.states] == [(2, 256), (2, 256)]


def test_help_lists_every_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for recipe in ("har", "har-gru", "vowels", "kws", "forecast", "reference", "demo", "--quick"):
        assert recipe in text


def test_forecast_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figures = _run("forecast", tmp_path, capsys)
    package = tmp_path / "forecast" / "7"
    _check_package(package, reports=("report.json", "report.md", "curves.png", "forecast.png"))
    manifest = load_manifest(package)
    assert manifest.output.task == "regression" and manifest.output.activation == "none"
    assert manifest.output.dim == 5 * manifest.input.feature_dim
    assert manifest.causal and len(manifest.states) == 2
    extra = manifest.provenance.model_dump()
    assert extra["test_mae"] == pytest.approx(figures["test_mae"], abs=1e-6)
    assert figures["stream_vs_whole"] <= 1e-5  # type: ignore[operator]
    for key in ("persistence_mae", "linear_ar_mae", "test_rmse"):
        assert key in figures
