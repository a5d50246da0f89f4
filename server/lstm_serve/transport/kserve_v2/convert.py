"""The converter between the Open Inference Protocol's messages (package
``inference``) and domain types; the only user of those messages besides the servicer.
Metadata, configuration, the repository index and statistics are in
:mod:`lstm_serve.transport.kserve_v2.metadata`; requests and responses are here.

How a manifest maps onto the protocol (docs/kserve-v2.md has the table):

- Every model has ``max_batch_size`` > 0, so shapes in ModelConfig leave out the
  batch axis and ModelMetadata shows it as -1.
- Feature models take the manifest's input, FP32 ``[-1, F]`` (time, features); the
  output is the manifest's output, FP32 ``[-1, C]`` per frame or ``[C]`` per
  sequence. Recurrent states are implicit: never inputs or outputs.
- Causal models are sequence models (``sequence_batching``): each request is one
  step of the sequence named by its ``sequence_id`` and has batch size 1. The
  bidirectional ones are plain models (``dynamic_batching``) that take a batch.
- Audio models take PCM in the input :data:`AUDIO_INPUT`, INT16 (PCM16) or FP32
  samples in [-1, 1] ``[-1]``, at the ``sample_rate_hz`` request parameter (the
  model's rate when absent). Their keyword events come back in the BYTES output
  :data:`EVENTS_OUTPUT`, one JSON object per event.
"""

from __future__ import annotations

import json
import struct
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_serve.audio import MAX_SAMPLE_RATE_HZ
from lstm_serve.domain import AudioFormat, ModelInfo, ModelRef, PredictInput, PredictOutput
from lstm_serve.errors import InvalidInput, ModelNotReady, check_id, echo
from lstm_serve.events import Event
from lstm_serve.manifest import LogMelFrontend, Manifest
from lstm_serve.repository import check_folder_name
from lstm_serve.sequences import SequenceRequest, SequenceResult
from lstm_serve.transport.tensors import check_shape
from lstmserve.kserve_v2 import grpc_service_pb2 as pb

AUDIO_INPUT = "AUDIO"
"""Input of an audio model: PCM samples of one request."""
EVENTS_OUTPUT = "EVENTS"
"""Output of a keyword-spotting model: one JSON object per event."""
SAMPLE_RATE_PARAMETER = "sample_rate_hz"

IGNORED_PARAMETERS = ("priority", "timeout", "binary_data_output", "headers")
"""Request parameters accepted and ignored (documented in docs/kserve-v2.md)."""

_NUMPY: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT16": np.dtype("<i2")}
_TYPED = {"FP32": "fp32_contents", "INT16": "int_contents"}


@dataclass(frozen=True)
class Sequence:
    """A request's sequence parameters."""

    sequence_id: str
    start: bool
    end: bool


def model_ref(name: str, version: str, field: str = "model_name") -> ModelRef:
    """Domain model reference; the name is required."""
    if not name:
        raise InvalidInput(f"{field}: required; RepositoryIndex lists the models")
    return ModelRef(check_id(name, field), check_id(version, "model_version"))


def repository_model_name(name: str) -> str:
    """The model of RepositoryModelLoad / Unload: a required name that is one folder of
    the repository, never a path (``../x``, ``/tmp/x``) out of it."""
    return check_folder_name(model_ref(name, "").name, "model_name")


def require_manifest(info: ModelInfo, unloaded_ok: bool = False) -> Manifest:
    """The manifest of a version that can serve, or FAILED_PRECONDITION. With
    ``unloaded_ok`` (a request that continues a sequence) an unloaded version's
    manifest decodes it: its sequence finishes on the version it is bound to."""
    if info.manifest is not None and unloaded_ok and not info.error:
        return info.manifest
    if info.manifest is None or not info.ready:
        raise ModelNotReady(f"model '{info.name}' version {info.version} is not ready: {info.error or 'unloaded'}")
    return info.manifest


def input_name(manifest: Manifest) -> str:
    """The protocol's name of the model's input tensor."""
    return AUDIO_INPUT if manifest.input_kind == "audio" else manifest.input.name


def emits_events(manifest: Manifest) -> bool:
    """True for a keyword-spotting model: its events come in :data:`EVENTS_OUTPUT`."""
    return manifest.output.postprocess is not None


# ---- inference requests -------------------------------------------------------------
def _parameter(request: pb.ModelInferRequest, name: str, kinds: tuple[str, ...]) -> Any:
    if name not in request.parameters:
        return None
    param = request.parameters[name]
    kind = param.WhichOneof("parameter_choice")
    if kind not in kinds:
        raise InvalidInput(
            f"invalid value type for '{name}' parameter, expected {' or '.join(kinds)}; got "
            f"{kind or 'no value'}"
        )
    return getattr(param, kind)


def sequence_key(request: pb.ModelInferRequest) -> str | None:
    """The model and sequence a request belongs to, for ordering only (no validation:
    a bad parameter is refused when the request runs); None without a sequence."""
    if "sequence_id" not in request.parameters:
        return None
    param = request.parameters["sequence_id"]
    kind = param.WhichOneof("parameter_choice")
    value = getattr(param, kind) if kind else None
    if value in (None, 0, ""):
        return None
    return f"{request.model_name}\0{value}"


def sequence_of(request: pb.ModelInferRequest, max_id_bytes: int) -> Sequence | None:
    """The request's sequence parameters, or None when it names no sequence. An int64
    id N is session id ``str(N)``; a string id is itself. 0 and "" mean no sequence."""
    raw = _parameter(request, "sequence_id", ("int64_param", "string_param", "uint64_param"))
    start = _parameter(request, "sequence_start", ("bool_param",))
    end = _parameter(request, "sequence_end", ("bool_param",))
    if raw is None or raw == 0 or raw == "":
        if start or end:
            raise InvalidInput(
                f"inference request to model '{echo(request.model_name)}' must specify a non-zero or "
                "non-empty correlation ID"
            )
        return None
    if isinstance(raw, str):
        size = len(raw.encode("utf-8", "surrogatepass"))
        if size > max_id_bytes:
            raise InvalidInput(
                f"parameters['sequence_id']: {size} bytes exceeds the limit of {max_id_bytes} bytes "
                f"(LSTM_SERVE_KSERVE_V2__MAX_SEQUENCE_ID_BYTES); got '{echo(raw)}'"
            )
    return Sequence(str(raw), bool(start), bool(end))


def _tensor(request: pb.ModelInferRequest, manifest: Manifest) -> tuple[np.ndarray, str]:
    """The one input, decoded from raw or typed contents, with its datatype."""
    expected = input_name(manifest)
    if len(request.inputs) != 1:
        raise InvalidInput(
            f"inputs: expected 1 input ('{expected}') for model '{manifest.name}', got {len(request.inputs)}"
        )
    tensor = request.inputs[0]
    if tensor.name != expected:
        raise InvalidInput(f"inputs[0].name: unexpected inference input '{echo(tensor.name)}' for model "
                           f"'{manifest.name}'; expected '{expected}'")
    allowed = ("INT16", "FP32") if manifest.input_kind == "audio" else ("FP32",)
    if tensor.datatype not in allowed:
        raise InvalidInput(
            f"inputs[0].datatype: inference input '{expected}' data-type is '{echo(tensor.datatype)}', but model "
            f"'{manifest.name}' expects {' or '.join(allowed)}"
        )
    dtype = _NUMPY[tensor.datatype]
    ranks = (2,) if manifest.input_kind == "audio" else (3,)
    shape = list(tensor.shape)
    field = f"inputs['{expected}']"
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(
                f"raw_input_contents: expected 1 entry (one per input), got {len(request.raw_input_contents)}"
            )
        if tensor.HasField("contents"):
            raise InvalidInput(f"{field}.contents: set either raw_input_contents or contents, not both")
        raw = request.raw_input_contents[0]
        check_shape(shape, field, ranks, dtype, len(raw))
        return np.frombuffer(raw, dtype=dtype).reshape(shape), tensor.datatype
    values = getattr(tensor.contents, _TYPED[tensor.datatype])
    check_shape(shape, field, ranks, dtype, len(values) * dtype.itemsize)
    if tensor.datatype == "INT16":
        wide = np.asarray(values, dtype=np.int32)
        if wide.size and (wide.min() < -32768 or wide.max() > 32767):
            raise InvalidInput(f"{field}.contents.int_contents: INT16 values must lie in [-32768, 32767]")
        return wide.astype(dtype).reshape(shape), tensor.datatype
    return np.asarray(values, dtype=dtype).reshape(shape), tensor.datatype


def _audio_format(request: pb.ModelInferRequest, manifest: Manifest, datatype: str) -> AudioFormat:
    assert isinstance(manifest.frontend, LogMelFrontend)
    rate = _parameter(request, SAMPLE_RATE_PARAMETER, ("int64_param", "uint64_param"))
    rate = manifest.frontend.sample_rate_hz if rate is None else int(rate)
    if not 0 < rate <= MAX_SAMPLE_RATE_HZ:
        raise InvalidInput(
            f"parameters['{SAMPLE_RATE_PARAMETER}']: {rate} is out of range; expected 1 to {MAX_SAMPLE_RATE_HZ}"
        )
    return AudioFormat("pcm16" if datatype == "INT16" else "float32", rate)


def sequence_request(
    request: pb.ModelInferRequest, ref: ModelRef, manifest: Manifest, sequence: Sequence
) -> SequenceRequest:
    """One step of a sequence: batch size 1."""
    array, datatype = _tensor(request, manifest)
    if array.shape[0] != 1:
        raise InvalidInput(
            f"inputs['{input_name(manifest)}'].shape: a sequence request has batch size 1, got {array.shape[0]}; "
            "send each sequence under its own sequence_id"
        )
    if manifest.input_kind == "audio":
        samples = array[0]
        little = samples.astype(samples.dtype.newbyteorder("<"), copy=False)
        return SequenceRequest(
            ref, sequence.sequence_id, sequence.start, sequence.end, audio=little.tobytes(),
            audio_format=_audio_format(request, manifest, datatype),
        )
    return SequenceRequest(ref, sequence.sequence_id, sequence.start, sequence.end, features=array[0])


def predict_input(request: pb.ModelInferRequest, ref: ModelRef, manifest: Manifest) -> PredictInput:
    """A stateless request: a batch of whole sequences of one length."""
    if manifest.input_kind == "audio":
        raise InvalidInput(
            f"inference request to model '{manifest.name}' must specify a non-zero or non-empty correlation ID"
        )
    array, _ = _tensor(request, manifest)
    lengths = np.full(array.shape[0], array.shape[1], dtype=np.int64)
    return PredictInput(model=ref, features=array, lengths=lengths, batched=True)


def _requested(request: pb.ModelInferRequest, manifest: Manifest) -> list[str]:
    names = [manifest.output.name] + ([EVENTS_OUTPUT] if emits_events(manifest) else [])
    if not request.outputs:
        return names
    wanted = []
    for out in request.outputs:
        if out.name not in names:
            raise InvalidInput(
                f"outputs: unexpected inference output '{echo(out.name)}' for model '{manifest.name}'; it has "
                f"{names}"
            )
        wanted.append(out.name)
    return wanted


def _event_json(event: Event) -> bytes:
    return json.dumps(
        {"label": event.label, "start_s": round(event.start_s, 6), "end_s": round(event.end_s, 6),
         "score": round(event.score, 6), "is_final": event.is_final},
        separators=(",", ":"),
    ).encode()


def _bytes_tensor(items: list[bytes]) -> bytes:
    """BYTES elements as the protocol packs them: a 4-byte little-endian length each."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def _response(
    request: pb.ModelInferRequest, ref: ModelRef, manifest: Manifest, outputs: np.ndarray, events: list[Event]
) -> pb.ModelInferResponse:
    response = pb.ModelInferResponse(model_name=ref.name, model_version=ref.version, id=request.id)
    for name in _requested(request, manifest):
        if name == EVENTS_OUTPUT:
            response.outputs.add(name=name, datatype="BYTES", shape=[1, len(events)])
            response.raw_output_contents.append(_bytes_tensor([_event_json(e) for e in events]))
            continue
        data = np.ascontiguousarray(outputs, dtype="<f4")
        response.outputs.add(name=name, datatype="FP32", shape=data.shape)
        response.raw_output_contents.append(data.tobytes() if sys.byteorder == "little" else data.byteswap().tobytes())
    return response


def sequence_response(
    request: pb.ModelInferRequest, manifest: Manifest, result: SequenceResult
) -> pb.ModelInferResponse:
    """One step's outputs, with the batch axis of 1."""
    if manifest.output.head == "per_frame":
        outputs = result.outputs[np.newaxis]
    else:
        outputs = result.outputs[-1:] if len(result.outputs) else np.zeros((1, manifest.output.dim), np.float32)
    return _response(request, result.model, manifest, outputs, result.events)


def predict_response(
    request: pb.ModelInferRequest, manifest: Manifest, result: PredictOutput
) -> pb.ModelInferResponse:
    """A stateless batch's outputs."""
    return _response(request, result.model, manifest, result.outputs, [])


def mark_final(response: pb.ModelInferResponse) -> None:
    """``triton_enable_empty_final_response``: every response here is its request's
    last, so it says so itself and no empty one follows."""
    response.parameters["triton_final_response"].bool_param = True


def wants_final_flag(request: pb.ModelInferRequest) -> bool:
    """Whether the request set ``triton_enable_empty_final_response``."""
    return bool(_parameter(request, "triton_enable_empty_final_response", ("bool_param",)))
