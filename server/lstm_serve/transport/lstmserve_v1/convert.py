"""The converter between ``lstmserve.v1`` messages and domain types.

Only this package's converter and servicer touch the ``lstmserve.v1`` messages;
tensors go through :mod:`lstm_serve.transport.tensors`, which checks the declared
shape against the byte length and never trusts the client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np

from lstm_serve.domain import (
    AudioFormat,
    Chunk,
    ChunkResult,
    ModelInfo,
    ModelRef,
    PredictInput,
    PredictOutput,
    StreamConfig,
    StreamDraining,
    StreamEnd,
    StreamFinal,
    StreamMessage,
    StreamReply,
    StreamStarted,
)
from lstm_serve.errors import InvalidInput, check_id, echo
from lstm_serve.events import Event
from lstm_serve.manifest import LogMelFrontend
from lstm_serve.transport.tensors import known_enum, to_array, to_tensor
from lstmserve.v1 import inference_pb2 as pb

_HEADS = {"per_frame": pb.HEAD_KIND_PER_FRAME, "sequence": pb.HEAD_KIND_SEQUENCE}
_TASKS = {"classification": pb.TASK_KIND_CLASSIFICATION, "regression": pb.TASK_KIND_REGRESSION}
_INPUT_KINDS = {"features": pb.INPUT_KIND_FEATURES, "audio": pb.INPUT_KIND_AUDIO}
_INPUT_KINDS_BACK = {v: k for k, v in _INPUT_KINDS.items()}
_ENCODINGS = {pb.AUDIO_ENCODING_PCM16: "pcm16", pb.AUDIO_ENCODING_FLOAT32: "float32"}


def model_ref(ref: pb.ModelRef) -> ModelRef:
    """Domain model reference; the name is required."""
    if not ref.name:
        raise InvalidInput("model.name: required; call ListModels for the available names")
    return ModelRef(check_id(ref.name, "model.name"), check_id(ref.version, "model.version"))


def _ref_pb(ref: ModelRef) -> pb.ModelRef:
    return pb.ModelRef(name=ref.name, version=ref.version)


def model_metadata(info: ModelInfo) -> pb.ModelMetadata:
    """Metadata of one model version, ready or not."""
    meta = pb.ModelMetadata(
        name=info.name, version=info.version, ready=info.ready, error=info.error, versions=info.versions
    )
    manifest = info.manifest
    if manifest is None:
        return meta
    meta.input_kind = _INPUT_KINDS[manifest.input_kind]
    meta.feature_dim = manifest.input.feature_dim
    meta.frame_rate_hz = manifest.input.frame_rate_hz
    meta.head = _HEADS[manifest.output.head]
    meta.task = _TASKS[manifest.output.task]
    meta.labels.extend(manifest.output.labels)
    meta.output_dim = manifest.output.dim
    meta.streamable = manifest.streamable
    meta.description = manifest.description
    meta.states.extend(
        pb.StateSpec(name=s.name, layers=s.layers, hidden=s.hidden) for s in manifest.states
    )
    meta.providers.extend(info.providers)
    if isinstance(manifest.frontend, LogMelFrontend):
        f = manifest.frontend
        meta.audio.CopyFrom(
            pb.AudioFrontend(
                pipeline=f.pipeline, sample_rate_hz=f.sample_rate_hz, window_ms=f.window_ms,
                hop_ms=f.hop_ms, n_fft=f.n_fft, n_mels=f.n_mels,
            )
        )
    for key, value in manifest.provenance.model_dump(exclude_none=True).items():
        meta.provenance[key] = value if isinstance(value, str) else str(value)
    return meta


def predict_input(request: pb.PredictRequest) -> PredictInput:
    """The request's features as one ``[batch, max_frames, feature_dim]`` array plus
    per-row lengths."""
    if not request.HasField("features"):
        raise InvalidInput("features: required; a [frames, feature_dim] or [batch, frames, feature_dim] tensor")
    features = to_array(request.features, "features", ranks=(2, 3))
    batched = features.ndim == 3
    rows = features if batched else features[np.newaxis]
    batch, max_frames = rows.shape[0], rows.shape[1]
    if request.lengths:
        if len(request.lengths) != batch:
            raise InvalidInput(f"lengths: {len(request.lengths)} entries for a batch of {batch}")
        lengths = np.asarray(request.lengths, dtype=np.int64)
        too_long = np.flatnonzero(lengths > max_frames)
        if too_long.size:
            i = int(too_long[0])
            raise InvalidInput(f"lengths[{i}]: {lengths[i]} exceeds max_frames {max_frames}")
    else:
        lengths = np.full(batch, max_frames, dtype=np.int64)
    initial = {
        check_id(s.name, "initial_states.name"): to_array(
            s.tensor, f"initial_states['{echo(s.name)}']", ranks=(3,)
        )
        for s in request.initial_states
    }
    return PredictInput(
        model=model_ref(request.model),
        features=rows,
        lengths=lengths,
        batched=batched,
        session_id=check_id(request.session_id, "session_id"),
        must_exist=request.must_exist,
        end_session=request.end_session,
        return_state=request.return_state,
        initial_states=initial,
        resume_token=request.resume_token,
        return_token=request.return_token,
        frame_offset=request.frame_offset if request.HasField("frame_offset") else None,
    )


def predict_response(result: PredictOutput) -> pb.PredictResponse:
    """Pack the outputs, mirroring the request's batch axis."""
    packed = result.outputs if result.batched else result.outputs[0]
    return pb.PredictResponse(
        model=_ref_pb(result.model),
        outputs=to_tensor(packed),
        lengths=result.lengths,
        states=[pb.NamedTensor(name=k, tensor=to_tensor(v)) for k, v in result.states.items()],
        session_id=result.session_id,
        frame_offset=result.frame_offset,
        resume_token=result.resume_token,
        replayed=result.replayed,
    )


def _stream_config(config: pb.StreamConfig) -> StreamConfig:
    known_enum(pb.InputKind, config.input_kind, "config.input_kind")
    audio = None
    if config.HasField("audio"):
        known_enum(pb.AudioEncoding, config.audio.encoding, "config.audio.encoding")
        encoding = _ENCODINGS.get(config.audio.encoding)
        if encoding is None:
            raise InvalidInput(
                "config.audio.encoding: unsupported or unspecified encoding; expected PCM16 or FLOAT32"
            )
        audio = AudioFormat(encoding=encoding, sample_rate_hz=config.audio.sample_rate_hz)  # type: ignore[arg-type]
    output = config.output
    return StreamConfig(
        model=model_ref(config.model),
        session_id=check_id(config.session_id, "config.session_id"),
        must_exist=config.must_exist,
        input_kind=_INPUT_KINDS_BACK.get(config.input_kind),  # type: ignore[arg-type]
        audio=audio,
        frame_outputs=output.frame_outputs if output.HasField("frame_outputs") else None,
        events=output.events if output.HasField("events") else None,
        return_state=output.return_state,
        resume_token=config.resume_token,
        token_every=config.token_every,
    )


def stream_message(request: pb.StreamRequest) -> StreamMessage:
    """One stream request as a domain message."""
    kind = request.WhichOneof("message")
    if kind == "config":
        return _stream_config(request.config)
    if kind == "chunk":
        chunk = request.chunk
        payload = chunk.WhichOneof("payload")
        if payload == "features":
            return Chunk(chunk.sequence_number, features=to_array(chunk.features, "chunk.features", ranks=(2,)))
        if payload == "audio":
            return Chunk(chunk.sequence_number, audio=chunk.audio)
        raise InvalidInput("chunk: empty; set chunk.features or chunk.audio")
    if kind == "end":
        return StreamEnd(keep_session=request.end.keep_session)
    raise InvalidInput("message: empty StreamRequest; set config, chunk or end")


async def stream_messages(requests: AsyncIterator[pb.StreamRequest]) -> AsyncIterator[StreamMessage]:
    """Convert a stream's requests lazily, as they arrive."""
    async for request in requests:
        yield stream_message(request)


def _event(event: Event) -> pb.Event:
    return pb.Event(
        label=event.label, start_s=event.start_s, end_s=event.end_s, score=event.score,
        is_final=event.is_final,
    )


def stream_response(reply: StreamReply) -> pb.StreamResponse:
    """One domain stream reply as a protobuf message."""
    if isinstance(reply, ChunkResult):
        return pb.StreamResponse(result=pb.Result(
            sequence_number=reply.sequence_number,
            frame_offset=reply.frame_offset,
            frames=reply.frames,
            duplicate=reply.duplicate,
            flush=reply.flush,
            events=[_event(e) for e in reply.events],
            resume_token=reply.resume_token,
            outputs=to_tensor(reply.outputs) if reply.outputs is not None else None,
        ))
    if isinstance(reply, StreamStarted):
        return pb.StreamResponse(
            started=pb.Started(
                session_id=reply.session_id,
                model=_ref_pb(reply.model),
                frame_rate_hz=reply.frame_rate_hz,
                next_sequence_number=reply.next_sequence_number,
                frame_offset=reply.frame_offset,
                resumed=reply.resumed,
                resume_token=reply.resume_token,
            )
        )
    if isinstance(reply, StreamDraining):
        return pb.StreamResponse(
            draining=pb.Draining(
                time_left_s=reply.time_left_s, resume_token=reply.resume_token,
                last_sequence_number=reply.last_sequence_number, closing=reply.closing,
            )
        )
    final = reply
    assert isinstance(final, StreamFinal)
    return pb.StreamResponse(
        final=pb.Final(
            session_id=final.session_id,
            frames=final.frames,
            chunks=final.chunks,
            events=[_event(e) for e in final.events],
            states=[pb.NamedTensor(name=k, tensor=to_tensor(v)) for k, v in final.states.items()],
            audio_seconds=final.audio_seconds,
            resume_token=final.resume_token,
        )
    )


def list_models_response(infos: list[ModelInfo]) -> pb.ListModelsResponse:
    """Every model version's metadata."""
    return pb.ListModelsResponse(models=[model_metadata(info) for info in infos])
