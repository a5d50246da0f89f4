"""The Inference servicer: convert, call the domain, convert back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from lstm_serve.facade import DomainFacade
from lstm_serve.transport.lstmserve_v1 import convert
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Inference"].full_name
"""``lstmserve.v1.Inference``: the name health and reflection report."""


def add_inference_service(domain: DomainFacade, server: grpc.aio.Server) -> None:
    """Register the Inference servicer for ``domain`` on ``server``."""
    pb_grpc.add_InferenceServicer_to_server(InferenceServicer(domain), server)


class InferenceServicer(pb_grpc.InferenceServicer):
    """Thin gRPC adapter over :class:`~lstm_serve.facade.DomainFacade`."""

    def __init__(self, domain: DomainFacade) -> None:
        self._domain = domain

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        """Every model version, ready or not."""
        return convert.list_models_response(self._domain.list_models())

    async def GetModelMetadata(
        self, request: pb.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadata:
        """One model version's metadata."""
        return convert.model_metadata(self._domain.model(convert.model_ref(request.model)))

    async def Predict(
        self, request: pb.PredictRequest, context: grpc.aio.ServicerContext
    ) -> pb.PredictResponse:
        """Whole sequences, optionally continuing a session."""
        result = await self._domain.predict(convert.predict_input(request))
        return convert.predict_response(result)

    async def StreamPredict(
        self, request_iterator: AsyncIterator[pb.StreamRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamResponse]:
        """A stateful stream: config, chunks, end."""
        replies = self._domain.stream(convert.stream_messages(request_iterator))
        async with contextlib.aclosing(replies):
            async for reply in replies:
                yield convert.stream_response(reply)
