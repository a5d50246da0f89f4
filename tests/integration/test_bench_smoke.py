"""``lstm-client bench`` against a real server: the report's keys, frames served, no errors.

No timing assertions: the machine is small and shared, so only the report's shape
and its accounting are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import FixtureModels
from tests.harness import REPO, metric_sum, scrape, start_server

REQUIRED = ("frames_per_s", "latency_ms", "errors", "realtime_fraction", "streams", "duration_s", "client_cpu_s")


def _bench(target: str, *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lstm_client.cli", "--target", target, "bench", *args, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    document: dict[str, Any] = json.loads(done.stdout)
    return document


@pytest.mark.parametrize("mode", ["stream", "predict"])
def test_bench_reports_frames_and_no_errors(fixture_models: FixtureModels, mode: str) -> None:
    """A 2 s real-time run of 4 workers processes frames with no errors and a complete report."""
    with start_server(fixture_models.root) as server:
        report = _bench(
            server.target, "lstm", "--streams", "4", "--duration", "2", "--chunk-frames", "10",
            "--realtime", "--warmup", "0.3", "--mode", mode,
        )
        served = metric_sum(scrape(server.metrics_url), "lstm_serve_frames_total", model="lstm")
    for key in REQUIRED:
        assert key in report, key
    assert set(report["latency_ms"]) >= {"p50", "p95", "p99"}
    assert report["errors"] == {}
    assert report["error_count"] == 0
    assert report["streams"] == 4 and report["mode"] == mode and report["realtime"] is True
    assert report["frames"] > 0 and report["frames_per_s"] > 0
    assert report["latency_ms"]["p50"] is not None
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["p99"]
    assert report["realtime_fraction"] > 0
    assert report["client_cpu_s"] > 0
    # the server ran at least every frame the client counted (the client counts the measured window only)
    assert served >= report["frames"]


def test_bench_as_fast_as_possible_and_human_output(fixture_models: FixtureModels) -> None:
    """Closed-loop mode on the GRU model, human-readable output."""
    with start_server(fixture_models.root, args=["--no-batching"]) as server:
        cmd = [sys.executable, "-m", "lstm_client.cli", "--target", server.target, "bench", "gru",
               "--streams", "3", "--duration", "1", "--chunk-frames", "5", "--warmup", "0.2"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert "frames/s" in done.stdout and "chunk latency ms" in done.stdout and "errors            none" in done.stdout


def test_bench_unknown_model_fails_cleanly(server: Any) -> None:
    """An unknown model is a NOT_FOUND error with exit code 1, not a traceback."""
    cmd = [sys.executable, "-m", "lstm_client.cli", "--target", server.target, "bench", "nope",
           "--duration", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 1
    assert "NOT_FOUND" in done.stderr
