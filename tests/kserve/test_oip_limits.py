"""Bounded work under the Open Inference Protocol: a stream's backlog refuses in band
and stays open, a full batch queue refuses with a pushback trailer, and KServe's
client retries on UNAVAILABLE never advance a sequence twice."""

from __future__ import annotations

import signal

import grpc
import numpy as np

from lstmserve.kserve_v2 import grpc_service_pb2 as pb
from lstmserve.kserve_v2 import grpc_service_pb2_grpc as pb_grpc
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, redis_server, requires_redis, start_server
from tests.kserve.conftest import Oip, decode, encode


def _request(model: str, x: np.ndarray, **params: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id=str(params.pop("id", "")))
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(np.ascontiguousarray(x, "<f4").tobytes())
    for key, value in params.items():
        if isinstance(value, bool):
            request.parameters[key].bool_param = value
        elif isinstance(value, int):
            request.parameters[key].int64_param = value
        else:
            request.parameters[key].string_param = str(value)
    return request


def test_stream_backlog_refuses_in_band_and_stays_open(fixture_models: FixtureModels) -> None:
    env = {"LSTM_SERVE_KSERVE_V2__MAX_STREAM_BACKLOG": "2"}
    x = np.random.default_rng(0).standard_normal((1, 3000, FEATURE_DIM)).astype(np.float32)
    requests = [_request("lstm", x, id=i, sequence_id=f"b{i}", sequence_start=True, sequence_end=True)
                for i in range(40)]
    with start_server(fixture_models.root, env=env) as server, grpc.insecure_channel(server.target) as channel:
        answers = list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))
    assert len(answers) == 40
    refused = [a for a in answers if a.error_message]
    assert refused and all("MAX_STREAM_BACKLOG" in a.error_message for a in refused)
    assert len(refused) < 40 and all(a.infer_response.raw_output_contents for a in answers if not a.error_message)


def test_full_batch_queue_refuses_with_a_pushback_trailer(fixture_models: FixtureModels) -> None:
    env = {"LSTM_SERVE_BATCHING__MAX_QUEUE": "1"}
    x = np.random.default_rng(1).standard_normal((8, 400, FEATURE_DIM)).astype(np.float32)
    with start_server(fixture_models.root, env=env) as server, grpc.insecure_channel(server.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        calls = [stub.ModelInfer.future(_request("bilstm", x), timeout=60) for _ in range(48)]
        errors = [c.exception() for c in calls if c.exception() is not None]
    assert errors, "48 concurrent calls never filled a queue of 1"
    for error in errors:
        assert isinstance(error, grpc.Call)
        assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED and "MAX_QUEUE" in error.details()
        assert ("grpc-retry-pushback-ms", "50") in tuple(error.trailing_metadata())


@requires_redis
def test_kserve_retries_on_unavailable_never_advance_a_sequence_twice(
    fixture_models: FixtureModels, oip: Oip
) -> None:
    chunks = [np.random.default_rng(10 + i).standard_normal((6, FEATURE_DIM)).astype(np.float32) for i in range(3)]

    def step(i: int) -> dict[str, object]:
        return {"model": "lstm", "inputs": {"x": encode(chunks[i][np.newaxis])},
                "parameters": {"sequence_id": "retried", "sequence_start": i == 0, "sequence_end": i == 2}}

    with redis_server() as (proc, port):
        env = {"LSTM_SERVE_SESSIONS__STORE_URL": f"redis://127.0.0.1:{port}/0",
               "LSTM_SERVE_SESSIONS__STORE_OP_TIMEOUT_S": "0.3"}
        with start_server(fixture_models.root, env=env) as server:
            first = oip(server, "kserve", model="lstm", requests=[step(0)])[1]
            proc.send_signal(signal.SIGSTOP)  # the store hangs: the step is refused before it is applied
            try:
                lost = oip(server, "kserve", model="lstm", requests=[step(1)], timeout=10)[1]
            finally:
                proc.send_signal(signal.SIGCONT)
            assert lost["status"] == "UNAVAILABLE" and "session store unavailable" in lost["error"]
            rest = oip(server, "kserve", model="lstm", requests=[step(1), step(2)])[1:]
            with server.client() as client:
                native = client.stream("lstm", chunks).outputs
    got = np.concatenate([decode(a["outputs"]["y"])[0] for a in (first, *rest)])
    np.testing.assert_allclose(got, native, atol=1e-5)
