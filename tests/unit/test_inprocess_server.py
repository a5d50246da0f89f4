"""In-process tier: the whole server (interceptor, servicer, converter, service, step)
on a real grpc.aio server in this process, on a loopback port it binds itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import numpy as np

from lstm_serve.server import LstmServer
from lstm_serve.settings import MetricsSettings, ServerSettings, Settings
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM


def _serve(fixture_models: FixtureModels, body: Callable[[LstmServer, grpc.aio.Channel], Awaitable[None]]) -> None:
    settings = Settings(
        server=ServerSettings(host="127.0.0.1", port=0, models_dir=str(fixture_models.root), grace_period_s=1.0),
        metrics=MetricsSettings(enabled=False),
    )

    async def scenario() -> None:
        server = LstmServer(settings)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                await body(server, channel)
        finally:
            await server.stop(0.5)

    asyncio.run(scenario())


def _features(frames: np.ndarray) -> pb.Tensor:
    return pb.Tensor(shape=list(frames.shape), data=frames.astype("<f4").tobytes())


def test_predict_session_and_stream_share_one_step(fixture_models: FixtureModels) -> None:
    x = np.random.default_rng(1).standard_normal((20, FEATURE_DIM)).astype(np.float32)

    async def body(server: LstmServer, channel: grpc.aio.Channel) -> None:
        stub = pb_grpc.InferenceStub(channel)
        whole = await stub.Predict(pb.PredictRequest(model=pb.ModelRef(name="lstm"), features=_features(x)))
        first = await stub.Predict(
            pb.PredictRequest(model=pb.ModelRef(name="lstm"), features=_features(x[:8]), session_id="mixed")
        )
        assert first.frame_offset == 0

        async def requests() -> AsyncIterator[pb.StreamRequest]:
            config = pb.StreamConfig(model=pb.ModelRef(name="lstm"), session_id="mixed", must_exist=True)
            yield pb.StreamRequest(config=config)
            yield pb.StreamRequest(chunk=pb.Chunk(sequence_number=0, features=_features(x[8:])))
            yield pb.StreamRequest(end=pb.End())

        replies = [r async for r in stub.StreamPredict(requests())]
        assert replies[0].started.resumed and replies[0].started.frame_offset == 8
        assert replies[1].result.frame_offset == 8
        streamed = np.frombuffer(replies[1].result.outputs.data, "<f4").reshape(12, -1)
        want = np.frombuffer(whole.outputs.data, "<f4").reshape(20, -1)
        np.testing.assert_allclose(streamed, want[8:], atol=1e-5)
        assert await server.domain.store.get("mixed") is None  # type: ignore[union-attr]

    _serve(fixture_models, body)


def test_interceptor_maps_every_error_and_meters_only_its_services(fixture_models: FixtureModels) -> None:
    async def body(server: LstmServer, channel: grpc.aio.Channel) -> None:
        raw = channel.unary_unary("/lstmserve.v1.Inference/Predict")
        try:
            await raw(b"\xff\xff\xff\xff")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert exc.details() == "request is not a valid lstmserve.v1.PredictRequest"
        else:
            raise AssertionError("garbage was accepted")
        stub = pb_grpc.InferenceStub(channel)
        try:
            await stub.GetModelMetadata(pb.GetModelMetadataRequest(model=pb.ModelRef(name="nope")))
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.NOT_FOUND and "model.name" in (exc.details() or "")
        registry = server.metrics.registry
        # The client has its status before the server's handler has run its finally.
        labels = {"method": "GetModelMetadata", "code": "NOT_FOUND"}
        for _ in range(200):
            if registry.get_sample_value("lstm_serve_errors_total", labels):
                break
            await asyncio.sleep(0.01)
        assert registry.get_sample_value(
            "lstm_serve_errors_total", {"method": "Predict", "code": "INVALID_ARGUMENT"}
        ) == 1.0
        assert registry.get_sample_value(
            "lstm_serve_errors_total", {"method": "GetModelMetadata", "code": "NOT_FOUND"}
        ) == 1.0
        health = channel.unary_unary("/grpc.health.v1.Health/Check")
        try:
            await health(b"\xff\xff")
        except grpc.aio.AioRpcError as exc:
            assert exc.code() is grpc.StatusCode.INVALID_ARGUMENT and "grpc.health.v1" in (exc.details() or "")
        else:
            raise AssertionError("garbage was accepted")
        recorded = {
            s.labels.get("method") for m in registry.collect() for s in m.samples if s.name.startswith("lstm_serve_rpc")
        }
        assert "Predict" in recorded and "Check" not in recorded

    _serve(fixture_models, body)
