"""Hypothesis strategies for hostile requests of both APIs: shapes with negative, zero
and huge dimensions at any rank, unknown dtypes and datatype strings, byte lengths
that disagree with the shape, NaN and Inf, unicode and NUL in every id, parameters of
the wrong type, typed contents beside raw ones, and serialized bytes that do not parse.

Every strategy leans towards the values that matter (the model's real names, the
feature dimension, a shape that fits its bytes) so that examples also get past the
first check and reach the later ones."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from lstm_serve.errors import MAX_ID_BYTES
from lstmserve.kserve_v2 import grpc_service_pb2 as v2
from lstmserve.v1 import inference_pb2 as pb

MODELS = ("har", "kws", "vowels", "forecast", "har-gru")
"""The bundled models/ (har, har-gru, forecast: causal features; kws: audio; vowels: bidirectional)."""
FEATURE_DIMS = (6, 12, 40)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
INT32 = (-(2**31), 2**31 - 1)

HUGE_DIMS = (2**31, 2**32, 2**40, 2**62, 2**63 - 1, -1, -(2**63), 0)

# Text protobuf can hold: any code point but lone surrogates (those cannot be UTF-8).
_chars = st.characters(codec="utf-8")
_nasty = st.sampled_from(
    [
        "", "\x00", "a\x00b", "har\x00", " har", "HAR", "../../etc/passwd", "%s%n", "\u202e\u0301",
        "\U0001f600" * 3, "\r\n", "'\"`", "1", "0", "-1", "x" * (MAX_ID_BYTES + 1), "\u00e9" * (MAX_ID_BYTES // 2 + 1),
    ]
)
text = st.one_of(st.text(_chars, max_size=24), _nasty)
"""Any id: short unicode with NUL and control characters, or one past the length limit."""
model_names = st.one_of(st.sampled_from(MODELS), text)
versions = st.one_of(st.just(""), st.just("1"), st.sampled_from(["", "1", "2", "01", "latest"]), text)
"""Mostly a version that exists (the default or 1), else any."""


def dims(feature_dims: tuple[int, ...] = FEATURE_DIMS) -> st.SearchStrategy[int]:
    """One dimension: mostly small, sometimes negative, zero or far past any memory."""
    return st.one_of(
        st.integers(1, 8), st.sampled_from(feature_dims), st.sampled_from(HUGE_DIMS), st.integers(*INT64)
    )


shapes = st.lists(dims(), max_size=12)
"""Any rank from 0 to 12."""


def floats32() -> st.SearchStrategy[float]:
    """float32 values, NaN and both infinities included."""
    return st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def payload(draw: st.DrawFn, dtype: str = "<f4", max_elements: int = 64) -> tuple[list[int], bytes]:
    """A shape and bytes: either consistent (the bytes fit the shape, with NaN and Inf
    among the values), a consistent pair with bytes cut or added, or both random."""
    mode = draw(st.sampled_from(["fit", "fit", "off-by", "random"]))
    if mode == "random":
        return draw(shapes), draw(st.binary(max_size=128))
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 4)) for _ in range(rank)]
    if draw(st.booleans()):
        shape[-1] = draw(st.sampled_from(FEATURE_DIMS))
    count = int(np.prod(shape))
    if count > max_elements:
        shape, count = [1] * (rank - 1) + [shape[-1]], shape[-1]
    if dtype == "<f4":
        values = draw(st.lists(floats32(), min_size=count, max_size=count))
    else:
        values = draw(st.lists(st.integers(-32768, 32767), min_size=count, max_size=count))
    data = np.asarray(values, dtype=dtype).tobytes()
    if mode == "off-by":
        cut = draw(st.integers(-len(data), 7))
        data = data[:cut] if cut < 0 else data + bytes(cut + 1)
    return shape, data


# ---- lstmserve.v1 ------------------------------------------------------------------
enum_values: st.SearchStrategy[Any] = st.one_of(st.integers(0, 3), st.integers(0, 3), st.integers(*INT32))
"""An enum field: its defined values, or any int32 (proto3 keeps unknown values)."""


@st.composite
def tensors(draw: st.DrawFn) -> pb.Tensor:
    """A native Tensor: any dtype value, any shape, bytes that may or may not fit."""
    shape, data = draw(payload())
    return pb.Tensor(shape=shape, dtype=draw(enum_values), data=data)


def model_refs() -> st.SearchStrategy[pb.ModelRef]:
    """A ModelRef, unset name included."""
    return st.builds(pb.ModelRef, name=model_names, version=versions)


@st.composite
def predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    """A native PredictRequest with every field hostile or absent."""
    request = pb.PredictRequest(
        model=draw(model_refs()),
        lengths=draw(st.one_of(st.just([]), st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**32 - 1)),
                                                     max_size=5))),
        session_id=draw(st.one_of(st.just(""), text)),
        must_exist=draw(st.booleans()),
        end_session=draw(st.booleans()),
        return_state=draw(st.booleans()),
        resume_token=draw(st.one_of(st.just(b""), st.binary(max_size=80))),
        return_token=draw(st.booleans()),
    )
    if draw(st.booleans()):
        request.features.CopyFrom(draw(tensors()))
    for _ in range(draw(st.integers(0, 3))):
        request.initial_states.add(name=draw(st.one_of(st.sampled_from(["h", "c", "h0"]), text)),
                                   tensor=draw(tensors()))
    if draw(st.booleans()):
        request.frame_offset = draw(st.one_of(st.integers(0, 64), st.integers(*UINT64)))
    return request


@st.composite
def stream_configs(draw: st.DrawFn) -> pb.StreamConfig:
    """A StreamConfig with any model, ids, enums, audio format and output options."""
    config = pb.StreamConfig(
        model=draw(model_refs()),
        session_id=draw(st.one_of(st.just(""), text)),
        must_exist=draw(st.booleans()),
        input_kind=draw(enum_values),
        resume_token=draw(st.one_of(st.just(b""), st.binary(max_size=80))),
        token_every=draw(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1))),
    )
    if draw(st.booleans()):
        config.audio.encoding = draw(enum_values)
        config.audio.sample_rate_hz = draw(st.one_of(st.sampled_from([8000, 16000, 44100, 0, 1]),
                                                     st.integers(*INT32)))
    if draw(st.booleans()):
        if draw(st.booleans()):
            config.output.frame_outputs = draw(st.booleans())
        if draw(st.booleans()):
            config.output.events = draw(st.booleans())
        config.output.return_state = draw(st.booleans())
    return config


@st.composite
def stream_requests(draw: st.DrawFn) -> pb.StreamRequest:
    """One StreamRequest: config, a chunk of features or audio, end, or nothing."""
    kind = draw(st.sampled_from(["config", "chunk", "chunk", "end", "empty"]))
    if kind == "config":
        return pb.StreamRequest(config=draw(stream_configs()))
    if kind == "end":
        return pb.StreamRequest(end=pb.End(keep_session=draw(st.booleans())))
    if kind == "empty":
        return pb.StreamRequest()
    chunk = pb.Chunk(sequence_number=draw(st.one_of(st.integers(0, 4), st.integers(*UINT64))))
    which = draw(st.sampled_from(["features", "audio", "none"]))
    if which == "features":
        chunk.features.CopyFrom(draw(tensors()))
    elif which == "audio":
        chunk.audio = draw(st.one_of(st.binary(max_size=96), payload("<f4").map(lambda p: p[1]),
                                     payload("<i2").map(lambda p: p[1])))
    return pb.StreamRequest(chunk=chunk)


# ---- inference (the Open Inference Protocol) ---------------------------------------
PARAMETER_NAMES = (
    "sequence_id", "sequence_start", "sequence_end", "sample_rate_hz", "priority", "timeout",
    "binary_data_output", "headers", "triton_enable_empty_final_response", "binary_data_size",
)
DATATYPES = ("FP32", "INT16", "fp32", "FP64", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "FP16", "BF16", "")
INPUT_NAMES = ("x", "x", "AUDIO", "AUDIO", "features", "INPUT0")


@st.composite
def parameters(draw: st.DrawFn) -> v2.InferParameter:
    """An InferParameter of any kind, or none set."""
    kind = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "none"]))
    if kind == "bool":
        return v2.InferParameter(bool_param=draw(st.booleans()))
    if kind == "int64":
        return v2.InferParameter(int64_param=draw(st.one_of(st.integers(-2, 70000), st.integers(*INT64))))
    if kind == "string":
        return v2.InferParameter(string_param=draw(text))
    if kind == "double":
        return v2.InferParameter(double_param=draw(st.floats()))
    if kind == "uint64":
        return v2.InferParameter(uint64_param=draw(st.one_of(st.integers(0, 70000), st.integers(*UINT64))))
    return v2.InferParameter()


def _fill_parameters(target: Any, draw: st.DrawFn) -> None:
    keys = draw(st.lists(st.one_of(st.sampled_from(PARAMETER_NAMES), text), max_size=4))
    for key in dict.fromkeys(keys):  # a map: a repeated key is one entry
        target[key].CopyFrom(draw(parameters()))


@st.composite
def contents(draw: st.DrawFn, count: int) -> v2.InferTensorContents:
    """Typed contents: FP32 or INT32 values (about ``count`` of them, NaN and values
    past INT16 included), or any other typed field."""
    result = v2.InferTensorContents()
    size = draw(st.sampled_from([count, count, max(0, count - 1), count + 1]))
    which = draw(st.sampled_from(["fp32", "fp32", "int", "int", "int64", "bytes", "bool", "fp64"]))
    if which == "fp32":
        result.fp32_contents.extend(draw(st.lists(floats32(), min_size=size, max_size=size)))
    elif which == "int":
        values = st.one_of(st.integers(-32768, 32767), st.integers(*INT32))
        result.int_contents.extend(draw(st.lists(values, min_size=size, max_size=size)))
    elif which == "int64":
        result.int64_contents.extend(draw(st.lists(st.integers(*INT64), max_size=size)))
    elif which == "bytes":
        result.bytes_contents.extend(draw(st.lists(st.binary(max_size=8), max_size=4)))
    elif which == "bool":
        result.bool_contents.extend(draw(st.lists(st.booleans(), max_size=size)))
    else:
        result.fp64_contents.extend(draw(st.lists(st.floats(), max_size=size)))
    return result


@st.composite
def infer_requests(draw: st.DrawFn, model: str | None = None) -> v2.ModelInferRequest:
    """A ModelInferRequest: any model, ids, parameters, inputs (raw, typed, both or
    none), requested outputs."""
    request = v2.ModelInferRequest(
        model_name=model if model is not None else draw(model_names),
        model_version=draw(versions),
        id=draw(text),
    )
    _fill_parameters(request.parameters, draw)
    if draw(st.booleans()):  # most runs: a plausible sequence
        request.parameters["sequence_id"].string_param = draw(st.sampled_from(["fz-1", "fz-2", "\x00", "7"]))
        request.parameters["sequence_start"].bool_param = draw(st.booleans())
        request.parameters["sequence_end"].bool_param = draw(st.booleans())
    for _ in range(draw(st.sampled_from([1, 1, 1, 0, 2]))):
        datatype = draw(st.one_of(st.sampled_from(DATATYPES), text))
        shape, data = draw(payload("<i2" if datatype == "INT16" else "<f4"))
        if draw(st.booleans()) and shape and shape[0] != 1:
            shape = [1, *shape[1:]]
        tensor = request.inputs.add(name=draw(st.one_of(st.sampled_from(INPUT_NAMES), text)), datatype=datatype,
                                    shape=shape)
        _fill_parameters(tensor.parameters, draw)
        mode = draw(st.sampled_from(["raw", "raw", "typed", "typed", "both", "none"]))
        if mode in ("raw", "both"):
            request.raw_input_contents.append(data)
        if mode in ("typed", "both"):
            count = int(np.prod(shape)) if shape and all(0 < d <= 64 for d in shape) else 3
            tensor.contents.CopyFrom(draw(contents(min(count, 256))))
    for _ in range(draw(st.integers(0, 2))):
        out = request.outputs.add(name=draw(st.one_of(st.sampled_from(["y", "y", "EVENTS", "output"]), text)))
        _fill_parameters(out.parameters, draw)
    if draw(st.integers(0, 9)) == 0:
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    return request


# ---- bytes that do not parse ----------------------------------------------------------
@st.composite
def garbled(draw: st.DrawFn, message: st.SearchStrategy[Any]) -> bytes:
    """A serialized message broken: truncated, with bytes flipped, inserted or cut out
    of the middle, an endless varint or a length past the end appended, or random
    bytes. Some results still parse (as another message); that is fine."""
    data = draw(message).SerializeToString()
    how = draw(st.sampled_from(["truncate", "flip", "insert", "splice", "varint", "length", "random"]))
    if how == "random" or not data:
        return bytes(draw(st.binary(min_size=1, max_size=96)))
    if how == "truncate":
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    if how == "insert":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
    if how == "splice":
        a = draw(st.integers(0, len(data) - 1))
        b = draw(st.integers(a, len(data)))
        return data[:a] + data[b:] + b"\x0a"
    if how == "varint":
        return data + b"\x08" + b"\xff" * 11
    return data + b"\x12\xff\xff\x7f" + b"ab"


# ---- requests that get past decoding, so that the domain's checks run too ------------
FEATURE_MODELS = {"har": 6, "har-gru": 6, "forecast": 6, "vowels": 12}
"""Feature models of models/ and their feature dimension (vowels is the bidirectional one)."""


@st.composite
def frames_array(draw: st.DrawFn, feature_dim: int, batch: int | None = None) -> np.ndarray:
    """``[batch, frames, feature_dim]`` float32, with NaN or Inf in some examples."""
    rows = batch if batch is not None else draw(st.integers(1, 3))
    array = np.asarray(
        draw(st.lists(st.floats(-4, 4, width=32), min_size=1, max_size=1)) * (rows * 5 * feature_dim), "<f4"
    ).reshape(rows, 5, feature_dim)
    frames = draw(st.integers(1, 5))
    array = np.ascontiguousarray(array[:, :frames])
    if draw(st.integers(0, 3)) == 0:
        array[draw(st.integers(0, rows - 1)), draw(st.integers(0, frames - 1)), 0] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
    return array


@st.composite
def plausible_predict_requests(draw: st.DrawFn) -> pb.PredictRequest:
    """A native Predict for a real feature model, of the right shape, with lengths,
    sessions, offsets and states that may or may not fit."""
    model = draw(st.sampled_from(sorted(FEATURE_MODELS)))
    session_id = draw(st.sampled_from(["", "", "fz-p1", "fz-p2", "\x00"]))
    array = draw(frames_array(FEATURE_MODELS[model], batch=1 if session_id and draw(st.integers(0, 4)) else None))
    batched = array.shape[0] > 1 or draw(st.booleans())
    request = pb.PredictRequest(
        model=pb.ModelRef(name=model),
        features=pb.Tensor(shape=array.shape if batched else array.shape[1:], data=array.tobytes()),
        session_id=session_id,
        return_state=draw(st.booleans()), end_session=draw(st.booleans()), must_exist=draw(st.integers(0, 3)) == 0,
        return_token=draw(st.integers(0, 3)) == 0,
    )
    if draw(st.integers(0, 2)) == 0:
        frames = array.shape[1]
        lengths = st.one_of(st.integers(1, frames), st.integers(1, frames), st.sampled_from([0, frames + 1]))
        request.lengths.extend(draw(st.lists(lengths, min_size=array.shape[0], max_size=array.shape[0])))
    if draw(st.integers(0, 3)) == 0:
        request.frame_offset = draw(st.sampled_from([0, 5, 2**64 - 1]))
    if draw(st.integers(0, 3)) == 0:
        shape = draw(st.sampled_from([[2, array.shape[0], 32], [1, 1, 1], [2, array.shape[0], 64]]))
        request.initial_states.add(name=draw(st.sampled_from(["h", "c", "state"])),
                                   tensor=pb.Tensor(shape=shape, data=bytes(4 * int(np.prod(shape)))))
    return request


@st.composite
def plausible_infer_requests(draw: st.DrawFn) -> v2.ModelInferRequest:
    """A ModelInferRequest for a real model, of the right input name, datatype and
    shape, raw or typed, with sequence parameters that may or may not fit."""
    model = draw(st.sampled_from([*sorted(FEATURE_MODELS), "kws"]))
    request = v2.ModelInferRequest(model_name=model, id=draw(st.sampled_from(["", "r1", "\x00"])))
    if model == "kws":
        datatype = draw(st.sampled_from(["INT16", "FP32"]))
        samples = draw(st.integers(1, 400))
        dtype = "<i2" if datatype == "INT16" else "<f4"
        scale = draw(st.sampled_from([1000.0, 0.5, 3.0])) if dtype == "<f4" else 1000.0
        array = (np.sin(np.arange(samples) / 7.0) * scale).astype(dtype).reshape(1, samples)
        if dtype == "<f4" and draw(st.integers(0, 3)) == 0:
            array[0, 0] = np.nan
        tensor = request.inputs.add(name="AUDIO", datatype=datatype, shape=array.shape)
        if draw(st.booleans()):
            rates = [16000, 8000, 48000, 0, -1, 1, 7, 192000, 192001]
            request.parameters["sample_rate_hz"].int64_param = draw(st.sampled_from(rates))
    else:
        array = draw(frames_array(FEATURE_MODELS[model], batch=None if model == "vowels" else 1))
        tensor = request.inputs.add(name="x", datatype="FP32", shape=array.shape)
    if draw(st.booleans()):
        request.raw_input_contents.append(array.tobytes())
    elif array.dtype == np.dtype("<i2"):
        tensor.contents.int_contents.extend(array.ravel().tolist())
    else:
        tensor.contents.fp32_contents.extend(array.ravel().tolist())
    if model != "vowels" or draw(st.integers(0, 3)) == 0:
        request.parameters["sequence_id"].string_param = draw(st.sampled_from(["fz-s1", "fz-s2", "fz-s3"]))
        request.parameters["sequence_start"].bool_param = draw(st.booleans())
        request.parameters["sequence_end"].bool_param = draw(st.booleans())
    if draw(st.integers(0, 3)) == 0:
        request.outputs.add(name=draw(st.sampled_from(["y", "EVENTS", "z"])))
    return request
