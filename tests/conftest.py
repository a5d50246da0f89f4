"""Shared fixtures: small models exported with the project's own export code, and
real servers on free loopback ports."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lstm_serve.manifest import KeywordPostprocess, LogMelFrontend
from lstm_train.export import build_manifest, export_package
from lstm_train.model import NetConfig, RecurrentNet
from tests.harness import FEATURE_DIM, REPO, ServerHandle, start_server

__all__ = ["AUDIO_FRONTEND", "FEATURE_DIM", "FixtureModels"]


@dataclass
class FixtureModels:
    """A model repository built for tests, with the torch nets behind it."""

    root: Path
    nets: dict[str, RecurrentNet]


def _net(cell: str, bidirectional: bool, head: str, seed: int) -> RecurrentNet:
    torch.manual_seed(seed)
    config = NetConfig(
        input_dim=FEATURE_DIM, output_dim=4, hidden=24, layers=2, cell=cell,  # type: ignore[arg-type]
        bidirectional=bidirectional, head=head,  # type: ignore[arg-type]
        mean=[0.1 * i for i in range(FEATURE_DIM)], std=[1.0 + 0.1 * i for i in range(FEATURE_DIM)],
    )
    return RecurrentNet(config).eval()


AUDIO_FRONTEND = LogMelFrontend(
    sample_rate_hz=16000, window_ms=25.0, hop_ms=10.0, n_fft=512, n_mels=40, log_floor=1e-6
)


def _audio_model(root: Path) -> RecurrentNet:
    """A keyword-spotting-shaped model (random weights) with the log-mel front-end."""
    torch.manual_seed(7)
    net = RecurrentNet(NetConfig(input_dim=40, output_dim=3, hidden=16, layers=1, mean=[-8.0] * 40, std=[3.0] * 40))
    with torch.no_grad():
        net.proj.bias.copy_(torch.tensor([0.0, 0.5, -0.5]))
    manifest = build_manifest(
        net, name="audio", version="1", frame_rate_hz=100.0, labels=["_background_", "yes", "no"],
        frontend=AUDIO_FRONTEND,
        postprocess=KeywordPostprocess(
            smoothing_frames=3, threshold=0.4, refractory_s=0.1, background_labels=["_background_"], min_frames=2
        ),
    )
    export_package(net, manifest, root)
    return net.eval()


@pytest.fixture(scope="session")
def fixture_models(tmp_path_factory: pytest.TempPathFactory) -> FixtureModels:
    """``lstm`` (causal, per-frame), ``gru`` (causal, per-frame), ``bilstm`` (sequence
    head, not causal), ``audio`` (log-mel front-end with keyword events) and ``broken``
    (a manifest that disagrees with its graph)."""
    root = tmp_path_factory.mktemp("models")
    specs = {
        "lstm": ("lstm", False, "per_frame"),
        "gru": ("gru", False, "per_frame"),
        "bilstm": ("lstm", True, "sequence"),
    }
    nets = {}
    for i, (name, (cell, bi, head)) in enumerate(specs.items()):
        net = _net(cell, bi, head, seed=i)
        manifest = build_manifest(
            net, name=name, version="1", frame_rate_hz=100.0, labels=["a", "b", "c", "d"],
            provenance={"dataset": "random weights (tests)", "seed": i},
        )
        export_package(net, manifest, root)
        nets[name] = net
    nets["audio"] = _audio_model(root)
    broken = root / "broken" / "1"
    shutil.copytree(root / "lstm" / "1", broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["name"] = "broken"
    manifest["input"]["feature_dim"] = FEATURE_DIM + 1
    manifest["input"].pop("normalization", None)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    return FixtureModels(root, nets)


@pytest.fixture(scope="session")
def server(fixture_models: FixtureModels) -> Iterator[ServerHandle]:
    """A server with default settings on the fixture models."""
    with start_server(fixture_models.root) as handle:
        yield handle


@pytest.fixture(scope="session")
def bundled_server() -> Iterator[ServerHandle]:
    """A server on the repository's bundled models/."""
    with start_server(REPO / "models") as handle:
        yield handle
