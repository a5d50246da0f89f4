"""In-process tier: the lstmserve.v1 converter and the status mapping, called directly."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from lstm_serve import errors
from lstm_serve.domain import ChunkResult, ModelRef, PredictOutput
from lstm_serve.session_store import StaleState
from lstm_serve.transport.lstmserve_v1 import convert
from lstm_serve.transport.status import INTERNAL_MESSAGE, status_for
from lstmserve.v1 import inference_pb2 as pb


def _request(shape: list[int], data: bytes = b"", **kw: object) -> pb.PredictRequest:
    return pb.PredictRequest(model=pb.ModelRef(name="m"), features=pb.Tensor(shape=shape, data=data), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [([2**40, 0, 6], "zero-size"), ([1] * 100, "rank 100"), ([3, -1, 6], "negative"), ([2, 6], "needs 48 bytes")],
)
def test_bad_shapes_are_refused_before_any_work(shape: list[int], fragment: str) -> None:
    with pytest.raises(errors.InvalidInput, match=fragment):
        convert.predict_input(_request(shape))


def test_a_batch_becomes_one_array_with_lengths() -> None:
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    got = convert.predict_input(_request([2, 3, 2], x.tobytes(), lengths=[3, 1]))
    assert got.batched and got.batch == 2
    np.testing.assert_array_equal(got.features, x)
    assert got.lengths.tolist() == [3, 1]
    single = convert.predict_input(_request([3, 2], x[0].tobytes()))
    assert not single.batched and single.features.shape == (1, 3, 2) and single.lengths.tolist() == [3]
    with pytest.raises(errors.InvalidInput, match=r"lengths\[1\]: 4 exceeds max_frames 3"):
        convert.predict_input(_request([2, 3, 2], x.tobytes(), lengths=[3, 4]))


def test_unknown_enums_and_long_ids_are_invalid() -> None:
    config = pb.StreamRequest(config=pb.StreamConfig(model=pb.ModelRef(name="m"), input_kind=99))  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidInput, match=r"config\.input_kind: unknown value 99"):
        convert.stream_message(config)
    with pytest.raises(errors.InvalidInput, match="session_id: 16385 bytes"):
        convert.predict_input(_request([1, 1], b"\0" * 4, session_id="s" * 16385))
    with pytest.raises(errors.InvalidInput, match=r"model\.name: 20000 bytes") as info:
        convert.model_ref(pb.ModelRef(name="n" * 20000))
    assert len(str(info.value)) < 200


def test_responses_mirror_the_batch_axis() -> None:
    outputs = np.ones((1, 4, 3), np.float32)
    one = convert.predict_response(PredictOutput(ModelRef("m", "1"), "per_frame", outputs, [4], batched=False))
    assert list(one.outputs.shape) == [4, 3] and list(one.lengths) == [4]
    many = convert.predict_response(PredictOutput(ModelRef("m", "1"), "per_frame", outputs, [4], batched=True))
    assert list(many.outputs.shape) == [1, 4, 3]
    result = convert.stream_response(ChunkResult(5, 40, 4, outputs[0]))
    assert result.result.sequence_number == 5 and result.result.frame_offset == 40


def test_status_mapping_is_pure_and_hides_internals() -> None:
    assert status_for(errors.SessionNotFound("x")) == (grpc.StatusCode.NOT_FOUND, "x")
    assert status_for(errors.Overloaded("y"))[0] is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_for(StaleState("z"))[0] is grpc.StatusCode.FAILED_PRECONDITION
    assert status_for(KeyError("secret")) == (grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)
