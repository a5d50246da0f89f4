"""Operations: health per model, ListModels with broken packages, reflection, metrics,
graceful shutdown."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from lstm_client import StatusError
from tests.conftest import FixtureModels
from tests.harness import ServerHandle, frames, metric_sum, scrape, start_server, wait_until


def test_health_per_model_and_broken_package_reported(server: ServerHandle) -> None:
    with server.client() as client:
        assert client.health() == "SERVING"
        assert client.health("lstmserve.v1.Inference") == "SERVING"
        assert client.health("models/lstm") == "SERVING"
        assert client.health("models/gru/1") == "SERVING"
        assert client.health("models/broken") == "NOT_SERVING"
        models = {m["name"]: m for m in client.list_models()}
        assert set(models) == {"lstm", "gru", "bilstm", "audio", "broken"}
        broken = models["broken"]
        assert not broken["ready"]
        assert "broken/1/manifest.json" in broken["error"] and "input.name" in broken["error"]
        assert models["lstm"]["ready"] and models["lstm"]["streamable"]
        assert models["lstm"]["providers"] == ["CPUExecutionProvider"]
        assert not models["bilstm"]["streamable"] and models["bilstm"]["head"] == "sequence"
        assert [s["name"] for s in models["gru"]["states"]] == ["h"]
        assert [s["name"] for s in models["lstm"]["states"]] == ["h", "c"]


def test_reflection_lists_the_service(server: ServerHandle) -> None:
    with grpc.insecure_channel(server.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "lstmserve.v1.Inference" in services
    assert "grpc.health.v1.Health" in services


def test_metrics_present_and_moving(server: ServerHandle) -> None:
    before = scrape(server.metrics_url)
    with server.client() as client:
        client.predict("lstm", frames(0, 10))
        client.stream("lstm", [frames(1, 5), frames(2, 5)])
        with pytest.raises(StatusError):
            client.predict("nope", frames(0, 1))
    after = scrape(server.metrics_url)

    def moved(name: str, **labels: str) -> bool:
        return metric_sum(after, name, **labels) > metric_sum(before, name, **labels)

    assert moved("lstm_serve_rpc_duration_seconds_count", method="Predict", code="OK")
    assert moved("lstm_serve_rpc_duration_seconds_count", method="StreamPredict", code="OK")
    assert moved("lstm_serve_queue_wait_seconds_count", model="lstm")
    assert moved("lstm_serve_compute_seconds_count", model="lstm")
    assert moved("lstm_serve_batch_size_count", model="lstm")
    assert moved("lstm_serve_chunk_latency_seconds_count", model="lstm")
    assert moved("lstm_serve_frames_total", model="lstm")
    assert moved("lstm_serve_sessions_created_total", model="lstm")
    assert moved("lstm_serve_sessions_ended_total", reason="ended")
    assert moved("lstm_serve_errors_total", method="Predict", code="NOT_FOUND")
    assert metric_sum(after, "lstm_serve_model_ready", model="broken") == 0
    assert metric_sum(after, "lstm_serve_model_ready", model="lstm") == 1
    # The stream's session was counted while attached and is not once it ended.
    active = 'lstm_serve_sessions_active{model="lstm",version="1"}'
    assert active in after and 0 <= after[active] <= before.get(active, 0.0)
    assert metric_sum(after, "lstm_serve_model_providers_info", model="lstm", providers="CPUExecutionProvider") == 1
    assert metric_sum(after, "lstm_serve_model_providers_info", model="broken") == 0


def test_graceful_shutdown_drains(fixture_models: FixtureModels) -> None:
    env = {"LSTM_SERVE_SERVER__GRACE_PERIOD_S": "5"}
    x = frames(4, 30)
    with start_server(fixture_models.root, env=env) as handle, handle.client() as client:
        want = client.predict("lstm", x).outputs[0]
        call = client.open_stream()
        call.config(model={"name": "lstm"})
        call.recv()
        call.chunk(0, x[:10])
        call.recv()
        handle.process.send_signal(signal.SIGTERM)
        with handle.client() as fresh:
            assert wait_until(lambda: fresh.health() == "NOT_SERVING")
            with pytest.raises(StatusError) as info:
                fresh.stream("lstm", [x[:1]])
            assert info.value.code.name == "UNAVAILABLE" and "draining" in info.value.details
        # The open stream is warned at once, then finishes within the grace period.
        warning = call.recv()
        assert warning.WhichOneof("message") == "draining"
        assert 0 < warning.draining.time_left_s <= 5 and warning.draining.last_sequence_number == 0
        assert not warning.draining.closing and not warning.draining.resume_token  # this server has no keys
        call.chunk(1, x[10:])
        rest = call.recv().result
        call.end()
        call.close()
        assert [r.WhichOneof("message") for r in call.responses()] == ["final"]
        got = np.frombuffer(rest.outputs.data, "<f4").reshape(20, 4)
        np.testing.assert_allclose(got, want[10:], atol=1e-5)
        assert handle.process.wait(timeout=20) == 0
        assert "stopped" in handle.log()


def test_cli_serve_help_teaches() -> None:
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lstm-serve"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "LSTM_SERVE_SESSIONS__TTL_S" in out and "examples:" in out
    assert "--port-file PATH" in out
