"""Numerical contract: streamed == whole Predict == PyTorch, for LSTM and GRU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from lstm_train.model import RecurrentNet
from tests.conftest import FixtureModels
from tests.harness import ATOL, ServerHandle, frames


def reference(net: RecurrentNet, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """PyTorch outputs and final states for one [T, F] sequence from the zero state."""
    with torch.no_grad():
        out, *states = net(torch.from_numpy(x[np.newaxis]), *net.zero_states(1))
    return out[0].numpy(), [s.numpy() for s in states]


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_stream_chunkings_equal_predict_and_torch(
    server: ServerHandle, fixture_models: FixtureModels, name: str
) -> None:
    x = frames(0, 120)
    want, _ = reference(fixture_models.nets[name], x)
    with server.client() as client:
        whole = client.predict(name, x).outputs[0]
        np.testing.assert_allclose(whole, want, atol=ATOL)
        for step in (1, 7, 50):
            chunks = [x[i : i + step] for i in range(0, len(x), step)]
            result = client.stream(name, chunks)
            np.testing.assert_allclose(result.outputs, want, atol=ATOL)
            assert [r.frame_offset for r in result.results] == list(range(0, len(x), step))
            assert result.final is not None and result.final.frames == len(x)


def test_variable_length_batch_equals_single(server: ServerHandle, fixture_models: FixtureModels) -> None:
    seqs = [frames(i, n) for i, n in enumerate((5, 17, 17, 40))]
    with server.client() as client:
        batch = client.predict("lstm", seqs).outputs
        for seq, out in zip(seqs, batch, strict=True):
            assert out.shape == (len(seq), 4)
            np.testing.assert_allclose(out, reference(fixture_models.nets["lstm"], seq)[0], atol=ATOL)
        stacked = client.predict("lstm", np.stack([seqs[1], seqs[2]])).outputs
        np.testing.assert_allclose(stacked[1], batch[2], atol=ATOL)


def test_bidirectional_sequence_head(server: ServerHandle, fixture_models: FixtureModels) -> None:
    seqs = [frames(10 + i, n) for i, n in enumerate((9, 30, 30))]
    with server.client() as client:
        outs = client.predict("bilstm", seqs).outputs
    for seq, out in zip(seqs, outs, strict=True):
        assert out.shape == (4,)
        np.testing.assert_allclose(out, reference(fixture_models.nets["bilstm"], seq)[0], atol=ATOL)


def test_session_predict_across_three_calls_equals_one(
    server: ServerHandle, fixture_models: FixtureModels
) -> None:
    x = frames(3, 90)
    want, want_states = reference(fixture_models.nets["lstm"], x)
    with server.client() as client:
        parts = [client.predict("lstm", part, session_id="three-calls", return_state=True) for part in
                 (x[:10], x[10:55], x[55:])]
        assert [p.frame_offset for p in parts] == [0, 10, 55]
        np.testing.assert_allclose(np.concatenate([p.outputs[0] for p in parts]), want, atol=ATOL)
        for name, state in zip(("h", "c"), want_states, strict=True):
            np.testing.assert_allclose(parts[-1].states[name], state, atol=ATOL)
        # The caller can also hold the state itself: initial_states continues it.
        first = client.predict("lstm", x[:30], return_state=True)
        rest = client.predict("lstm", x[30:], initial_states=first.states)
        np.testing.assert_allclose(rest.outputs[0], want[30:], atol=ATOL)
        client.predict("lstm", x[:1], session_id="three-calls", end_session=True)


def test_64_interleaved_streams_match_alone(server: ServerHandle) -> None:
    inputs = [frames(100 + i, 20 + (i % 5) * 7) for i in range(64)]
    with server.client() as client:
        alone = [client.predict("lstm" if i % 2 else "gru", x).outputs[0] for i, x in enumerate(inputs)]
        got: dict[int, np.ndarray] = {}
        errors: list[BaseException] = []
        barrier = threading.Barrier(64)

        def run(i: int) -> None:
            try:
                barrier.wait()
                step = 1 + i % 9
                chunks = [inputs[i][k : k + step] for k in range(0, len(inputs[i]), step)]
                got[i] = client.stream("lstm" if i % 2 else "gru", chunks).outputs
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors, errors[:3]
    for i in range(64):
        np.testing.assert_allclose(got[i], alone[i], atol=ATOL)
