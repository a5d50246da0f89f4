"""Layer (b) of the decoder fuzzers: a bounded number of hostile requests against a
real server (the bundled models/ on free loopback ports), sent as raw bytes through
generic calls (no serializer), so that garbled, truncated and well-formed messages all
travel exactly as a hostile client would send them.

No answer may be UNKNOWN or INTERNAL (an exception that escaped the converters and the
interceptor), nor UNAVAILABLE or DEADLINE_EXCEEDED (a crashed or hung server); a
ModelStreamInfer error in band never carries the internal-error message. Afterwards the
server still answers normal requests, counted no INTERNAL or UNKNOWN error, and logged
no unhandled exception."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from lstm_client import Security
from lstm_serve.tokens import write_key_file
from lstm_serve.transport.status import INTERNAL_MESSAGE
from lstmserve.kserve_v2 import grpc_service_pb2 as v2
from lstmserve.v1 import inference_pb2 as pb
from tests.certs import write_keys_file
from tests.fuzz import strategies as s
from tests.fuzz.conftest import examples
from tests.harness import REPO, ServerHandle, metric_sum, scrape, start_server

pytestmark = pytest.mark.fuzz

NATIVE = "/lstmserve.v1.Inference/"
OIP = "/inference.GRPCInferenceService/"
TIMEOUT_S = 30.0
"""Far longer than any answer takes: running into it means the server hung."""
BAD = {
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED,
}
HAR_FRAMES = np.random.default_rng(5).standard_normal((10, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server of its own (the fuzzers leave sessions and sequences behind), with a
    token key so that resume tokens are issued and opened too."""
    tokens = tmp_path_factory.mktemp("fuzz-tokens") / "tokens.json"
    write_key_file(tokens)
    with start_server(REPO / "models", args=["--token-keys", str(tokens), "--health-port", "0"]) as handle:
        yield handle


@pytest.fixture(scope="module")
def health_channel(fuzz_server: ServerHandle) -> Iterator[grpc.Channel]:
    """The plaintext health-only port (``--health-port``), which has its own grpc server."""
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_server.health_port}") as ch:
        yield ch


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerHandle) -> Iterator[grpc.Channel]:
    """One plaintext channel for every example."""
    with grpc.insecure_channel(fuzz_server.target) as ch:
        yield ch


def _outcome(name: str) -> None:
    """Record how deep an example got (``--hypothesis-show-statistics`` shows it)."""
    if currently_in_test_context():
        event(name)


def _assert_precise(code: grpc.StatusCode, details: str | None, what: str) -> None:
    assert code not in BAD, f"{what}: {code.name}: {details}"


def unary(channel: grpc.Channel, method: str, payload: bytes) -> bytes | None:
    """Send ``payload`` as it is; the response bytes, or None after a precise refusal."""
    call = channel.unary_unary(method)
    try:
        response: bytes = call(payload, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        _outcome(exc.code().name)
        _assert_precise(exc.code(), exc.details(), f"{method} {payload[:64]!r}")
        return None
    _outcome("OK")
    return response


def stream(channel: grpc.Channel, method: str, payloads: list[bytes]) -> list[bytes]:
    """Send each payload as one stream message, then half-close; the responses read
    until the stream ended, OK or with a precise status."""
    call = channel.stream_stream(method)
    responses: list[bytes] = []
    try:
        for response in call(iter(payloads), timeout=TIMEOUT_S):
            responses.append(response)
    except grpc.RpcError as exc:
        _outcome(f"ended {exc.code().name} after {min(len(responses), 3)} responses")
        _assert_precise(exc.code(), exc.details(), f"{method} {[p[:32] for p in payloads]!r}")
        return responses
    _outcome(f"ended OK after {min(len(responses), 3)} responses")
    return responses


def wire(message: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """A message serialized, or the same kind of message garbled."""
    return st.one_of(message.map(lambda m: m.SerializeToString()), s.garbled(message))


# ---- lstmserve.v1 ------------------------------------------------------------------
@given(payload=wire(st.one_of(s.predict_requests(), s.plausible_predict_requests(), s.plausible_predict_requests())))
@settings(max_examples=examples(0.5))
def test_native_predict(channel: grpc.Channel, payload: bytes) -> None:
    unary(channel, NATIVE + "Predict", payload)


@given(payload=wire(st.builds(pb.GetModelMetadataRequest, model=s.model_refs())),
       method=st.sampled_from(["GetModelMetadata", "ListModels"]))
@settings(max_examples=examples(0.25))
def test_native_metadata(channel: grpc.Channel, payload: bytes, method: str) -> None:
    unary(channel, NATIVE + method, payload)


@st.composite
def plausible_stream(draw: st.DrawFn) -> list[bytes]:
    """A stream that opens (a config for har, kws or vowels) and sends chunks of the
    right kind, with NaN, duplicate or skipped sequence numbers, hostile messages or
    garbage among them."""
    model = draw(st.sampled_from(["har", "har", "kws", "kws", "vowels"]))
    config = pb.StreamConfig(model=pb.ModelRef(name=model), session_id=draw(st.sampled_from(["", "fz-a", "fz-b"])))
    encoding = draw(st.sampled_from([pb.AUDIO_ENCODING_PCM16, pb.AUDIO_ENCODING_FLOAT32]))
    if model == "kws":
        config.input_kind = pb.INPUT_KIND_AUDIO
        config.audio.encoding = encoding
        config.audio.sample_rate_hz = draw(st.sampled_from([16000, 8000, 44100, 1, 7, 192000]))
    messages = [pb.StreamRequest(config=config).SerializeToString()]
    for i in range(draw(st.integers(0, 4))):
        seq = draw(st.sampled_from([i] * 6 + [i - 1, i + 1, 2**64 - 1])) % 2**64
        if model == "kws":
            dtype = "<i2" if encoding == pb.AUDIO_ENCODING_PCM16 else "<f4"
            samples = (np.sin(np.arange(draw(st.integers(1, 800))) / 5.0) * 0.5).astype(dtype)
            if dtype == "<f4" and draw(st.integers(0, 4)) == 0:
                samples[-1] = np.nan
            chunk = pb.Chunk(sequence_number=seq, audio=samples.tobytes()[: draw(st.sampled_from([None, None, -1]))])
        else:
            array = draw(s.frames_array(6, batch=1))[0]
            chunk = pb.Chunk(sequence_number=seq, features=pb.Tensor(shape=array.shape, data=array.tobytes()))
        messages.append(pb.StreamRequest(chunk=chunk).SerializeToString())
    if draw(st.integers(0, 2)) == 0:
        messages.insert(draw(st.integers(1, len(messages))), draw(wire(s.stream_requests())))
    if draw(st.booleans()):
        messages.append(pb.StreamRequest(end=pb.End(keep_session=draw(st.booleans()))).SerializeToString())
    return messages


@given(messages=st.one_of(plausible_stream(), st.lists(wire(s.stream_requests()), min_size=1, max_size=5)))
@settings(max_examples=examples(0.5))
def test_native_stream(channel: grpc.Channel, messages: list[bytes]) -> None:
    stream(channel, NATIVE + "StreamPredict", messages)


# ---- inference (the Open Inference Protocol) ---------------------------------------
@given(payload=wire(st.one_of(s.infer_requests(), st.sampled_from(s.MODELS).flatmap(s.infer_requests),
                             s.plausible_infer_requests())))
@settings(max_examples=examples(0.5))
def test_infer(channel: grpc.Channel, payload: bytes) -> None:
    unary(channel, OIP + "ModelInfer", payload)


@given(payloads=st.lists(wire(st.one_of(st.sampled_from(s.MODELS).flatmap(s.infer_requests),
                                        s.plausible_infer_requests())), min_size=1, max_size=4))
@settings(max_examples=examples(0.4))
def test_infer_stream(channel: grpc.Channel, payloads: list[bytes]) -> None:
    for raw in stream(channel, OIP + "ModelStreamInfer", payloads):
        answer = v2.ModelStreamInferResponse.FromString(raw)
        _outcome("in-band error" if answer.error_message else "in-band OK")
        assert answer.error_message != INTERNAL_MESSAGE, f"in-band INTERNAL for {[p[:32] for p in payloads]!r}"


_NAMED = {
    "ModelReady": v2.ModelReadyRequest, "ModelMetadata": v2.ModelMetadataRequest,
    "ModelConfig": v2.ModelConfigRequest, "ModelStatistics": v2.ModelStatisticsRequest,
}


@st.composite
def oip_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    """Any other method of the service, with hostile names, parameters or bytes."""
    method = draw(st.sampled_from([*_NAMED, "RepositoryModelLoad", "RepositoryModelUnload", "RepositoryIndex",
                                   "ServerMetadata", "ServerLive", "ServerReady"]))
    message: st.SearchStrategy[Any]
    if method in _NAMED:
        message = st.builds(_NAMED[method], name=s.model_names, version=s.versions)
    elif method.startswith("RepositoryModel"):
        cls = v2.RepositoryModelLoadRequest if method.endswith("Load") else v2.RepositoryModelUnloadRequest
        message = st.builds(cls, repository_name=st.one_of(st.just(""), s.text), model_name=s.model_names)
    elif method == "RepositoryIndex":
        message = st.builds(v2.RepositoryIndexRequest, repository_name=s.text, ready=st.booleans())
    else:
        message = st.just(getattr(v2, f"{method}Request")())
    return method, draw(wire(message))


@given(request=oip_requests())
@settings(max_examples=examples(0.4))
def test_oip_other_methods(channel: grpc.Channel, request: tuple[str, bytes]) -> None:
    method, payload = request
    unary(channel, OIP + method, payload)


# ---- explicit model control: load and unload by name -----------------------------------
@pytest.fixture(scope="module")
def explicit_channel() -> Iterator[grpc.Channel]:
    """A server with ``--model-control explicit``, so that RepositoryModelLoad and
    Unload reach the repository."""
    with start_server(REPO / "models", args=["--model-control", "explicit"]) as handle, \
            grpc.insecure_channel(handle.target) as ch:
        yield ch


_REPOSITORY_NAMES = st.one_of(
    st.sampled_from([*s.MODELS, "..", ".", "/tmp", "../models", "har/1", "har/..", "nope"]), s.text
)


@given(method=st.sampled_from(["RepositoryModelLoad", "RepositoryModelUnload"]), name=_REPOSITORY_NAMES,
       parameter=st.one_of(st.none(), st.sampled_from(["unload_dependents", "config", "file:1/model.onnx"])))
@settings(max_examples=examples(0.25))
@example(method="RepositoryModelLoad", name="..", parameter=None)  # read the repository's parent folder
@example(method="RepositoryModelLoad", name="/tmp", parameter=None)  # an absolute path
def test_repository_load_and_unload(
    explicit_channel: grpc.Channel, method: str, name: str, parameter: str | None
) -> None:
    cls = v2.RepositoryModelLoadRequest if method.endswith("Load") else v2.RepositoryModelUnloadRequest
    request = cls(model_name=name)
    if parameter is not None:
        request.parameters[parameter].bool_param = True
    unary(explicit_channel, OIP + method, request.SerializeToString())
    index = unary(explicit_channel, OIP + "RepositoryIndex", b"")
    assert index is not None
    names = {m.name for m in v2.RepositoryIndexResponse.FromString(index).models}
    assert names <= set(s.MODELS), f"the repository lists folders that are not models/ packages: {names}"


# ---- health and reflection: the interceptor wraps them too ------------------------------
HEALTH = "/grpc.health.v1.Health/"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
_SERVICES = ["", "lstmserve.v1.Inference", "inference.GRPCInferenceService", "har", "\x00"]


def watch_first(channel: grpc.Channel, payload: bytes) -> bytes | None:
    """Health Watch: its first answer (then cancel), or None after a precise refusal."""
    call = channel.unary_stream(HEALTH + "Watch")(payload, timeout=TIMEOUT_S)
    try:
        first: bytes = next(call)
    except grpc.RpcError as exc:
        _outcome(exc.code().name)
        _assert_precise(exc.code(), exc.details(), f"Health/Watch {payload[:64]!r}")
        return None
    finally:
        call.cancel()
    _outcome("OK")
    return first


@given(payload=wire(st.builds(health_pb2.HealthCheckRequest, service=st.one_of(st.sampled_from(_SERVICES), s.text))),
       method=st.sampled_from(["Check", "Watch", "reflection"]), health_port=st.booleans())
@settings(max_examples=examples(0.25))
@example(payload=b"\xff\xfe\xfd", method="Watch", health_port=False)  # was UNKNOWN, with a traceback in the log
@example(payload=b"\x0a\x05ab", method="Watch", health_port=False)  # a length past the end
@example(payload=b"\xff\xfe\xfd", method="Check", health_port=True)  # was UNKNOWN on the health port
@example(payload=b"\xff\xfe\xfd", method="Watch", health_port=True)
def test_health_and_reflection(
    channel: grpc.Channel, health_channel: grpc.Channel, payload: bytes, method: str, health_port: bool
) -> None:
    """Health on the main port and on the health-only port; reflection on the main port."""
    target = health_channel if health_port and method != "reflection" else channel
    if method == "Check":
        unary(target, HEALTH + "Check", payload)
    elif method == "Watch":
        watch_first(target, payload)
    else:
        stream(channel, REFLECTION, [payload])


@pytest.mark.parametrize("port", ["main", "health"])
def test_undecodable_health_watch_is_invalid_argument(
    channel: grpc.Channel, health_channel: grpc.Channel, port: str
) -> None:
    """Regression: grpc answered an undecodable Watch with UNKNOWN (the interceptor
    passed unary-stream handlers through unless authentication was on), and the
    health-only port, which had no interceptor, answered Check and Watch so."""
    target = channel if port == "main" else health_channel
    call = target.unary_stream(HEALTH + "Watch")(b"\xff\xfe\xfd", timeout=TIMEOUT_S)
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not a valid grpc.health.v1.HealthCheckRequest" in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        target.unary_unary(HEALTH + "Check")(b"\xff\xfe\xfd", timeout=TIMEOUT_S)
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert watch_first(target, health_pb2.HealthCheckRequest().SerializeToString()) is not None


# ---- authentication on: the guarded path of the interceptor ------------------------------
KEY = "fuzz-key-0123456789"


@pytest.fixture(scope="module")
def auth_channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[grpc.Channel, ServerHandle]]:
    """API keys on (one key, for har and kws), health closed too."""
    keys = write_keys_file(tmp_path_factory.mktemp("fuzz-auth") / "keys.json",
                           [{"key": KEY, "subject": "fuzz", "models": ["har", "kws"]}])
    with start_server(REPO / "models", args=["--auth-keys", str(keys)], env={"LSTM_SERVE_AUTH__OPEN_HEALTH": "false"},
                      security=Security(token=KEY)) as handle, grpc.insecure_channel(handle.target) as ch:
        yield ch, handle


_ASCII = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
credentials = st.one_of(
    st.just([("authorization", f"Bearer {KEY}")]),
    st.just([("authorization", f"bearer {KEY}")]),
    st.just([]),
    st.just([("authorization", f"Bearer {KEY}"), ("authorization", f"Bearer {KEY}")]),
    _ASCII.map(lambda t: [("authorization", f"Bearer {t}")]),
    _ASCII.map(lambda t: [("authorization", t)]),
    st.just([("authorization", "Basic Zm9vOmJhcg==")]),
)


@given(metadata=credentials, request=st.one_of(
    wire(st.one_of(s.predict_requests(), s.plausible_predict_requests())).map(lambda p: ("Predict", p)),
    wire(st.one_of(s.infer_requests(), s.plausible_infer_requests())).map(lambda p: ("ModelInfer", p)),
    wire(st.builds(pb.GetModelMetadataRequest, model=s.model_refs())).map(lambda p: ("GetModelMetadata", p)),
    wire(st.builds(health_pb2.HealthCheckRequest)).map(lambda p: ("Check", p)),
    wire(st.builds(health_pb2.HealthCheckRequest)).map(lambda p: ("Watch", p)),
))
@settings(max_examples=examples(0.4))
def test_authenticated_calls(
    auth_channel: tuple[grpc.Channel, ServerHandle], metadata: list[tuple[str, str]], request: tuple[Any, bytes]
) -> None:
    """Any credential (good, lower-case scheme, missing, twice, garbage, Basic) with any
    request: UNAUTHENTICATED, PERMISSION_DENIED or the request's own status, never INTERNAL."""
    channel, _ = auth_channel
    method, payload = request
    prefix = {"Predict": NATIVE, "GetModelMetadata": NATIVE, "ModelInfer": OIP}.get(method, HEALTH)
    try:
        if method == "Watch":
            watch = channel.unary_stream(HEALTH + "Watch")(payload, timeout=TIMEOUT_S, metadata=metadata)
            try:
                next(watch)
            finally:
                watch.cancel()
        else:
            channel.unary_unary(prefix + method)(payload, timeout=TIMEOUT_S, metadata=metadata)
        _outcome("OK")
    except grpc.RpcError as exc:
        _outcome(exc.code().name)
        _assert_precise(exc.code(), exc.details(), f"{method} {metadata!r} {payload[:32]!r}")


def test_authenticated_server_counted_no_internal_error(auth_channel: tuple[grpc.Channel, ServerHandle]) -> None:
    _, server = auth_channel
    samples = scrape(server.metrics_url)
    for code in ("INTERNAL", "UNKNOWN"):
        assert metric_sum(samples, "lstm_serve_errors_total", code=code) == 0, code
    assert "Traceback" not in server.log(), server.log()[-4000:]


# ---- afterwards ----------------------------------------------------------------------
def test_server_still_serves_and_counted_no_internal_error(fuzz_server: ServerHandle, channel: grpc.Channel) -> None:
    """Runs after the fuzzers above (file order): normal requests of both APIs still
    succeed, no RPC ended INTERNAL or UNKNOWN, and nothing unhandled was logged."""
    with fuzz_server.client() as client:
        assert client.predict("har", HAR_FRAMES).outputs[0].shape == (10, 4)
    request = v2.ModelInferRequest(
        model_name="vowels", inputs=[v2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32",
                                                                          shape=[1, 7, 12])],
        raw_input_contents=[np.zeros((1, 7, 12), "<f4").tobytes()],
    )
    answer = unary(channel, OIP + "ModelInfer", request.SerializeToString())
    assert answer is not None and v2.ModelInferResponse.FromString(answer).outputs[0].shape == [1, 9]
    samples = scrape(fuzz_server.metrics_url)
    for code in ("INTERNAL", "UNKNOWN"):
        assert metric_sum(samples, "lstm_serve_errors_total", code=code) == 0, code
    log = fuzz_server.log()
    assert "unhandled error" not in log and "Traceback" not in log, log[-4000:]
