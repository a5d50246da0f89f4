"""``lstm-client bench`` against a real server: the report's keys, frames served, no errors.

No timing assertions: the machine is small and shared, so only the report's shape
and its accounting are checked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
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


def test_bench_package_quick_json(tmp_path: Path) -> None:
    """``scripts/bench.py`` (the package entry point): one tiny point per part, including the
    old-against-new comparison against HEAD (a git worktree), prints a parseable ``--json``
    summary and writes only the generated block of ``benchmarks.md``."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmarks.md").write_text(
        "# Benchmarks\n\nHand-written, kept.\n\n<!-- bench:begin -->\nold generated block\n"
        "<!-- bench:end -->\n\nAlso kept.\n"
    )
    cmd = [sys.executable, "scripts/bench.py", "--quick", "--json", "--configs", "on", "--streams", "2",
           "--duration", "0.5", "--no-profile", "--base", "HEAD", "--rounds", "1", "--compare-duration", "0.5",
           "--no-floor", "--no-scaling", "--models", str(tmp_path / "models"), "--docs", str(docs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    summary: dict[str, Any] = json.loads(done.stdout)
    assert summary["quick"] is True
    assert summary["machine"]["cpu_count"] == os.cpu_count()
    assert summary["machine"]["cpu_model"] and summary["machine"]["onnxruntime"]
    on = summary["servers"]["on"]
    assert on["saturated_frames_per_s"] > 0 and on["saturated_cpu_us_per_chunk"] > 0
    assert on["paced"][0]["streams"] == 2 and on["paced"][0]["errors"] == 0
    compare = summary["compare"]
    assert set(compare["sides"]) == {"old", "new"}
    for figure in ("served_vs_ort", "saturated_cpu_us_per_chunk", "paced_cpu_us_per_chunk", "predict_p50_ms"):
        ratio = compare["ratios"][figure]
        assert ratio["old"] > 0 and ratio["new"] > 0 and ratio["new_over_old"] > 0
    results = json.loads((docs / "bench-results.json").read_text())
    assert results["compare"]["sides"]["old"]["commit"] == results["machine"]["git"]["commit"]
    text = (docs / "benchmarks.md").read_text()
    assert text.startswith("# Benchmarks\n\nHand-written, kept.\n") and text.endswith("\n\nAlso kept.\n")
    assert "old generated block" not in text and "## This code against HEAD" in text
    assert text.count("<!-- bench:begin") == 1 and text.count("<!-- bench:end -->") == 1
    assert {p.name for p in (docs / "img").iterdir()} >= {"bench-latency.png", "bench-throughput.png"}


def test_bench_streams_audio_chunks_to_an_audio_model() -> None:
    """``--wav`` with an audio model: PCM chunks of --chunk-ms, answered with frames, no errors."""
    with start_server(REPO / "models") as server:
        report = _bench(server.target, "kws", "--streams", "2", "--duration", "1", "--realtime", "--warmup", "0.2",
                        "--chunk-ms", "100", "--wav", "demo/demo1.wav")
        audio_s = metric_sum(scrape(server.metrics_url), "lstm_serve_audio_seconds_total", model="kws")
    assert report["input"] == "audio" and report["chunk_ms"] == 100.0
    assert report["error_count"] == 0 and report["frames"] > 0
    assert audio_s >= report["chunks"] * 0.1 * 0.99, "each chunk the client counted carried 100 ms of audio"


def test_bench_stateful_predict_keeps_one_session_per_caller(fixture_models: FixtureModels) -> None:
    with start_server(fixture_models.root) as server:
        report = _bench(server.target, "lstm", "--mode", "predict", "--session", "--streams", "3", "--duration", "1",
                        "--chunk-frames", "5", "--warmup", "0.2")
        created = metric_sum(scrape(server.metrics_url), "lstm_serve_sessions_created_total")
    assert report["session"] is True and report["error_count"] == 0 and report["frames"] > 0
    assert created == 3, "every call of a caller continued that caller's one session"


def test_bench_package_per_message_scaling_and_scale_docs(tmp_path: Path) -> None:
    """(f) and (g) of ``scripts/bench.py`` in a tiny run: the echo floor, the audio row, the
    ratios in the ``--json`` summary, --workers 1 and 2 on Redis, and docs/scale.md's block
    rendered from the same results."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (.ci/run installs it)")
    docs = tmp_path / "docs"
    docs.mkdir()
    cmd = [sys.executable, "scripts/bench.py", "--quick", "--json", "--configs", "none", "--no-compare",
           "--no-profile", "--duration", "0.5", "--floor-rounds", "1", "--models", str(tmp_path / "models"),
           "--docs", str(docs)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=280, cwd=REPO)
    assert done.returncode == 0, f"bench failed ({done.returncode}):\n{done.stdout}\n{done.stderr[-4000:]}"
    summary: dict[str, Any] = json.loads(done.stdout)
    ratios = summary["per_message_ratio"]
    assert set(ratios) == {"paced 64", "saturated 128", "kws audio, paced 64"}
    assert all(r is not None and r > 0 for r in ratios.values()), ratios
    results = json.loads((docs / "bench-results.json").read_text())
    loads = results["per_message"]["loads"]
    for row in loads.values():
        ours = row["lstm_serve"]
        assert ours["ort_thread_us_per_chunk"] > 0, "the executor thread is named onnxruntime for the OS"
        assert ours["non_ort_us_per_chunk"] < ours["cpu_us_per_chunk"]
        assert row["echo"]["cpu_us_per_chunk"] > 0
    assert results["per_message"]["stateful_predict"]["errors"] == 0
    scaling = results["scaling"]
    assert set(scaling["by_workers"]) == {"1", "2"}
    two = scaling["by_workers"]["2"]["points"][0]
    assert two["store_ops_per_chunk"] > 0 and two["redis_us_per_chunk"] > 0
    footprint = scaling["footprint"]
    assert footprint["snapshot_bytes"]["kws"] > footprint["snapshot_bytes"]["reference"] > 4096
    assert footprint["redis_bytes_per_session"]["reference"] > footprint["snapshot_bytes"]["reference"]
    scale = (docs / "scale.md").read_text()
    assert "<!-- scale:begin" in scale and "1,000,000 streams" in scale and "Redis Cluster shards" in scale
    text = (docs / "benchmarks.md").read_text()
    assert "## CPU per chunk against the echo floor" in text and "### Capacity planning" in text
    assert "## Scaling with cores" in text
