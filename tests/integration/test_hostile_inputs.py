"""Hostile inputs found from outside (issue 9): each gets its precise status and a
message naming the field, a concurrent client's health calls keep answering during
the hostile call, and the reference outputs are unchanged afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from lstm_client import LstmClient, StatusError
from lstmserve.v1 import inference_pb2 as pb
from tests.conftest import FEATURE_DIM, FixtureModels
from tests.harness import ServerHandle, start_server

HEALTH_BOUND_S = 1.0
"""Generous: the benchmark reports the real figure; this only catches a frozen loop."""

RSS_GROWTH_BOUND_MB = 200.0
"""Documented in README (Limits): ten legal ~4 MB batches grow the server's RSS by
less than this. With onnxruntime's arena never shrinking they grew it by ~1 GB."""

REFERENCE = np.random.default_rng(99).standard_normal((12, FEATURE_DIM)).astype(np.float32)


class HealthProbe:
    """Calls health from its own channel in a loop while a hostile call runs."""

    def __init__(self, target: str) -> None:
        self._client = LstmClient(target, timeout=HEALTH_BOUND_S * 5)
        self._stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                status = self._client.health(timeout=HEALTH_BOUND_S * 5)
            except StatusError as exc:
                self.failures.append(str(exc))
                continue
            self.latencies.append(time.perf_counter() - started)
            if status != "SERVING":
                self.failures.append(status)
            self._stop.wait(0.02)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._client.close()


@contextmanager
def hostile(server: ServerHandle, model: str = "lstm", reference: np.ndarray = REFERENCE) -> Iterator[None]:
    """Around a hostile call: health keeps answering, and ``model``'s outputs for the
    reference input are the same after it as before."""
    with server.client() as client:
        before = client.predict(model, reference).outputs[0]
        with HealthProbe(server.target) as probe:
            yield
            time.sleep(0.1)  # let the probe get a call in after the hostile one too
        assert not probe.failures, probe.failures
        assert probe.latencies, "no health call completed"
        assert max(probe.latencies) < HEALTH_BOUND_S, max(probe.latencies)
        np.testing.assert_array_equal(client.predict(model, reference).outputs[0], before)


def raw_predict(client: LstmClient, request: pb.PredictRequest) -> Any:
    return client._call(client.stub.Predict, request)


def predict_error(client: LstmClient, request: pb.PredictRequest) -> StatusError:
    with pytest.raises(StatusError) as info:
        raw_predict(client, request)
    return info.value


def assert_status(error: StatusError, code: str, *fragments: str) -> None:
    assert error.code.name == code, error
    for fragment in fragments:
        assert fragment in error.details, error.details
    assert "Error" not in error.details and "<class" not in error.details, error.details


def features_request(shape: list[int], data: bytes = b"", name: str = "lstm", **kw: Any) -> pb.PredictRequest:
    return pb.PredictRequest(model=pb.ModelRef(name=name), features=pb.Tensor(shape=shape, data=data), **kw)


# ---- 1 and 6: shapes are validated before anything iterates or allocates ----------


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([2**40, 0, FEATURE_DIM], "zero-size"),
        ([2**62, 0], "zero-size"),
        ([0, FEATURE_DIM], "zero-size"),
        ([3, -1, FEATURE_DIM], "negative"),
        ([1] * 100, "rank 100"),
        ([5], "rank 1"),
        ([2**40, 2**40, FEATURE_DIM], "needs"),
    ],
)
def test_hostile_shapes_are_invalid_argument(server: ServerHandle, shape: list[int], fragment: str) -> None:
    with hostile(server), server.client() as client:
        started = time.perf_counter()
        error = predict_error(client, features_request(shape))
        assert time.perf_counter() - started < HEALTH_BOUND_S
    assert_status(error, "INVALID_ARGUMENT", "features", fragment)


def test_zero_size_stream_chunk_and_state_are_invalid(server: ServerHandle) -> None:
    with hostile(server), server.client() as client:
        call = client.open_stream()
        call.config(model={"name": "lstm"})
        call.send(pb.StreamRequest(chunk=pb.Chunk(sequence_number=0, features=pb.Tensor(shape=[2**40, 0]))))
        call.close()
        with pytest.raises(StatusError) as info:
            list(call.responses())
        assert_status(info.value, "INVALID_ARGUMENT", "chunk.features.shape", "zero-size")
        request = features_request([2, FEATURE_DIM], b"\0" * (8 * FEATURE_DIM))
        request.initial_states.add(name="h0", tensor=pb.Tensor(shape=[2, 0, 2**50]))
        assert_status(predict_error(client, request), "INVALID_ARGUMENT", "initial_states['h0'].shape", "zero-size")


def test_call_work_is_bounded_with_its_setting(fixture_models: FixtureModels) -> None:
    env = {"LSTM_SERVE_SESSIONS__MAX_PREDICT_FRAMES": "1000"}
    with start_server(fixture_models.root, env=env) as server, server.client() as client:
        ok = np.zeros((10, 100, FEATURE_DIM), np.float32)
        outputs = client.predict("lstm", ok).outputs
        assert len(outputs) == 10 and outputs[9].shape == (100, 4)
        with pytest.raises(StatusError) as info:
            client.predict("lstm", np.zeros((11, 100, FEATURE_DIM), np.float32))
    assert_status(info.value, "RESOURCE_EXHAUSTED", "features", "LSTM_SERVE_SESSIONS__MAX_PREDICT_FRAMES")


def test_batch_larger_than_max_batch_size_is_split_not_refused(server: ServerHandle) -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 9, size=300)
    batch = rng.standard_normal((300, 8, FEATURE_DIM)).astype(np.float32)
    with hostile(server), server.client() as client:
        got = client.predict("lstm", [b[:n] for b, n in zip(batch, lengths, strict=True)]).outputs
        for i in range(0, 300, 37):
            alone = client.predict("lstm", batch[i, : lengths[i]]).outputs[0]
            np.testing.assert_allclose(got[i], alone, atol=1e-5)


def test_legal_requests_up_to_the_message_limit_are_accepted(bundled_server: ServerHandle) -> None:
    har = np.random.default_rng(5).standard_normal((3000, 6)).astype(np.float32)
    vowels = np.random.default_rng(6).standard_normal((370, 29, 12)).astype(np.float32)
    lengths = [7 + i % 23 for i in range(370)]
    with hostile(bundled_server, "har", har[:50]), bundled_server.client() as client:
        big = client.predict("har", np.stack([har] * 58)).outputs
        assert len(big) == 58 and big[57].shape == (3000, 4)
        np.testing.assert_allclose(big[57], client.predict("har", har).outputs[0], atol=1e-5)
        rows = client.predict("vowels", [v[:n] for v, n in zip(vowels, lengths, strict=True)]).outputs
        assert len(rows) == 370
        # 174,000 one-frame sequences: 4.2 MB, just under the 4 MiB message limit.
        many = client.predict("har", np.repeat(har[:1, np.newaxis], 174_000, axis=0)).outputs
        assert len(many) == 174_000 and many[-1].shape == (1, 4)
        np.testing.assert_allclose(many[-1], many[0], atol=1e-6)


# ---- 3: legal large batches do not hold the process at their peak ---------------


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_rss_after_ten_large_batches_stays_bounded(bundled_server: ServerHandle) -> None:
    batch = np.random.default_rng(8).standard_normal((58, 3000, 6)).astype(np.float32)
    pid = bundled_server.process.pid
    with bundled_server.client() as client:
        client.predict("har", batch[:1, :100])
        before = _rss_mb(pid)
        with hostile(bundled_server, "har", batch[0, :50]):
            for _ in range(10):
                client.predict("har", batch)
        grown = _rss_mb(pid) - before
    print(f"RSS {before:.0f} MB -> +{grown:.0f} MB after 10 batches of 58x3000x6")
    assert grown < RSS_GROWTH_BOUND_MB, grown


# ---- 4: echoed input is truncated; long ids are refused by a documented limit -----


def test_long_model_name_is_invalid_and_not_echoed_whole(server: ServerHandle) -> None:
    with hostile(server), server.client() as client:
        error = predict_error(client, features_request([1, FEATURE_DIM], b"\0" * 24, name="m" * 100_000))
        assert_status(error, "INVALID_ARGUMENT", "model.name", "16384 bytes")
        assert len(error.details) < 512
        error = predict_error(client, features_request([1, FEATURE_DIM], b"\0" * 24, name="n" * 16_000))
        assert_status(error, "NOT_FOUND", "model.name", "(+")
        assert len(error.details) < 1024


def test_session_ids_up_to_16_kib_are_accepted_and_echoed_truncated(server: ServerHandle) -> None:
    with hostile(server), server.client() as client:
        x = np.zeros((2, FEATURE_DIM), np.float32)
        unknown = "u" * 10_000
        with pytest.raises(StatusError) as info:
            client.predict("lstm", x, session_id=unknown, must_exist=True)
        assert_status(info.value, "NOT_FOUND", "session_id", "(+")
        assert len(info.value.details) < 1024
        longest = "s" * 16_384
        assert client.predict("lstm", x, session_id=longest, end_session=True).session_id == longest
        with pytest.raises(StatusError) as info:
            client.predict("lstm", x, session_id="s" * 16_385)
        assert_status(info.value, "INVALID_ARGUMENT", "session_id", "16384 bytes")
        call = client.open_stream()
        call.config(model={"name": "lstm"}, session_id="t" * 20_000)
        call.close()
        with pytest.raises(StatusError) as info:
            list(call.responses())
        assert_status(info.value, "INVALID_ARGUMENT", "config.session_id")


# ---- 5: undecodable requests are INVALID_ARGUMENT, unary and mid-stream ----------

_VALID = pb.PredictRequest(
    model=pb.ModelRef(name="lstm"), features=pb.Tensor(shape=[1, FEATURE_DIM], data=b"\0" * 24)
).SerializeToString()

UNDECODABLE = {
    "garbage": b"\xff\xfe\xfd\xfc" * 8,
    "truncated": _VALID[: len(_VALID) - 5],
    "endless varint": b"\x08" + b"\xff" * 30,
    "length past the end": b"\x0a\x7f" + b"ab",
    "invalid UTF-8 in a string": b"\x0a\x04\x0a\x02\xff\xfe",
}


@pytest.mark.parametrize("name", list(UNDECODABLE))
def test_undecodable_unary_request_is_invalid_argument(server: ServerHandle, name: str) -> None:
    with hostile(server), grpc.insecure_channel(server.target) as channel:
        predict = channel.unary_unary("/lstmserve.v1.Inference/Predict")
        with pytest.raises(grpc.RpcError) as info:
            predict(UNDECODABLE[name], timeout=10)
    error = StatusError.from_rpc(info.value)
    assert_status(error, "INVALID_ARGUMENT", "request is not a valid lstmserve.v1.PredictRequest")


def test_undecodable_message_mid_stream_is_invalid_argument_and_keeps_state(server: ServerHandle) -> None:
    config = pb.StreamRequest(config=pb.StreamConfig(model=pb.ModelRef(name="lstm"), session_id="garbled"))
    chunk = pb.StreamRequest(
        chunk=pb.Chunk(sequence_number=0, features=pb.Tensor(shape=[12, FEATURE_DIM], data=REFERENCE.tobytes()))
    )
    with hostile(server), grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream("/lstmserve.v1.Inference/StreamPredict")
        messages = [config.SerializeToString(), chunk.SerializeToString(), UNDECODABLE["garbage"]]
        with pytest.raises(grpc.RpcError) as info:
            list(stream(iter(messages), timeout=10))
        assert_status(StatusError.from_rpc(info.value), "INVALID_ARGUMENT", "lstmserve.v1.StreamRequest")
    with server.client() as client:
        resumed = client.predict("lstm", REFERENCE, session_id="garbled", must_exist=True, end_session=True)
        assert resumed.frame_offset == 12


# ---- 7: non-finite float32 audio is refused; out-of-range amplitude is clipped ---


def _audio_stream(
    client: LstmClient, samples: list[np.ndarray], session_id: str, keep: bool = True
) -> Any:
    return client.stream(
        "audio", [s.astype("<f4").tobytes() for s in samples], audio=("float32", 16000),
        session_id=session_id, keep_session=keep, frame_outputs=True,
    )


def test_non_finite_float32_audio_is_refused_and_state_kept(server: ServerHandle) -> None:
    rng = np.random.default_rng(11)
    a, b = (0.1 * rng.standard_normal(3200).astype(np.float32) for _ in range(2))
    with hostile(server), server.client() as client:
        reference = _audio_stream(client, [a, b], "audio-ref", keep=False).outputs
        _audio_stream(client, [a], "audio-nan")
        for bad_value in (np.nan, np.inf):
            bad = b.copy()
            bad[100] = bad_value
            with pytest.raises(StatusError) as info:
                _audio_stream(client, [bad], "audio-nan")
            assert_status(info.value, "INVALID_ARGUMENT", "chunk.audio", "non-finite")
        resumed = _audio_stream(client, [b], "audio-nan", keep=False)
    assert resumed.resumed and resumed.frame_offset > 0
    np.testing.assert_allclose(resumed.outputs, reference[resumed.frame_offset :], atol=1e-6)


def test_out_of_range_float32_audio_is_clipped(server: ServerHandle) -> None:
    rng = np.random.default_rng(12)
    loud = 3.0 * rng.standard_normal(4800).astype(np.float32)
    with hostile(server), server.client() as client:
        got = _audio_stream(client, [loud], "", keep=False).outputs
        clipped = _audio_stream(client, [np.clip(loud, -1, 1)], "", keep=False).outputs
    assert np.isfinite(got).all()
    np.testing.assert_array_equal(got, clipped)


# ---- 2: an odd legal sample rate neither stalls others nor costs unbounded work --


def test_odd_sample_rate_does_not_stall_others(server: ServerHandle) -> None:
    rate = 191_999
    pcm = (0.1 * np.random.default_rng(13).standard_normal(rate // 2) * 32767).astype("<i2").tobytes()
    with hostile(server), server.client() as client:
        started = time.perf_counter()
        result = client.stream("audio", [pcm[: len(pcm) // 2], pcm[len(pcm) // 2 :]], audio=("pcm16", rate))
        assert time.perf_counter() - started < 5.0
    assert result.frames == 50  # 0.5 s at a 10 ms hop, flushed


# ---- 8: enum values outside the proto's range are refused ------------------------


def _config_error(client: LstmClient, config: pb.StreamConfig) -> StatusError:
    call = client.open_stream()
    call.send(pb.StreamRequest(config=config))
    call.close()
    with pytest.raises(StatusError) as info:
        list(call.responses())
    return info.value


def test_unknown_enum_values_are_invalid_argument(server: ServerHandle) -> None:
    with hostile(server), server.client() as client:
        kind = pb.StreamConfig(model=pb.ModelRef(name="lstm"), input_kind=99)  # type: ignore[arg-type]
        assert_status(_config_error(client, kind), "INVALID_ARGUMENT", "config.input_kind", "99")
        encoding = pb.StreamConfig(
            model=pb.ModelRef(name="audio"), input_kind=pb.INPUT_KIND_AUDIO,
            audio=pb.AudioFormat(encoding=7, sample_rate_hz=16000),  # type: ignore[arg-type]
        )
        assert_status(_config_error(client, encoding), "INVALID_ARGUMENT", "config.audio.encoding", "7")
        request = features_request([1, FEATURE_DIM], b"\0" * 24)
        request.features.dtype = 42  # type: ignore[assignment]
        assert_status(predict_error(client, request), "INVALID_ARGUMENT", "features.dtype", "42")
