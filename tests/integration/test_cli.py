"""The lstm-client CLI contract: --json documents, batches, errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from tests.harness import FEATURE_DIM, REPO, ServerHandle, frames

CLIENT = str(Path(sys.executable).parent / "lstm-client")


def run(server: ServerHandle, *args: str) -> subprocess.CompletedProcess[str]:
    """Run lstm-client against ``server``."""
    return subprocess.run([CLIENT, "--target", server.target, *args], capture_output=True, text=True, timeout=60)


def run_json(server: ServerHandle, *args: str) -> Any:
    """Run with --json and parse the single document on stdout."""
    done = run(server, *args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_models_and_metadata(server: ServerHandle) -> None:
    models = run_json(server, "models")
    by_name = {m["name"]: m for m in models}
    for key in ("name", "version", "input_kind", "feature_dim", "streamable"):
        assert key in by_name["lstm"]
    assert by_name["lstm"]["input_kind"] == "features" and by_name["lstm"]["feature_dim"] == FEATURE_DIM
    meta = run_json(server, "metadata", "bilstm")
    assert meta["head"] == "sequence" and meta["labels"] == ["a", "b", "c", "d"] and not meta["streamable"]
    help_run = run(server, "--help")
    assert help_run.returncode == 0 and help_run.stdout.startswith("usage: lstm-client")
    listed = re.findall(r"^ {4}(\w+) ", help_run.stdout, re.MULTILINE)
    assert listed == ["health", "models", "metadata", "predict", "stream", "bench"]
    # every file an example names is in the repository
    named = [word for word in help_run.stdout.split() if word.startswith("demo/")]
    assert named and all((REPO / path).is_file() for path in named), named


def test_predict_single_batch_and_npz(server: ServerHandle, tmp_path: Path) -> None:
    x = frames(0, 12)
    np.save(tmp_path / "one.npy", x)
    single = run_json(server, "predict", "lstm", "--input", str(tmp_path / "one.npy"))
    assert single["model"] == "lstm" and single["version"] == "1"
    assert np.array(single["outputs"]).shape == (12, 4)
    np.save(tmp_path / "batch.npy", np.stack([x, x]))
    batch = run_json(server, "predict", "lstm", "--input", str(tmp_path / "batch.npy"))
    assert np.array(batch["outputs"]).shape == (2, 12, 4)
    np.savez(tmp_path / "ragged.npz", seq_0=x[:5], seq_1=x, seq_2=x[:1])
    ragged = run_json(server, "predict", "lstm", "--input", str(tmp_path / "ragged.npz"))
    assert [len(o) for o in ragged["outputs"]] == [5, 12, 1]
    np.testing.assert_allclose(ragged["outputs"][1], single["outputs"], atol=1e-6)
    seq = run_json(server, "predict", "bilstm", "--input", str(tmp_path / "ragged.npz"))
    assert np.array(seq["outputs"]).shape == (3, 4)
    text = run(server, "predict", "lstm", "--input", str(tmp_path / "one.npy"))
    assert text.returncode == 0 and "sequence 0: 12 row(s), last row top class " in text.stdout


def test_predict_text_shows_forecasts_as_values(bundled_server: ServerHandle, tmp_path: Path) -> None:
    np.save(tmp_path / "motion.npy", frames(1, 20))
    text = run(bundled_server, "predict", "forecast", "--input", str(tmp_path / "motion.npy"))
    assert text.returncode == 0, text.stderr
    assert "last row [t+1:acc_x=" in text.stdout and "(30 values; --json for all)" in text.stdout


def test_stream_json_matches_predict(server: ServerHandle, tmp_path: Path) -> None:
    x = frames(1, 33)
    np.save(tmp_path / "x.npy", x)
    streamed = run_json(server, "stream", "gru", "--input", str(tmp_path / "x.npy"), "--chunk-frames", "7")
    whole = run_json(server, "predict", "gru", "--input", str(tmp_path / "x.npy"))
    assert streamed["session_id"] and streamed["model"] == "gru"
    np.testing.assert_allclose(streamed["outputs"], whole["outputs"], atol=1e-5)


def test_errors_name_the_status(server: ServerHandle, tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", frames(0, 3))
    done = run(server, "predict", "nope", "--input", str(tmp_path / "x.npy"), "--json")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.startswith("error: NOT_FOUND:")
    done = run(server, "stream", "bilstm", "--input", str(tmp_path / "x.npy"))
    assert done.returncode != 0 and "FAILED_PRECONDITION" in done.stderr
