"""Client auto-resume: a stream whose server goes away (SIGTERM with a drain, or
SIGKILL) moves to the other replica behind the same target and loses nothing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from lstm_client import LstmClient
from lstm_client.wav import read_wav
from lstm_serve.tokens import write_key_file
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, REPO, ServerHandle, metric_sum, scrape, start_server, wait_until


def _kill_when(server: ServerHandle, how: signal.Signals, after_results: int, seen: list[int]) -> threading.Thread:
    def watch() -> None:
        for _ in range(2000):  # bounded: 2000 x 5 ms
            if len(seen) >= after_results:
                server.process.send_signal(how)
                return
            threading.Event().wait(0.005)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stream_survives_its_server(fixture_models: FixtureModels, tmp_path: Path, how: signal.Signals) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys)
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(keys), "LSTM_SERVE_SERVER__GRACE_PERIOD_S": "1"}
    x = np.random.default_rng(9).standard_normal((120, FEATURE_DIM)).astype(np.float32)
    chunks = [x[i : i + 4] for i in range(0, 120, 4)]
    with start_server(fixture_models.root, env=env) as a, start_server(fixture_models.root, env=env) as b:
        with b.client() as reference:
            whole = reference.stream("lstm", chunks).outputs
        seen: list[int] = []

        def count(response: object) -> None:
            if response.WhichOneof("message") == "result":  # type: ignore[attr-defined]
                seen.append(1)

        killer = _kill_when(a, how, 8, seen)
        with LstmClient(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}") as client:
            result = client.stream(
                "lstm", chunks, auto_resume=True, token_every=5, pace_s=0.02, on_response=count
            )
        killer.join()
    assert result.resumes >= 1
    np.testing.assert_allclose(result.outputs, whole, atol=1e-6)
    assert [r.sequence_number for r in result.results] == list(range(len(chunks)))


def test_cli_auto_resume_reports_the_whole_session(fixture_models: FixtureModels, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys)
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(keys), "LSTM_SERVE_SERVER__GRACE_PERIOD_S": "1"}
    x = np.random.default_rng(10).standard_normal((80, FEATURE_DIM)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with start_server(fixture_models.root, env=env) as a, start_server(fixture_models.root, env=env) as b:
        with b.client() as reference:
            whole = reference.predict("lstm", x).outputs[0]
        cmd = [
            sys.executable, "-m", "lstm_client.cli", "--target", f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}",
            "stream", "lstm", "--input", str(tmp_path / "x.npy"), "--chunk-frames", "4", "--realtime",
            "--auto-resume", "--token-every", "3", "--json",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # the stream paces 20 chunks at 40 ms; cut it once A has run some of them
        assert wait_until(lambda: metric_sum(scrape(a.metrics_url), "lstm_serve_frames_total", model="lstm") >= 16)
        a.process.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    document = json.loads(out)
    assert document["resumes"] >= 1
    np.testing.assert_allclose(np.array(document["outputs"]), whole, atol=1e-5)


def test_cli_predict_carries_the_session_in_a_token_file(fixture_models: FixtureModels, tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys)
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(keys)}
    x = np.random.default_rng(11).standard_normal((20, FEATURE_DIM)).astype(np.float32)
    np.save(tmp_path / "a.npy", x[:10])
    np.save(tmp_path / "b.npy", x[10:])
    token = tmp_path / "session.token"
    with start_server(fixture_models.root, env=env) as a, start_server(fixture_models.root, env=env) as b:
        with a.client() as reference:
            whole = reference.predict("lstm", x).outputs[0]

        def predict(server: ServerHandle, *extra: str) -> dict[str, object]:
            cli = [sys.executable, "-m", "lstm_client.cli", "--target", server.target]
            cmd = [*cli, "predict", "lstm", *extra, "--json"]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stderr
            return dict(json.loads(done.stdout))

        first = predict(a, "--input", str(tmp_path / "a.npy"), "--session-id", "cli-token", "--frame-offset", "0",
                        "--token-out", str(token))
        second = predict(b, "--input", str(tmp_path / "b.npy"), "--frame-offset", "10", "--token-in", str(token),
                         "--token-out", str(token))
    assert first["frame_offset"] == 0 and second["frame_offset"] == 10 and second["replayed"] is False
    got = np.concatenate([np.array(first["outputs"]), np.array(second["outputs"])])
    np.testing.assert_allclose(got, whole, atol=1e-5)
    assert token.stat().st_size > 0


def test_kws_demo_cut_mid_keyword_gives_the_same_events(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys)
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(keys), "LSTM_SERVE_SERVER__GRACE_PERIOD_S": "1"}
    wav = read_wav(REPO / "demo" / "demo1.wav")
    chunks = wav.chunks(100)
    fmt = (wav.encoding, wav.sample_rate_hz)
    truth = json.loads((REPO / "demo" / "demo1.json").read_text())
    with start_server(REPO / "models", env=env) as a, start_server(REPO / "models", env=env) as b:
        with b.client() as reference:
            whole = reference.stream("kws", chunks, audio=fmt).events
        seen: list[int] = []

        def count(response: object) -> None:
            if response.WhichOneof("message") == "result":  # type: ignore[attr-defined]
                seen.append(1)

        # cut inside the second keyword
        cut = int(truth["keywords"][1]["start_s"] * 10) + 2
        killer = _kill_when(a, signal.SIGTERM, cut, seen)
        with LstmClient(f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}") as client:
            result = client.stream("kws", chunks, audio=fmt, auto_resume=True, pace_s=0.1, on_response=count)
        killer.join()
    assert result.resumes >= 1
    assert [e.label for e in result.events] == [e.label for e in whole]
    for got, want in zip(result.events, whole, strict=True):
        assert abs(got.start_s - want.start_s) <= 0.0101 and abs(got.end_s - want.end_s) <= 0.0101
