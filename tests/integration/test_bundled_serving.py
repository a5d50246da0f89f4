"""The bundled models/ serve: every package loads, and streamed equals whole within
1e-5 for every streamable feature model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstm_serve.manifest import load_manifest
from tests.harness import REPO, ServerHandle

PACKAGES = sorted(p.parent for p in (REPO / "models").glob("*/*/manifest.json"))
BUNDLED = {"har", "har-gru", "vowels", "kws"}
STREAMABLE_FEATURE_MODELS = [
    p for p in PACKAGES if (m := load_manifest(p)).streamable and m.input_kind == "features"
]


def test_the_bundled_models_are_there() -> None:
    assert {p.parent.name for p in PACKAGES} >= BUNDLED
    for package in PACKAGES:
        manifest = load_manifest(package)
        assert (manifest.name, manifest.version) == (package.parent.name, package.name), package
        assert (package / "model.onnx").stat().st_size > 0, package
    # test_streamed_equals_whole below runs for these (an empty list would pass silently)
    assert {p.parent.name for p in STREAMABLE_FEATURE_MODELS} >= {"har", "har-gru"}
    assert {load_manifest(p).input_kind for p in PACKAGES if p.parent.name == "kws"} == {"audio"}


def test_every_bundled_package_is_ready(bundled_server: ServerHandle) -> None:
    with bundled_server.client() as client:
        models = client.list_models()
        assert {m["name"] for m in models} >= BUNDLED
        for m in models:
            assert m["ready"], m
            assert client.health(f"models/{m['name']}/{m['version']}") == "SERVING"


@pytest.mark.parametrize("package", STREAMABLE_FEATURE_MODELS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_streamed_equals_whole(bundled_server: ServerHandle, package: Path) -> None:
    manifest = load_manifest(package)
    norm = manifest.input.normalization
    rng = np.random.default_rng(0)
    x = rng.standard_normal((97, manifest.input.feature_dim)).astype(np.float32)
    if norm is not None:
        x = (x * np.asarray(norm.std) + np.asarray(norm.mean)).astype(np.float32)
    with bundled_server.client() as client:
        whole = client.predict(manifest.name, x).outputs[0]
        for step in (1, 7, 50):
            streamed = client.stream(manifest.name, [x[i : i + step] for i in range(0, len(x), step)]).outputs
            np.testing.assert_allclose(streamed, whole, atol=1e-5)
