"""The Inference servicer: convert, call the domain, convert back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from lstm_serve.service import InferenceService
from lstm_serve.transport import convert
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Inference"].full_name
"""``lstmserve.v1.Inference``: the name health and reflection report."""


def add_inference_service(service: InferenceService, server: grpc.aio.Server) -> None:
    """Register the Inference servicer for ``service`` on ``server``."""
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(service), server)


class InferenceServicer(pb_grpc.InferenceServicer):
    """Thin gRPC adapter over :class:`~lstm_serve.service.InferenceService`."""

    def __init__(self, service: InferenceService) -> None:
        self._service = service

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every model version, ready or not."""
        return convert.list_models_response(self._service.list_models())

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadata:
        """One model version's metadata."""
        return convert.model_metadata(*self._service.model(convert.model_ref(request.model)))

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        """Whole sequences, optionally continuing a session."""
        result = await self._service.predict(convert.predict_input(request))
        return convert.predict_response(result)

    async def StreamPredict(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        """A stateful stream: config, chunks, end."""
        replies = self._service.stream(convert.stream_messages(request_iterator))
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield convert.stream_response(reply)
