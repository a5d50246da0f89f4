"""lstm-serve under the Open Inference Protocol, driven by the real tritonclient and
kserve clients: metadata and config, stateless and sequence inference equal to the
native API, Triton's sequence errors, statistics, compression, typed contents."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.harness import ServerHandle
from tests.kserve.conftest import Oip, decode, encode

pytestmark = pytest.mark.usefixtures("bundled_server")

ATOL = 1e-5


def _har(seed: int, frames: int = 10) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((frames, 6)).astype(np.float32)


def _native_stream(server: ServerHandle, chunks: list[np.ndarray]) -> np.ndarray:
    with server.client() as client:
        return client.stream("har", chunks).outputs


def _step(seq: Any, x: np.ndarray, first: bool = False, last: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "har", "inputs": {"x": encode(x[np.newaxis])}, "sequence_id": seq,
            "sequence_start": first, "sequence_end": last, **extra}


def _y(answer: dict[str, Any]) -> np.ndarray:
    assert "error" not in answer, answer
    return decode(answer["outputs"]["y"])[0]


def test_metadata_and_config_derive_from_the_manifest(bundled_server: ServerHandle, oip: Oip) -> None:
    described = oip(bundled_server, "describe", models=["har", "vowels", "kws"])
    assert described["live"] and described["ready"]
    assert {"sequence", "statistics", "model_repository"} <= set(described["server"]["extensions"])
    har = described["models"]["har"]
    assert har["ready"] and har["metadata"]["platform"] == "onnxruntime_onnx"
    assert har["metadata"]["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "-1", "6"]}]
    assert har["config"]["input"][0]["dims"] == ["-1", "6"] and int(har["config"]["max_batch_size"]) > 0
    sequence = har["config"]["sequence_batching"]
    assert int(sequence["max_sequence_idle_microseconds"]) == 300 * 10**6
    assert [(s["input_name"], s["output_name"]) for s in sequence["state"]] == [("h0", "hN"), ("c0", "cN")]
    vowels = described["models"]["vowels"]["config"]
    assert "sequence_batching" not in vowels and "dynamic_batching" in vowels
    assert vowels["output"][0]["dims"] == ["9"]
    kws = described["models"]["kws"]
    assert kws["config"]["input"] == [{"name": "AUDIO", "data_type": "TYPE_INT16", "dims": ["-1"]}]
    assert [o["name"] for o in kws["metadata"]["outputs"]] == ["y", "EVENTS"]


def test_stateless_vowels_batch_equals_native_predict(bundled_server: ServerHandle, oip: Oip) -> None:
    x = np.random.default_rng(3).standard_normal((4, 25, 12)).astype(np.float32)
    answer = oip(bundled_server, "infer", requests=[{"model": "vowels", "inputs": {"x": encode(x)}}])[0]
    with bundled_server.client() as client:
        native = client.predict("vowels", x).outputs
    np.testing.assert_allclose(decode(answer["outputs"]["y"]), native, atol=ATOL)


@pytest.mark.parametrize("seq", [4242, "sensor-7/left"])
def test_unary_sequence_equals_native_stream(bundled_server: ServerHandle, oip: Oip, seq: Any) -> None:
    chunks = [_har(i) for i in range(4)]
    requests = [_step(seq, c, i == 0, i == 3, request_id=f"r{i}") for i, c in enumerate(chunks)]
    answers = oip(bundled_server, "infer", requests=requests)
    assert [a["id"] for a in answers] == ["r0", "r1", "r2", "r3"]
    np.testing.assert_allclose(np.concatenate([_y(a) for a in answers]), _native_stream(bundled_server, chunks),
                               atol=ATOL)


def test_32_interleaved_stream_sequences_each_equal_native(bundled_server: ServerHandle, oip: Oip) -> None:
    chunks = {s: [_har(100 * s + i, 5) for i in range(3)] for s in range(1, 33)}
    requests = [
        _step(s, chunks[s][i], i == 0, i == 2, request_id=f"{s}:{i}") for i in range(3) for s in range(1, 33)
    ]
    answers = oip(bundled_server, "stream", requests=requests)
    by_sequence: dict[int, list[tuple[int, np.ndarray]]] = {}
    for answer in answers:
        s, i = (int(v) for v in answer["id"].split(":"))
        by_sequence.setdefault(s, []).append((i, _y(answer)))
    for s, got in by_sequence.items():
        assert [i for i, _ in got] == [0, 1, 2], f"sequence {s} answered out of order"
        expected = _native_stream(bundled_server, chunks[s])
        np.testing.assert_allclose(np.concatenate([y for _, y in got]), expected, atol=ATOL)
    assert len(by_sequence) == 32


def test_a_pipelined_sequence_keeps_arrival_order(bundled_server: ServerHandle, oip: Oip) -> None:
    chunks = [_har(500 + i, 3) for i in range(20)]
    requests = [_step("piped", c, i == 0, i == 19, request_id=str(i)) for i, c in enumerate(chunks)]
    answers = oip(bundled_server, "stream", requests=requests)
    assert [a["id"] for a in answers] == [str(i) for i in range(20)]
    np.testing.assert_allclose(np.concatenate([_y(a) for a in answers]), _native_stream(bundled_server, chunks),
                               atol=ATOL)


def test_v2_sequence_continues_on_stream_predict_and_back(bundled_server: ServerHandle, oip: Oip) -> None:
    chunks = [_har(700 + i) for i in range(4)]
    first = oip(bundled_server, "infer", requests=[_step(9090, chunks[0], first=True)])[0]
    with bundled_server.client() as client:
        middle = client.stream("har", chunks[1:3], session_id="9090", must_exist=True, keep_session=True).outputs
    last = oip(bundled_server, "infer", requests=[_step(9090, chunks[3], last=True)])[0]
    got = np.concatenate([_y(first), middle, _y(last)])
    np.testing.assert_allclose(got, _native_stream(bundled_server, chunks), atol=ATOL)


def test_triton_sequence_errors(bundled_server: ServerHandle, oip: Oip) -> None:
    x = _har(1)
    no_id = {"model": "har", "inputs": {"x": encode(x[np.newaxis])}}
    answers = oip(bundled_server, "infer", requests=[no_id, _step(777001, x)])
    assert answers[0]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "must specify a non-zero or non-empty correlation ID" in answers[0]["error"]
    assert answers[1]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert answers[1]["error"].startswith(
        "inference request for sequence 777001 to model 'har' must specify the START flag on the first request"
    )
    wrong = oip(bundled_server, "raw_infer", model="har", inputs={"x": encode(x[np.newaxis])},
                parameters={"sequence_id": ["int64_param", 5], "sequence_start": ["int64_param", 1]})
    assert wrong["status"] == "INVALID_ARGUMENT"
    assert "invalid value type for 'sequence_start' parameter, expected bool_param" in wrong["error"]
    wrong_id = oip(bundled_server, "raw_infer", model="har", inputs={"x": encode(x[np.newaxis])},
                   parameters={"sequence_id": ["double_param", 5.0]})
    assert wrong_id["status"] == "INVALID_ARGUMENT" and "'sequence_id' parameter" in wrong_id["error"]
    in_band = oip(bundled_server, "stream", requests=[_step(777002, x, request_id="late"),
                                                      _step(777003, x, True, True, request_id="ok")])
    assert any("must specify the START flag" in a.get("error", "") for a in in_band)
    assert any(a.get("id") == "ok" for a in in_band), "the stream stays open after an in-band error"


def test_start_on_an_active_sequence_restarts_it(bundled_server: ServerHandle, oip: Oip) -> None:
    a, b = _har(11), _har(12)
    answers = oip(bundled_server, "infer", requests=[_step("again", a, first=True), _step("again", b, first=True)])
    np.testing.assert_allclose(_y(answers[1]), _native_stream(bundled_server, [b]), atol=ATOL)


def test_typed_contents_gzip_and_ignored_parameters(bundled_server: ServerHandle, oip: Oip) -> None:
    chunks = [_har(40 + i) for i in range(2)]
    requests = [_step("gzip", chunks[0], True, priority=1, timeout=5_000_000), _step("gzip", chunks[1], last=True)]
    answers = oip(bundled_server, "infer", requests=requests, compression="gzip")
    np.testing.assert_allclose(np.concatenate([_y(a) for a in answers]), _native_stream(bundled_server, chunks),
                               atol=ATOL)
    typed = [
        oip(bundled_server, "raw_infer", model="har", typed=True, inputs={"x": encode(c[np.newaxis])}, id=f"t{i}",
            parameters={"sequence_id": ["string_param", "typed"], "sequence_start": ["bool_param", i == 0],
                        "sequence_end": ["bool_param", i == 1], "priority": ["uint64_param", 3],
                        "custom": ["string_param", "ignored"]})
        for i, c in enumerate(chunks)
    ]
    assert [t["id"] for t in typed] == ["t0", "t1"]
    np.testing.assert_allclose(np.concatenate([_y(t) for t in typed]), _native_stream(bundled_server, chunks),
                               atol=ATOL)
    flagged = oip(bundled_server, "stream", compression="deflate",
                  requests=[_step("flag", chunks[0], True, True, final_flag=True)])[0]
    assert flagged["parameters"]["triton_final_response"] == "bool_param: true"


def test_kws_audio_sequence_returns_frames_and_events(bundled_server: ServerHandle, oip: Oip) -> None:
    pcm = (np.random.default_rng(5).standard_normal(16000) * 2000).astype("<i2")
    parts = [pcm[:8000], pcm[8000:]]
    requests = [
        {"model": "kws", "inputs": {"AUDIO": encode(p[np.newaxis])}, "sequence_id": "audio-1",
         "sequence_start": i == 0, "sequence_end": i == 1}
        for i, p in enumerate(parts)
    ]
    answers = oip(bundled_server, "infer", requests=requests)
    got = np.concatenate([_y(a) for a in answers])
    with bundled_server.client() as client:
        native = client.stream("kws", [p.tobytes() for p in parts], audio=("pcm16", 16000), frame_outputs=True)
    np.testing.assert_allclose(got, native.outputs, atol=ATOL)
    assert all(decode(a["outputs"]["EVENTS"]).shape[0] == 1 for a in answers)


def test_statistics_grow(bundled_server: ServerHandle, oip: Oip) -> None:
    def success() -> int:
        stats = oip(bundled_server, "statistics", model="har")["model_stats"][0]["inference_stats"]
        return int(stats.get("success", {}).get("count", 0))

    before = success()
    oip(bundled_server, "infer", requests=[_step("stats", _har(2), True, True)])
    after = oip(bundled_server, "statistics", model="har")["model_stats"][0]
    assert int(after["inference_stats"]["success"]["count"]) == before + 1
    for part in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(after["inference_stats"][part]["ns"]) > 0, part
    assert int(after["execution_count"]) >= 1 and int(after["inference_count"]) >= int(after["execution_count"])


def test_kserve_client_infers_and_reports_readiness(bundled_server: ServerHandle, oip: Oip) -> None:
    x = np.random.default_rng(8).standard_normal((2, 15, 12)).astype(np.float32)
    answers = oip(bundled_server, "kserve", model="vowels", requests=[{"model": "vowels", "inputs": {"x": encode(x)}}])
    assert answers[0] == {"server_ready": True, "model_ready": True}
    with bundled_server.client() as client:
        np.testing.assert_allclose(decode(answers[1]["outputs"]["y"]), client.predict("vowels", x).outputs, atol=ATOL)
