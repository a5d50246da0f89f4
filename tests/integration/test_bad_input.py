"""Every invalid request gets its precise status, a message naming the field, and the
server keeps serving with the active-sessions gauge back at its baseline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from lstm_client import LstmClient, StatusError
from lstmserve.v1 import inference_pb2 as pb
from tests.harness import FEATURE_DIM, ServerHandle, active_sessions, frames, wait_until


def _stream_error(client: LstmClient, send: Callable[[object], None], timeout: float | None = None) -> StatusError:
    call = client.open_stream(timeout=timeout)
    send(call)
    call.close()
    with pytest.raises(StatusError) as info:
        list(call.responses())
    return info.value


def _raw_predict(client: LstmClient, tensor: pb.Tensor, name: str = "lstm") -> StatusError:
    request = pb.PredictRequest(model=pb.ModelRef(name=name), features=tensor)
    with pytest.raises(StatusError) as info:
        client._call(client.stub.Predict, request)
    return info.value


def _configured(session_id: str = "", name: str = "lstm") -> Callable[[object], None]:
    def send(call: object) -> None:
        call.config(model={"name": name}, session_id=session_id)  # type: ignore[attr-defined]

    return send


CASES: dict[str, tuple[str, str, Callable[[LstmClient], StatusError]]] = {}


def case(name: str, code: str, fragment: str) -> Callable[[Callable[[LstmClient], StatusError]], None]:
    """Register a bad-input case: its expected status and a message fragment."""

    def register(fn: Callable[[LstmClient], StatusError]) -> None:
        CASES[name] = (code, fragment, fn)

    return register


@case("wrong feature dimension (Predict)", "INVALID_ARGUMENT", "expects feature_dim 6, got 5")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.predict("lstm", np.zeros((4, FEATURE_DIM - 1), np.float32))
    return info.value


@case("wrong feature dimension (stream)", "INVALID_ARGUMENT", "chunk.features")
def _(c: LstmClient) -> StatusError:
    def send(call: object) -> None:
        _configured()(call)
        call.chunk(0, np.zeros((4, FEATURE_DIM + 2), np.float32))  # type: ignore[attr-defined]

    return _stream_error(c, send)


@case("byte length not a multiple of 4*F", "INVALID_ARGUMENT", "needs 96 bytes of float32, got 95")
def _(c: LstmClient) -> StatusError:
    return _raw_predict(c, pb.Tensor(shape=[4, FEATURE_DIM], data=b"\0" * 95))


@case("empty chunk", "INVALID_ARGUMENT", "empty")
def _(c: LstmClient) -> StatusError:
    def send(call: object) -> None:
        _configured()(call)
        call.chunk(0, np.zeros((0, FEATURE_DIM), np.float32))  # type: ignore[attr-defined]

    return _stream_error(c, send)


@case("NaN values", "INVALID_ARGUMENT", "NaN or Inf")
def _(c: LstmClient) -> StatusError:
    x = frames(0, 5)
    x[3, 2] = np.nan
    with pytest.raises(StatusError) as info:
        c.predict("lstm", x)
    assert "frame 3, feature 2" in info.value.details
    return info.value


@case("Inf values in a stream", "INVALID_ARGUMENT", "NaN or Inf")
def _(c: LstmClient) -> StatusError:
    x = frames(0, 5)
    x[0, 0] = np.inf

    def send(call: object) -> None:
        _configured()(call)
        call.chunk(0, x)  # type: ignore[attr-defined]

    return _stream_error(c, send)


@case("oversize message", "RESOURCE_EXHAUSTED", "")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.predict("lstm", np.zeros((200_000, FEATURE_DIM), np.float32))
    return info.value


@case("too many frames in one chunk", "RESOURCE_EXHAUSTED", "MAX_CHUNK_FRAMES")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.predict("lstm", np.zeros((3001, FEATURE_DIM), np.float32))
    return info.value


@case("unknown model", "NOT_FOUND", "no model 'nope'")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.predict("nope", frames(0, 3))
    return info.value


@case("unknown version", "NOT_FOUND", "has no version '9'")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.metadata("lstm", "9")
    return info.value


@case("broken package", "FAILED_PRECONDITION", "not ready")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.predict("broken", frames(0, 3))
    return info.value


@case("unknown session", "NOT_FOUND", "session 'ghost' is unknown")
def _(c: LstmClient) -> StatusError:
    def send(call: object) -> None:
        call.config(model={"name": "lstm"}, session_id="ghost", must_exist=True)  # type: ignore[attr-defined]

    return _stream_error(c, send)


@case("streaming a bidirectional model", "FAILED_PRECONDITION", "not causal")
def _(c: LstmClient) -> StatusError:
    return _stream_error(c, _configured(name="bilstm"))


@case("chunk before config", "INVALID_ARGUMENT", "first stream message must be config")
def _(c: LstmClient) -> StatusError:
    return _stream_error(c, lambda call: call.chunk(0, frames(0, 2)))  # type: ignore[attr-defined]


@case("second config", "INVALID_ARGUMENT", "config: sent twice")
def _(c: LstmClient) -> StatusError:
    def send(call: object) -> None:
        _configured()(call)
        _configured()(call)

    return _stream_error(c, send)


@case("chunk after end", "INVALID_ARGUMENT", "after end")
def _(c: LstmClient) -> StatusError:
    def send(call: object) -> None:
        _configured()(call)
        call.end()  # type: ignore[attr-defined]
        call.chunk(0, frames(0, 2))  # type: ignore[attr-defined]

    return _stream_error(c, send)


@case("out-of-order sequence number", "FAILED_PRECONDITION", "expected 0, got 5")
def _(c: LstmClient) -> StatusError:
    def send(call: object) -> None:
        _configured()(call)
        call.chunk(5, frames(0, 2))  # type: ignore[attr-defined]

    return _stream_error(c, send)


@case("shape whose element count overflows", "INVALID_ARGUMENT", "bytes of float32, got 0 bytes")
def _(c: LstmClient) -> StatusError:
    return _raw_predict(c, pb.Tensor(shape=[2**62, 4], data=b""))


@case("batch with session_id", "INVALID_ARGUMENT", "session_id")
def _(c: LstmClient) -> StatusError:
    with pytest.raises(StatusError) as info:
        c.predict("lstm", [frames(0, 3), frames(1, 3)], session_id="x")
    return info.value


@case("exceeded client deadline", "DEADLINE_EXCEEDED", "")
def _(c: LstmClient) -> StatusError:
    call = c.open_stream(timeout=3)
    _configured()(call)
    call.recv()
    with pytest.raises(StatusError) as info:  # nothing more is sent: the deadline passes
        call.recv()
    return info.value


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(server: ServerHandle, name: str) -> None:
    code, fragment, provoke = CASES[name]
    with server.client() as client:
        baseline = active_sessions(server)
        error = provoke(client)
        assert error.code.name == code, error
        assert fragment in error.details, error.details
        assert client.predict("lstm", frames(1, 4)).outputs[0].shape == (4, 4)
        assert wait_until(lambda: active_sessions(server) == baseline), "active sessions leaked"
