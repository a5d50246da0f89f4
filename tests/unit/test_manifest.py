"""Manifest validation reports the file and the field at fault."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest

from lstm_serve.errors import ManifestError
from lstm_serve.manifest import check_against_graph, load_manifest
from lstm_serve.repository import ModelRepository
from tests.conftest import FixtureModels


def _copy(fixture_models: FixtureModels, tmp_path: Path, name: str = "lstm") -> Path:
    target = tmp_path / name / "1"
    shutil.copytree(fixture_models.root / name / "1", target)
    return target


def _edit(package: Path, edit: object) -> None:
    path = package / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)  # type: ignore[operator]
    path.write_text(json.dumps(manifest))


def _graph_error(package: Path) -> ManifestError:
    manifest = load_manifest(package)
    sess = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(ManifestError) as info:
        check_against_graph(manifest, package, sess.get_inputs(), sess.get_outputs())
    return info.value


def test_valid_package_loads(fixture_models: FixtureModels) -> None:
    manifest = load_manifest(fixture_models.root / "lstm" / "1")
    assert [s.name for s in manifest.states] == ["h", "c"] and manifest.causal
    assert manifest.provenance.parity["chunked_vs_whole"] <= 1e-5


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda m: m["output"].__setitem__("head", "diagonal"), "output.head"),
        (lambda m: m.pop("states"), "states"),
        (lambda m: m["input"].__setitem__("feature_dim", -1), "input.feature_dim"),
        (lambda m: m["output"].__setitem__("labels", ["a"]), "output"),
        (lambda m: m.__setitem__("version", "2"), "version"),
        (lambda m: m.__setitem__("surprise", 1), "surprise"),
    ],
)
def test_schema_errors_name_the_field(
    fixture_models: FixtureModels, tmp_path: Path, edit: object, field: str
) -> None:
    package = _copy(fixture_models, tmp_path)
    _edit(package, edit)
    with pytest.raises(ManifestError) as info:
        load_manifest(package)
    assert info.value.path.endswith("lstm/1/manifest.json")
    assert info.value.field == field


def test_swapped_state_names_are_caught(fixture_models: FixtureModels, tmp_path: Path) -> None:
    package = _copy(fixture_models, tmp_path)

    def swap(m: dict) -> None:
        m["states"][0]["input"] = "h9"

    _edit(package, swap)
    error = _graph_error(package)
    assert error.field == "states.0.input" and "no tensor 'h9'" in error.problem


def test_undescribed_state_is_caught(fixture_models: FixtureModels, tmp_path: Path) -> None:
    package = _copy(fixture_models, tmp_path)
    _edit(package, lambda m: m["states"].pop())
    error = _graph_error(package)
    assert error.field == "states" and "c0" in error.problem


def test_wrong_hidden_size_is_caught(fixture_models: FixtureModels, tmp_path: Path) -> None:
    package = _copy(fixture_models, tmp_path, "gru")
    _edit(package, lambda m: m["states"][0].__setitem__("hidden", 99))
    error = _graph_error(package)
    assert error.field == "states.0.input" and "axis 2 is 24" in error.problem


def test_broken_package_does_not_stop_the_rest(fixture_models: FixtureModels, tmp_path: Path) -> None:
    _copy(fixture_models, tmp_path, "lstm")
    bad = tmp_path / "gru" / "1"
    bad.mkdir(parents=True)
    (bad / "manifest.json").write_text("{not json")
    corrupt = _copy(fixture_models, tmp_path, "bilstm")
    (corrupt / "model.onnx").write_bytes(b"garbage")
    repo = ModelRepository.load(tmp_path, ["CPUExecutionProvider"])
    status = {e.name: (e.ready, e.error) for e in repo}
    assert status["lstm"] == (True, "")
    assert not status["gru"][0] and "gru/1/manifest.json: (file): not valid JSON" in status["gru"][1]
    assert not status["bilstm"][0] and "bilstm/1/model.onnx" in status["bilstm"][1]
