"""The client sends the session id as x-session-id metadata, so proxies can hash on it."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
import numpy as np

from lstm_client import LstmClient
from lstm_client.client import MAX_SESSION_HEADER_BYTES, session_metadata
from lstmserve.v1 import inference_pb2 as pb


def test_header_only_for_short_ascii_ids() -> None:
    assert session_metadata("abc") == (("x-session-id", "abc"),)
    assert session_metadata("") == ()
    assert session_metadata("s" * (MAX_SESSION_HEADER_BYTES + 1)) == ()
    assert session_metadata("séance") == ()


def test_predict_sends_the_header_to_the_server() -> None:
    seen: list[dict[str, str]] = []

    def predict(request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:
        seen.append(dict(context.invocation_metadata()))
        return pb.PredictResponse(outputs=pb.Tensor(shape=[1, 1], data=np.zeros(1, "<f4").tobytes()), lengths=[1])

    handler = grpc.method_handlers_generic_handler(
        "lstmserve.v1.Inference",
        {"Predict": grpc.unary_unary_rpc_method_handler(
            predict, request_deserializer=pb.PredictRequest.FromString,
            response_serializer=pb.PredictResponse.SerializeToString,
        )},
    )
    server: Any = grpc.server(futures.ThreadPoolExecutor(1))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with LstmClient(f"127.0.0.1:{port}") as client:
            client.predict("m", np.zeros((1, 2), np.float32), session_id="route-me")
    finally:
        server.stop(0)
    assert seen and seen[0].get("x-session-id") == "route-me"
