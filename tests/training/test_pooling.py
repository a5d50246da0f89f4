"""The sequence head's pooling options (``mean``, ``last``, ``attention``) export with
their states and pass the parity checks; ``last`` is each direction's final output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from lstm_serve.manifest import check_against_graph, load_manifest
from lstm_train.export import build_manifest, export_package
from lstm_train.model import NetConfig, RecurrentNet


def _net(pooling: str, hidden: int = 8) -> RecurrentNet:
    torch.manual_seed(0)
    return RecurrentNet(NetConfig(
        input_dim=12, output_dim=9, hidden=hidden, bidirectional=True, head="sequence",
        pooling=pooling,  # type: ignore[arg-type]
    ))


@pytest.mark.parametrize("pooling", ["mean", "last", "attention"])
def test_pooling_exports_with_states_and_parity(pooling: str, tmp_path: Path) -> None:
    net = _net(pooling)
    labels = [str(i) for i in range(1, 10)]
    manifest = build_manifest(net, name="pool", version="1", frame_rate_hz=100.0,
                              labels=labels)
    package = export_package(net, manifest, tmp_path)
    loaded = load_manifest(package)
    sess = ort.InferenceSession(str(package / "model.onnx"), providers=["CPUExecutionProvider"])
    check_against_graph(loaded, package, sess.get_inputs(), sess.get_outputs())
    graph_inputs = {i.name for i in sess.get_inputs()}
    graph_outputs = {o.name for o in sess.get_outputs()}
    assert [s.name for s in loaded.states] == ["h", "c"]
    for state in loaded.states:
        assert state.input in graph_inputs and state.output in graph_outputs
        assert state.layers == 2
    assert loaded.output.labels == labels and loaded.output.head == "sequence"
    assert not loaded.causal
    assert set(loaded.provenance.parity) == {"ort_vs_torch", "batch_vs_single"}
    assert max(loaded.provenance.parity.values()) <= 1e-5
    assert ("attention pooling" in loaded.architecture) is (pooling == "attention")
    assert ("last-state pooling" in loaded.architecture) is (pooling == "last")
    x = np.random.default_rng(0).standard_normal((3, 11, 12)).astype(np.float32)
    feeds = {"x": x} | {s.input: np.zeros((2, 3, 8), np.float32) for s in loaded.states}
    y = sess.run(["y"], feeds)[0]
    assert y.shape == (3, 9)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)


def test_last_pooling_is_each_directions_final_state() -> None:
    net = _net("last").eval()
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        logits, h, _c = net.logits(x, *net.zero_states(2))
        # h: [directions, batch, hidden], the forward final state then the backward one
        expected = net.proj(torch.cat([h[0], h[1]], dim=-1))
    torch.testing.assert_close(logits, expected)


def test_pooling_other_than_mean_needs_a_sequence_head() -> None:
    for pooling in ("last", "attention"):
        with pytest.raises(ValueError, match="needs a sequence head"):
            RecurrentNet(NetConfig(input_dim=3, output_dim=2, pooling=pooling))
