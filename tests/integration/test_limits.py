"""Admission limits (LSTM_SERVE_LIMITS__*): each refusal is RESOURCE_EXHAUSTED naming
its setting, with a pushback trailer where a retry can succeed; the per-principal ones
count only the principal at its limit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from lstm_client import LstmClient, Security, StatusError
from lstm_client.client import to_tensor
from lstmserve.kserve_v2 import grpc_service_pb2 as v2
from lstmserve.kserve_v2 import grpc_service_pb2_grpc as v2_grpc
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc
from tests.certs import write_keys_file
from tests.conftest import FixtureModels
from tests.harness import ServerHandle, frames, start_server, wait_until

KEY_A, KEY_B = "limits-key-a-0123", "limits-key-b-0123"
LIMITS = {
    "LSTM_SERVE_LIMITS__MAX_STREAMS_PER_PRINCIPAL": "1",
    "LSTM_SERVE_LIMITS__MAX_CALLS_PER_PRINCIPAL": "1",
    "LSTM_SERVE_LIMITS__MAX_SESSIONS_PER_PRINCIPAL": "1",
    "LSTM_SERVE_LIMITS__MAX_CHUNKS_PER_S": "20",
}


@pytest.fixture(scope="module")
def limited(fixture_models: FixtureModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    keys = write_keys_file(
        tmp_path_factory.mktemp("limits") / "keys.json",
        [{"key": KEY_A, "subject": "svc-a", "models": ["*"]}, {"key": KEY_B, "subject": "svc-b", "models": ["*"]}],
    )
    with start_server(fixture_models.root, args=["--auth-keys", str(keys)], env=LIMITS,
                      security=Security(token=KEY_A)) as server:
        yield server


def _client(server: ServerHandle, key: str) -> LstmClient:
    return LstmClient(server.target, timeout=10, security=Security(token=key))


def _refusal(call: object) -> StatusError:
    with pytest.raises(StatusError) as info:
        call()  # type: ignore[operator]
    assert info.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED, info.value
    return info.value


def test_streams_and_sessions_per_principal(limited: ServerHandle) -> None:
    with _client(limited, KEY_A) as a, _client(limited, KEY_B) as b:
        held = a.open_stream()
        held.config(model={"name": "lstm"}, session_id="held-by-a")
        assert held.recv().WhichOneof("message") == "started"
        second = _refusal(lambda: a.stream("lstm", [frames(1, 5)]))
        assert "LSTM_SERVE_LIMITS__MAX_STREAMS_PER_PRINCIPAL" in second.details
        session = _refusal(lambda: a.predict("lstm", frames(2, 5), session_id="another-of-a"))
        assert "LSTM_SERVE_LIMITS__MAX_SESSIONS_PER_PRINCIPAL" in session.details
        assert b.stream("lstm", [frames(3, 5)]).frames == 5  # another principal is not limited by a's
        held.end()
        held.close()
        list(held.responses())
        assert a.predict("lstm", frames(2, 5), session_id="another-of-a").frame_offset == 0


def test_calls_per_principal(limited: ServerHandle) -> None:
    x = np.random.default_rng(0).standard_normal((64, 400, 6)).astype(np.float32)
    request = pb.PredictRequest(model=pb.ModelRef(name="bilstm"), features=to_tensor(x))
    with grpc.insecure_channel(limited.target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        calls = [stub.Predict.future(request, metadata=(("authorization", f"Bearer {KEY_A}"),), timeout=60)
                 for _ in range(12)]
        errors = [c.exception() for c in calls if c.exception() is not None]
    assert errors, "12 concurrent calls never met a limit of 1"
    for error in errors:
        assert isinstance(error, grpc.Call) and error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "LSTM_SERVE_LIMITS__MAX_CALLS_PER_PRINCIPAL" in error.details()
        assert ("grpc-retry-pushback-ms", "200") in tuple(error.trailing_metadata())


def test_chunks_per_second_per_stream(limited: ServerHandle) -> None:
    with _client(limited, KEY_B) as b:
        refused = _refusal(lambda: b.stream("lstm", [frames(n, 2) for n in range(60)]))
        assert "LSTM_SERVE_LIMITS__MAX_CHUNKS_PER_S" in refused.details
        assert int(dict(refused.trailers)["grpc-retry-pushback-ms"]) > 0
        requests = []
        for n in range(60):
            request = v2.ModelInferRequest(model_name="lstm", id=str(n))
            request.inputs.add(name="x", datatype="FP32", shape=[1, 2, 6])
            request.raw_input_contents.append(frames(n, 2).tobytes())
            request.parameters["sequence_id"].string_param = f"rate-{n}"
            request.parameters["sequence_start"].bool_param = True
            request.parameters["sequence_end"].bool_param = True
            requests.append(request)
        with grpc.insecure_channel(limited.target) as channel:
            stub = v2_grpc.GRPCInferenceServiceStub(channel)
            answers = list(stub.ModelStreamInfer(iter(requests), metadata=(("authorization", f"Bearer {KEY_B}"),),
                                                 timeout=60))
    refused_v2 = [a for a in answers if "MAX_CHUNKS_PER_S" in a.error_message]
    assert refused_v2 and len(answers) == 60, "refused in band; the stream stays open"


def test_session_age_cap(fixture_models: FixtureModels, tmp_path: Path) -> None:
    with start_server(fixture_models.root, env={"LSTM_SERVE_LIMITS__MAX_SESSION_AGE_S": "0.5"}) as server, \
            server.client() as client:
        client.predict("lstm", frames(1, 3), session_id="ageing")

        def too_old() -> bool:
            try:
                client.predict("lstm", frames(2, 3), session_id="ageing", must_exist=True)
            except StatusError as exc:
                return exc.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "MAX_SESSION_AGE_S" in exc.details
            return False

        assert wait_until(too_old, 10)
        assert client.predict("lstm", frames(3, 3), session_id="young").frame_offset == 0
