"""Layer (a) of the decoder fuzzers: every decode path from protobuf to domain, called
in-process with hostile messages. A decoder either returns domain values or raises a
:class:`~lstm_serve.errors.ServeError` subclass (which the interceptor maps to its
precise status); anything else would reach the client as INTERNAL. A refusal's message
stays short: client input is echoed only truncated (``errors.echo``)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lstm_serve import snapshot, state
from lstm_serve.audio import check_audio_format
from lstm_serve.domain import Chunk, StreamConfig
from lstm_serve.errors import MAX_ID_BYTES, InvalidInput, ServeError
from lstm_serve.manifest import Manifest, load_manifest
from lstm_serve.predict import check_frames, check_rows
from lstm_serve.settings import Settings
from lstm_serve.tokens import KEY_BYTES, TOKEN_FORMAT, TokenKey, TokenSealer
from lstm_serve.transport.kserve_v2 import convert as v2_convert
from lstm_serve.transport.lstmserve_v1 import convert as v1_convert
from lstmserve.kserve_v2 import grpc_service_pb2 as v2
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import session_pb2 as spb
from tests.fuzz import strategies as s
from tests.fuzz.conftest import examples
from tests.harness import REPO

pytestmark = pytest.mark.fuzz

T = TypeVar("T")

MESSAGE_LIMIT = 2048
"""Longest refusal message: far below gRPC's 8 KiB metadata soft limit, however long
the client's values (ids up to 16 KiB are legal)."""
MAX_FRAMES = Settings().sessions.max_chunk_frames


@cache
def manifests() -> dict[str, Manifest]:
    """The bundled models' manifests: causal features, audio, bidirectional."""
    return {name: load_manifest(REPO / "models" / name / "1") for name in s.MODELS}


def decoded(fn: Callable[..., T], *args: Any) -> T | None:
    """``fn(*args)``, or None when it refuses with a domain error of bounded length.
    Any other exception propagates and fails the example."""
    try:
        return fn(*args)
    except ServeError as exc:
        message = str(exc)
        assert message, f"{type(exc).__name__} without a message"
        assert len(message) <= MESSAGE_LIMIT, f"{type(exc).__name__}: {len(message)} chars: {message[:200]}..."
        return None


# ---- lstmserve.v1 ------------------------------------------------------------------
@given(request=st.one_of(s.predict_requests(), s.plausible_predict_requests()), model=st.sampled_from(s.MODELS))
@settings(max_examples=examples(1.0))
@example(request=pb.PredictRequest(model=pb.ModelRef(name="har"), features=pb.Tensor(shape=[2**62, 2**62, 6])),
         model="har")
@example(request=pb.PredictRequest(model=pb.ModelRef(name="har"), features=pb.Tensor(shape=[-1, -6], data=b"\0" * 24)),
         model="har")
def test_native_predict_request(request: pb.PredictRequest, model: str) -> None:
    """PredictRequest → PredictInput, then the Predict use case's checks against a model."""
    value = decoded(v1_convert.predict_input, request)
    if value is not None:
        assert value.features.ndim == 3 and value.lengths.shape == (value.features.shape[0],)
        decoded(check_rows, value, manifests()[model], MAX_FRAMES)


@given(request=s.stream_requests(), model=st.sampled_from(s.MODELS))
@settings(max_examples=examples(1.0))
def test_native_stream_request(request: pb.StreamRequest, model: str) -> None:
    """StreamRequest → config, chunk or end, then the stream's checks of a chunk or format."""
    value = decoded(v1_convert.stream_message, request)
    if value is None:
        return
    if isinstance(value, Chunk) and value.features is not None:
        decoded(check_frames, value.features, manifests()[model], "chunk.features", MAX_FRAMES)
    if isinstance(value, StreamConfig) and (value.input_kind == "audio" or value.audio is not None):
        decoded(check_audio_format, value.audio)


@given(ref=s.model_refs())
@settings(max_examples=examples(0.5))
def test_native_model_ref(ref: pb.ModelRef) -> None:
    value = decoded(v1_convert.model_ref, ref)
    if value is not None:
        assert len(value.name.encode()) <= MAX_ID_BYTES and value.name == ref.name


# ---- inference (the Open Inference Protocol) ---------------------------------------
@given(request=st.one_of(s.infer_requests(), s.plausible_infer_requests()), model=st.sampled_from(s.MODELS))
@settings(max_examples=examples(1.5))
@example(
    request=v2.ModelInferRequest(
        model_name="kws", inputs=[v2.ModelInferRequest.InferInputTensor(name="AUDIO", datatype="INT16", shape=[1, 3])],
        raw_input_contents=[b"\0" * 6],
        parameters={"sequence_id": v2.InferParameter(uint64_param=2**64 - 1),
                    "sample_rate_hz": v2.InferParameter(uint64_param=2**64 - 1)},
    ),
    model="kws",
)
def test_infer_request(request: v2.ModelInferRequest, model: str) -> None:
    """ModelInferRequest → a sequence step or a stateless batch, as the servicer decodes
    it, against each kind of model whatever the request names; then the checks the
    domain makes of the decoded frames."""
    manifest = manifests()[model]
    if decoded(v2_convert.model_ref, request.model_name, request.model_version) is None:
        return
    decoded(v2_convert.wants_final_flag, request)
    sequence = decoded(v2_convert.sequence_of, request, Settings().kserve_v2.max_sequence_id_bytes)
    if sequence is not None:
        step = decoded(v2_convert.sequence_request, request, v2_convert.model_ref(model, ""), manifest, sequence)
        if step is not None and step.features is not None:
            decoded(check_frames, step.features, manifest, "inputs", MAX_FRAMES)
        if step is not None and step.audio_format is not None:
            decoded(check_audio_format, step.audio_format)
    elif not request.parameters or "sequence_id" not in request.parameters:
        batch = decoded(v2_convert.predict_input, request, v2_convert.model_ref(model, ""), manifest)
        if batch is not None:
            decoded(check_rows, batch, manifest, MAX_FRAMES)


@given(name=s.text, version=s.versions, field=st.sampled_from(["name", "model_name"]))
@settings(max_examples=examples(0.5))
def test_infer_model_ref(name: str, version: str, field: str) -> None:
    """ModelReady, ModelMetadata, ModelConfig, ModelStatistics, RepositoryModelLoad."""
    decoded(v2_convert.model_ref, name, version, field)


TRAVERSALS = ["..", ".", "../models/har", "/tmp/evil", "har/1", "har\\..\\x", "a\x00b", ".hidden", "har/../.."]


PATH_PARTS = st.lists(st.sampled_from(["..", "har", "/", ".", "\\"])).map("".join)


@given(name=st.one_of(s.text, st.sampled_from(TRAVERSALS), PATH_PARTS))
@settings(max_examples=examples(0.5))
def test_repository_model_name_is_one_folder(name: str) -> None:
    """RepositoryModelLoad / Unload's model_name: one folder of the repository, never a
    path out of it (regression: '..', '/tmp/evil' and '../x' were read from disk)."""
    accepted = decoded(v2_convert.repository_model_name, name)
    if accepted is not None:
        assert (REPO / "models" / accepted).parent == REPO / "models" and accepted == Path(accepted).name
        assert not accepted.startswith(".") and "\x00" not in accepted and "\\" not in accepted


@pytest.mark.parametrize("name", TRAVERSALS)
def test_repository_paths_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput, match=r"model_name: .* is not a model folder name"):
        v2_convert.repository_model_name(name)


# ---- resume tokens and the session snapshots they seal --------------------------------
SEALER = TokenSealer([TokenKey("k1", bytes(KEY_BYTES))], max_bytes=Settings().sessions.max_token_bytes)
MODEL_HASH = "0" * 64


@given(token=st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=60).map(lambda b: bytes([TOKEN_FORMAT, 2]) + b"k1" + b),
    st.binary(max_size=8).map(lambda b: bytes([TOKEN_FORMAT, 255]) + b),
))
@settings(max_examples=examples(0.5))
def test_resume_token_open(token: bytes) -> None:
    """A client's resume token: refused unless it opens with this server's key."""
    decoded(SEALER.open, token, "resume_token")


@st.composite
def snapshots(draw: st.DrawFn, manifest: Manifest) -> spb.SessionSnapshot:
    """A snapshot that names the right model (so that every later check runs), with
    states, audio and detector parts that may or may not fit it."""
    snap = spb.SessionSnapshot(
        schema_version=draw(st.sampled_from([state.SCHEMA_VERSION, state.SCHEMA_VERSION, 0, 99])),
        session_id=draw(s.text), principal=draw(s.text),
        model=pb.ModelRef(name=manifest.name, version=manifest.version), model_hash=MODEL_HASH,
        next_sequence_number=draw(st.integers(*s.UINT64)), frame_offset=draw(st.integers(*s.UINT64)),
    )
    names = [p.name for p in manifest.states]
    for name in draw(st.sampled_from([names, names, names[::-1], [*names, "x"], []])):
        spec = next((p for p in manifest.states if p.name == name), manifest.states[0])
        shape = draw(st.sampled_from([[spec.layers, 1, spec.hidden], [spec.layers, 2, spec.hidden]]))
        values = draw(st.one_of(st.just([0.0]), st.lists(s.floats32(), min_size=1, max_size=4)))
        data = np.resize(np.asarray(values, "<f4"), int(np.prod(shape))).tobytes()
        snap.states.add(name=name, tensor=pb.Tensor(shape=shape, data=data[: draw(st.sampled_from([len(data), 4]))]))
    if draw(st.booleans()):
        snap.audio.encoding = draw(s.enum_values)
        snap.audio.sample_rate_hz = draw(st.one_of(st.sampled_from([16000, 8000, 0]), st.integers(*s.INT32)))
        pipe = snap.audio_pipeline
        pipe.pending_bytes = draw(st.binary(max_size=5))
        if draw(st.booleans()):
            r = pipe.resampler
            r.in_rate, r.out_rate = draw(st.integers(*s.INT32)), draw(st.sampled_from([16000, 0]))
            r.history.extend(draw(st.lists(st.floats(), max_size=8)))
            r.history_start = draw(st.integers(*s.INT64))
        pipe.logmel.previous_sample = draw(st.floats())
        pipe.logmel.buffered.extend(draw(st.lists(st.floats(), max_size=8)))
    if draw(st.booleans()):
        sp = snap.spotter
        sp.history_rows = draw(st.one_of(st.integers(0, 4), st.integers(0, 2**32 - 1)))
        sp.history.extend(draw(st.lists(st.floats(), max_size=12)))
        if draw(st.booleans()):
            sp.open.label = draw(st.integers(0, 2**32 - 1))
            sp.open.first_frame, sp.open.last_frame = draw(st.integers(*s.UINT64)), draw(st.integers(*s.UINT64))
    for _ in range(draw(st.integers(0, 2))):
        snap.final_events.add(label=draw(st.one_of(st.sampled_from(manifest.output.labels), s.text)),
                              score=draw(st.floats()))
    return snap


@given(data=st.data(), model=st.sampled_from(s.MODELS), garble=st.booleans())
@settings(max_examples=examples(1.0))
def test_snapshot_decode(data: st.DataObject, model: str, garble: bool) -> None:
    """A session snapshot (what a resume token or the shared store holds) → SessionState."""
    manifest = manifests()[model]
    message = snapshots(manifest)
    raw = data.draw(s.garbled(message) if garble else message.map(lambda m: m.SerializeToString()))
    decoded(snapshot.decode, raw, manifest, MODEL_HASH, "resume_token")

