"""The Open Inference Protocol servicer, ``inference.GRPCInferenceService``: convert,
call the domain, convert back. Errors of unary calls go through the one interceptor;
ModelStreamInfer answers a failed request in band (``error_message``) and keeps the
stream open, as Triton does."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import grpc

from lstm_serve.admission import RateLimit
from lstm_serve.errors import InvalidInput, ModelNotFound, Overloaded, PreconditionFailed
from lstm_serve.facade import DomainFacade
from lstm_serve.transport.kserve_v2 import convert, metadata
from lstm_serve.transport.status import status_for
from lstmserve.kserve_v2 import grpc_service_pb2 as pb
from lstmserve.kserve_v2 import grpc_service_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
"""``inference.GRPCInferenceService``: the name health and reflection report."""


def add_kserve_v2_service(domain: DomainFacade, server: grpc.aio.Server) -> None:
    """Register the Open Inference Protocol servicer for ``domain`` on ``server``."""
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(KServeV2Servicer(domain), server)


class KServeV2Servicer(pb_grpc.GRPCInferenceServiceServicer):
    """Thin gRPC adapter over :class:`~lstm_serve.facade.DomainFacade`."""

    def __init__(self, domain: DomainFacade) -> None:
        self._domain = domain
        self._settings = domain.settings

    # ---- health and metadata -----------------------------------------------------------
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        """The process answers."""
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        """Ready until the drain begins."""
        return pb.ServerReadyResponse(ready=not self._domain.draining)

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        """Whether the version (the newest ready one when none is named) serves new work."""
        ref = convert.model_ref(request.name, request.version, "name")
        try:
            ready = self._domain.model(ref).ready
        except ModelNotFound:  # an unknown model is simply not ready
            ready = False
        return pb.ModelReadyResponse(ready=ready and not self._domain.draining)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        """Name, version, extensions."""
        return metadata.server_metadata()

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        """Inputs and outputs."""
        return metadata.model_metadata(self._domain.model(convert.model_ref(request.name, request.version, "name")))

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelConfigResponse:
        """Triton's model configuration, derived from the manifest."""
        info = self._domain.model(convert.model_ref(request.name, request.version, "name"))
        return metadata.model_config(info, self._settings)

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        """Counts and durations; every model when no name is given."""
        ref = convert.model_ref(request.name, request.version, "name") if request.name else None
        return metadata.model_statistics(self._domain.statistics(ref))

    # ---- model repository ----------------------------------------------------------------
    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        """Every model version and its state."""
        return metadata.repository_index(list(self._domain.repository), request.ready)

    def _explicit_control(self, request: pb.RepositoryModelLoadRequest | pb.RepositoryModelUnloadRequest) -> str:
        mode = self._settings.server.model_control
        if mode == "poll":
            raise PreconditionFailed("explicit model load / unload is not allowed if polling is enabled")
        if mode != "explicit":
            raise PreconditionFailed(
                "explicit model load / unload is not allowed: start the server with --model-control explicit "
                "(LSTM_SERVE_SERVER__MODEL_CONTROL)"
            )
        if request.repository_name:
            raise InvalidInput(
                f"repository_name: '{request.repository_name[:64]}' is not served; lstm-serve has one repository, "
                "named by an empty string"
            )
        for key in request.parameters:
            if key == "unload_dependents":  # no ensembles here: nothing depends on a model
                continue
            raise InvalidInput(
                f"parameters['{key[:64]}']: not supported; lstm-serve reads each version's manifest.json and "
                "model.onnx from the repository folder"
            )
        return convert.repository_model_name(request.model_name)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        """Load new and changed versions of a model; unchanged ones keep serving."""
        name = self._explicit_control(request)
        change = await self._domain.load_model(name)
        failed = [e for e in change.loaded + change.replaced if not e.ready]
        if failed and not any(e.ready for e in self._domain.repository.entries.get(name, {}).values()):
            raise PreconditionFailed(f"failed to load '{name}': {failed[0].error}")
        return pb.RepositoryModelLoadResponse()

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.aio.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        """Stop new work on a model; its open sessions finish (docs/kserve-v2.md)."""
        await self._domain.unload_model(self._explicit_control(request))
        return pb.RepositoryModelUnloadResponse()

    # ---- inference -------------------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        ref = convert.model_ref(request.model_name, request.model_version)
        info = self._domain.model(ref)
        sequence = convert.sequence_of(request, self._settings.kserve_v2.max_sequence_id_bytes)
        manifest = convert.require_manifest(info, unloaded_ok=sequence is not None and not sequence.start)
        if manifest.causal and sequence is None:
            raise InvalidInput(
                f"inference request to model '{manifest.name}' must specify a non-zero or non-empty correlation ID"
            )
        if sequence is not None:
            result = await self._domain.sequence_step(convert.sequence_request(request, ref, manifest, sequence))
            return convert.sequence_response(request, manifest, result)
        output = await self._domain.predict(convert.predict_input(request, ref, manifest))
        return convert.predict_response(request, manifest, output)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        """One request; with ``sequence_id``, one step of that sequence."""
        return await self._infer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests run as they arrive: one worker per sequence takes its requests in
        order, sequences (and requests without one) run concurrently, and answers come
        back as they finish. A failed request is answered in band."""
        backlog = self._settings.kserve_v2.max_stream_backlog
        answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        waiting: dict[str, collections.deque[pb.ModelInferRequest]] = {}
        workers: set[asyncio.Task[None]] = set()
        in_flight = 0
        room = asyncio.Event()  # set when the client takes an answer: unread ones stay below the backlog

        async def answer(request: pb.ModelInferRequest) -> None:
            nonlocal in_flight
            try:
                response = await self._infer(request)
                if convert.wants_final_flag(request):
                    convert.mark_final(response)
                reply = pb.ModelStreamInferResponse(infer_response=response)
            except Exception as exc:
                reply = _in_band_error(request, exc)
            in_flight -= 1
            answers.put_nowait(reply)

        async def sequence_worker(key: str) -> None:
            queue = waiting[key]
            try:
                while queue:
                    await answer(queue.popleft())
            finally:
                del waiting[key]

        def start(coroutine: Coroutine[Any, Any, None]) -> None:
            task = asyncio.ensure_future(coroutine)
            workers.add(task)
            task.add_done_callback(workers.discard)

        async def read(rate: RateLimit) -> None:
            nonlocal in_flight
            try:
                async for request in request_iterator:
                    while answers.qsize() >= backlog:  # the client does not read: stop reading it
                        room.clear()
                        await room.wait()
                    try:
                        rate.take()
                    except Overloaded as refused:
                        answers.put_nowait(_in_band_error(request, refused))
                        continue
                    if in_flight >= backlog:
                        error = Overloaded(
                            f"ModelStreamInfer: {backlog} requests of this stream are in flight "
                            "(LSTM_SERVE_KSERVE_V2__MAX_STREAM_BACKLOG); wait for answers before sending more"
                        )
                        answers.put_nowait(_in_band_error(request, error))
                        continue
                    in_flight += 1
                    key = convert.sequence_key(request)
                    if key is None:
                        start(answer(request))
                    elif key in waiting:
                        waiting[key].append(request)
                    else:
                        waiting[key] = collections.deque([request])
                        start(sequence_worker(key))
                while workers:
                    await asyncio.wait(set(workers))
            except Exception as exc:  # an undecodable request ends the stream with its status
                answers.put_nowait(_in_band_error(pb.ModelInferRequest(), exc))
            finally:
                answers.put_nowait(None)

        with self._domain.stream_slot() as rate:
            reader = asyncio.ensure_future(read(rate))
            try:
                while (reply := await answers.get()) is not None:
                    room.set()
                    yield reply
            finally:
                reader.cancel()
                for task in list(workers):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


def _in_band_error(request: pb.ModelInferRequest, exc: BaseException) -> pb.ModelStreamInferResponse:
    """A failed stream request: its status message, with the request's id echoed."""
    code, message = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("unhandled error in ModelStreamInfer", exc_info=exc)
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                              id=request.id),
    )
