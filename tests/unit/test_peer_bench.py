"""``make bench-peer``'s pure parts (scripts/lstm_bench/peer.py): the MLServer settings
made from a manifest, what a stateless client sends, the held criterion and the
summary. Nothing here needs MLServer (it lives in .venv-peer, which CI does not make)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import pytest

from lstm_serve.manifest import load_manifest
from tests.harness import REPO

sys.path.insert(0, str(REPO / "scripts"))
from lstm_bench import peer


@pytest.mark.parametrize("model", ["har", "har-gru"])
def test_model_settings_follow_the_manifest(model: str) -> None:
    package = REPO / "models" / model / "1"
    manifest = load_manifest(package)
    settings = peer.model_settings(manifest, package)
    assert settings["name"] == model
    assert settings["implementation"] == "runtime.StatelessLstm"
    assert settings["parameters"]["uri"] == str((package / "model.onnx").resolve())
    extra = settings["parameters"]["extra"]
    assert extra["input"] == manifest.input.name and extra["output"] == manifest.output.name
    assert extra["states"] == [[s.input, s.output] for s in manifest.states]  # h and c, or h alone for a GRU
    json.dumps(settings)


def test_server_settings_set_only_where_it_listens() -> None:
    assert peer.server_settings(1, 2, 3) == {"host": "127.0.0.1", "http_port": 1, "grpc_port": 2, "metrics_port": 3}
    assert peer.server_settings(1, 2, 3, {"debug": False})["debug"] is False
    assert peer.parse_setting("debug=false") == ("debug", False)
    assert peer.parse_setting("parallel_workers=2") == ("parallel_workers", 2)
    with pytest.raises(argparse.ArgumentTypeError):
        peer.parse_setting("debug")


def test_a_stateless_chunk_carries_the_state() -> None:
    manifest = load_manifest(REPO / "models" / "har" / "1")
    model = peer.StatelessModel.of(manifest)
    chunk = np.ones((10, manifest.input.feature_dim), np.float32).tobytes()
    stream = peer.StatelessStream(None, model, [chunk], 10, manifest.input.feature_dim, None, 0.0)
    stream.state = [np.full(shape, 2.0, np.float32).tobytes() for _, _, shape in model.states]
    request = stream.request(0)
    assert [i.name for i in request.inputs] == [manifest.input.name, *(s.input for s in manifest.states)]
    assert list(request.inputs[0].shape) == [1, 10, manifest.input.feature_dim]
    for tensor, state in zip(request.inputs[1:], manifest.states, strict=True):
        assert list(tensor.shape) == [state.layers, 1, state.hidden]
    assert list(request.raw_input_contents) == [chunk, *stream.state]


def _point(streams: int, p99: float | None, rt: float, errors: int = 0, realtime: bool = True) -> dict[str, Any]:
    return {"streams": streams, "realtime": realtime, "latency_ms": {"p50": 1.0, "p99": p99}, "error_count": errors,
            "unanswered_chunks": 0, "realtime_fraction": rt, "frames_per_s": streams * 100.0,
            "cpu_us_per_chunk": 1000.0, "server_cpu_cores": 0.5, "client_cpu_cores": 0.2,
            "held": realtime and p99 is not None and p99 <= 100 and not errors and rt >= 0.98}


def test_held_is_make_bench_criterion() -> None:
    assert peer.held(_point(8, 99.0, 0.99))
    assert not peer.held(_point(8, 101.0, 0.99))
    assert not peer.held(_point(8, 5.0, 0.97))
    assert not peer.held(_point(8, 5.0, 1.0, errors=1))
    assert not peer.held(_point(8, None, 1.0))
    assert not peer.held({**_point(8, 5.0, 1.0), "unanswered_chunks": 3})  # cut off at the drain deadline


def test_summary_and_table() -> None:
    native = [_point(8, 5, 1), _point(16, 6, 1), _point(32, 9, 1), _point(64, 30, 0.99), _point(128, 900, 0.9)]
    stateless = [_point(8, 10, 1), _point(16, 80, 0.99), _point(32, 400, 0.8), _point(64, 900, 0.5)]
    results: dict[str, Any] = {
        "started_at": "today", "elapsed_s": 1.0, "chunk_frames": 10, "duration_s": 6.0, "warmup_s": 1.0,
        "machine": {"cpu_model": "cpu", "nproc": 2, "loadavg_at_start": [1.0]}, "parity_max_abs_diff": 0.0,
        "sweep_streams": [8, 16, 32, 64, 128], "saturation_streams": 128,
        "servers": {
            "lstm-serve": {"version": "abc1234", "sweep": native,
                           "saturation": {**_point(128, 50, 2.0, realtime=False), "frames_per_s": 20000.0}},
            "mlserver": {"version": "1.7.1", "sweep": stateless,
                         "saturation": {**_point(128, 500, 0.3, realtime=False), "frames_per_s": 4000.0}},
        },
    }
    results["summary"] = summary = peer.summarize(results)
    assert summary["lstm-serve"]["sessions_held"] == 64 and summary["mlserver"]["sessions_held"] == 16
    assert summary["ratios"]["sessions_held"] == 4.0
    assert summary["ratios"]["saturated_frames_per_s"] == 5.0
    assert summary["paced_streams"] == 16  # the most streams both held
    assert not summary["met"]
    table = peer.render(results)
    assert "| real-time sessions held (p99 <= 100 ms, 0 errors, >= 98 % of real time) | 64 | 16 | 4.00 " in table
    assert "mlserver: 128" in table  # MLServer's sweep stopped after two misses
    assert "128 (as fast as possible) | mlserver" in table
