"""Resume tokens: a session sealed on one server continues on another that shares the
key file, bit-for-bit; every bad token gets its precise status and the server keeps
serving. Two real server processes, no store shared between them."""

from __future__ import annotations

import hashlib
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lstm_client import LstmClient, StatusError
from lstm_serve import snapshot
from lstm_serve.manifest import load_manifest
from lstm_serve.tokens import TokenSealer, load_keys, write_key_file
from lstmserve.v1 import session_pb2 as spb
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, ServerHandle, metric_sum, scrape, start_server


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.json"
    write_key_file(path, "k1")
    return path


@pytest.fixture(scope="module")
def replicas(fixture_models: FixtureModels, key_file: Path) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(key_file)}
    with start_server(fixture_models.root, env=env) as a, start_server(fixture_models.root, env=env) as b:
        yield a, b


def _frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEATURE_DIM)).astype(np.float32)


def test_stream_paused_on_one_replica_resumes_on_the_other(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    a, b = replicas
    x = _frames(60)
    chunks = [x[i : i + 10] for i in range(0, 60, 10)]
    with a.client() as ca, b.client() as cb:
        whole = ca.stream("lstm", chunks).outputs
        first = ca.stream("lstm", chunks[:3], keep_session=True)
        token = first.resume_token
        assert token, "end.keep_session returns a token"
        second = cb.stream("lstm", chunks[3:], resume_token=token)
    assert second.resumed and second.frame_offset == 30 and second.session_id == first.session_id
    np.testing.assert_allclose(np.concatenate([first.outputs, second.outputs]), whole, atol=1e-6)
    assert metric_sum(scrape(a.metrics_url), "lstm_serve_resume_tokens_issued_total", model="lstm") >= 1
    resumed = metric_sum(scrape(b.metrics_url), "lstm_serve_session_resumes_total", source="token", outcome="ok")
    assert resumed >= 1


def test_periodic_tokens_let_a_stream_continue_from_the_last_one(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    a, b = replicas
    x = _frames(50, seed=1)
    chunks = [x[i : i + 5] for i in range(0, 50, 5)]
    with a.client() as ca, b.client() as cb:
        whole = ca.stream("lstm", chunks).outputs
        run = ca.stream("lstm", chunks[:7], token_every=3, keep_session=False)
        assert run.started.resume_token  # a resume point from the first chunk
        tokens = [r.resume_token for r in run.results]
        assert [bool(t) for t in tokens] == [False, False, True, False, False, True, False]
        # the client lost the stream after chunk 7: resume from the token at chunk 6
        resumed = cb.stream("lstm", chunks[6:], resume_token=tokens[5])
    assert resumed.frame_offset == 30
    np.testing.assert_allclose(resumed.outputs, whole[30:], atol=1e-6)


def test_audio_session_resumes_bit_for_bit_elsewhere(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    a, b = replicas
    rng = np.random.default_rng(4)
    pcm = (np.clip(0.3 * rng.standard_normal(24000), -1, 1) * 32767).astype("<i2").tobytes()
    pieces = [pcm[i : i + 3001] for i in range(0, len(pcm), 3001)]  # odd splits: a byte stays pending
    kw = {"audio": ("pcm16", 22050), "frame_outputs": True}
    with a.client() as ca, b.client() as cb:
        whole = ca.stream("audio", pieces, **kw)  # type: ignore[arg-type]
        first = ca.stream("audio", pieces[:7], keep_session=True, **kw)  # type: ignore[arg-type]
        second = cb.stream("audio", pieces[7:], resume_token=first.resume_token, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(np.concatenate([first.outputs, second.outputs]), whole.outputs)
    got = [(e.label, e.start_s, e.end_s) for e in [*first.events, *second.events]]
    assert got == [(e.label, e.start_s, e.end_s) for e in whole.events]


def test_predict_on_tokens_alternating_replicas_equals_one_call(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    x = _frames(40, seed=2)
    with replicas[0].client() as ca, replicas[1].client() as cb:
        whole = ca.predict("lstm", x).outputs[0]
        token, rows = b"", []
        for i, client in enumerate([ca, cb, ca, cb]):
            part = x[i * 10 : (i + 1) * 10]
            kw = {"resume_token": token} if token else {"session_id": "alternating"}
            result = client.predict("lstm", part, return_token=True, **kw)
            assert result.frame_offset == i * 10
            token = result.resume_token
            rows.append(result.outputs[0])
    np.testing.assert_allclose(np.concatenate(rows), whole, atol=1e-5)


def test_an_old_token_is_a_checkpoint_but_never_takes_a_held_session(
    replicas: tuple[ServerHandle, ServerHandle],
) -> None:
    a, _ = replicas
    x = _frames(30, seed=3)
    with a.client() as client:
        t0 = client.predict("lstm", x[:10], session_id="checkpoint", return_token=True).resume_token
        client.predict("lstm", x[10:20], session_id="checkpoint")
        again = client.predict("lstm", x[10:20], resume_token=t0)
        assert again.frame_offset == 10  # resumed from the checkpoint, not from frame 20
        call = client.open_stream()
        call.config(model={"name": "lstm"}, session_id="checkpoint")
        assert call.recv().WhichOneof("message") == "started"
        with pytest.raises(StatusError) as info:
            client.predict("lstm", x[:5], resume_token=t0)
        call.cancel()
    assert info.value.code.name == "FAILED_PRECONDITION" and "attached to another stream" in info.value.details


def test_an_older_token_takes_over_a_newer_detached_copy_on_another_replica(
    replicas: tuple[ServerHandle, ServerHandle],
) -> None:
    """Replica A keeps a detached copy at frame 50; the client resumes from its token of
    frame 20 on B, and later on A itself: each continues exactly from frame 20."""
    a, b = replicas
    x = _frames(60, seed=6)
    chunks = [x[i : i + 10] for i in range(0, 60, 10)]
    with a.client() as ca, b.client() as cb:
        whole = ca.stream("lstm", chunks).outputs
        run = ca.stream("lstm", chunks[:5], token_every=2, keep_session=True)
        at_20 = run.results[1].resume_token
        assert at_20 and run.results[-1].frame_offset == 40  # the copy left on A stands at frame 50
        on_b = cb.stream("lstm", chunks[2:4], resume_token=at_20, keep_session=True)
        on_a = ca.stream("lstm", chunks[2:], resume_token=at_20)
    assert on_b.frame_offset == 20 and on_a.frame_offset == 20 and on_a.session_id == run.session_id
    np.testing.assert_allclose(on_b.outputs, whole[20:40], atol=1e-6)
    np.testing.assert_allclose(on_a.outputs, whole[20:], atol=1e-6)


# ---- bad tokens ------------------------------------------------------------------


def _token(client: LstmClient) -> bytes:
    return client.predict("lstm", _frames(4), session_id=f"bad-{uuid.uuid4().hex}", return_token=True).resume_token


def _refusal(client: LstmClient, token: bytes, name: str = "lstm", **kw: object) -> StatusError:
    with pytest.raises(StatusError) as info:
        client.predict(name, _frames(3), resume_token=token, **kw)  # type: ignore[arg-type]
    return info.value


@pytest.mark.parametrize(
    ("case", "code", "fragment"),
    [
        ("tampered", "INVALID_ARGUMENT", "tampered"),
        ("truncated", "INVALID_ARGUMENT", "tampered"),
        ("garbage", "INVALID_ARGUMENT", "not a resume token"),
        ("oversize", "INVALID_ARGUMENT", "exceeds the limit"),
        ("other model", "FAILED_PRECONDITION", "not 'gru'"),
        ("conflicting session id", "INVALID_ARGUMENT", "conflicts with the token's session"),
    ],
)
def test_bad_tokens_are_refused_precisely(
    replicas: tuple[ServerHandle, ServerHandle], case: str, code: str, fragment: str
) -> None:
    a, _ = replicas
    with a.client() as client:
        token = _token(client)
        name, kw = "lstm", {}
        if case == "tampered":
            token = token[:-20] + bytes([token[-20] ^ 1]) + token[-19:]
        elif case == "truncated":
            token = token[: len(token) // 2]
        elif case == "garbage":
            token = b"\x7fnot a token at all"
        elif case == "oversize":
            token = token + b"\0" * 70_000
        elif case == "other model":
            name = "gru"
        elif case == "conflicting session id":
            kw = {"session_id": "someone-else"}
        error = _refusal(client, token, name, **kw)
        assert error.code.name == code, error
        assert "resume_token" in error.details or "session_id" in error.details
        assert fragment in error.details, error.details
        assert client.predict("lstm", _frames(3)).outputs[0].shape == (3, 4)  # still serving


def test_unknown_key_expired_and_tokens_off(fixture_models: FixtureModels, tmp_path: Path, key_file: Path) -> None:
    other_keys = tmp_path / "other.json"
    write_key_file(other_keys, "k2")
    expiring = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(key_file), "LSTM_SERVE_SESSIONS__TOKEN_TTL_S": "0.001"}
    with (
        start_server(fixture_models.root, env={"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(key_file)}) as a,
        start_server(fixture_models.root, env={"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(other_keys)}) as other,
        start_server(fixture_models.root, env=expiring) as short,
        start_server(fixture_models.root) as off,
        a.client() as ca, other.client() as co, short.client() as cs, off.client() as cf,
    ):
        token = _token(ca)
        unknown = _refusal(co, token)
        assert unknown.code.name == "INVALID_ARGUMENT" and "key id 'k1'" in unknown.details
        expired = _refusal(cs, _token(cs))
        assert expired.code.name == "INVALID_ARGUMENT" and "expired" in expired.details
        disabled = _refusal(cf, token)
        assert disabled.code.name == "FAILED_PRECONDITION" and "resume tokens are off" in disabled.details


def test_sealed_snapshots_that_do_not_fit_are_refused(
    replicas: tuple[ServerHandle, ServerHandle], key_file: Path, fixture_models: FixtureModels
) -> None:
    sealer = TokenSealer(load_keys(key_file), 65536)
    a, _ = replicas
    with a.client() as client:
        plaintext = sealer.open(_token(client), "resume_token")

        def edited(change: object) -> bytes:
            snap = spb.SessionSnapshot.FromString(plaintext)
            change(snap)  # type: ignore[operator]
            return sealer.seal(snap.SerializeToString())

        def wrong_shape(snap: spb.SessionSnapshot) -> None:
            snap.states[0].tensor.shape[:] = [2, 1, 23]

        def nan_state(snap: spb.SessionSnapshot) -> None:
            data = bytearray(snap.states[0].tensor.data)
            data[0:4] = np.array([np.nan], "<f4").tobytes()
            snap.states[0].tensor.data = bytes(data)

        def future_schema(snap: spb.SessionSnapshot) -> None:
            snap.schema_version = 99

        def other_weights(snap: spb.SessionSnapshot) -> None:
            snap.model_hash = "0" * 64

        cases = [
            (wrong_shape, "INVALID_ARGUMENT", "the model needs [2, 1, 24]"),
            (nan_state, "INVALID_ARGUMENT", "NaN or Inf"),
            (future_schema, "INVALID_ARGUMENT", "schema version 99"),
            (other_weights, "FAILED_PRECONDITION", "weights 000000000000"),
        ]
        for change, code, fragment in cases:
            error = _refusal(client, edited(change))
            assert error.code.name == code and fragment in error.details, error
        package = fixture_models.root / "lstm" / "1"
        weights = hashlib.sha256((package / "model.onnx").read_bytes()).hexdigest()
        state, _ = snapshot.decode(plaintext, load_manifest(package), weights, "resume_token")
        assert state.frame_offset == 4 and state.session_id.startswith("bad-")


def test_sigterm_hands_each_stream_a_token_and_it_moves_to_another_replica(
    fixture_models: FixtureModels, key_file: Path, replicas: tuple[ServerHandle, ServerHandle]
) -> None:
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(key_file), "LSTM_SERVE_SERVER__GRACE_PERIOD_S": "1"}
    x = _frames(50, seed=6)
    chunks = [x[i : i + 10] for i in range(0, 50, 10)]
    _, b = replicas
    with b.client() as cb:
        whole = cb.stream("lstm", chunks).outputs
    with start_server(fixture_models.root, env=env) as a, a.client() as ca:
        moving, staying = ca.open_stream(), ca.open_stream()
        rows = []
        for call in (moving, staying):
            call.config(model={"name": "lstm"})
            assert call.recv().WhichOneof("message") == "started"
        for seq in range(3):
            moving.chunk(seq, chunks[seq])
            rows.append(np.frombuffer(moving.recv().result.outputs.data, "<f4").reshape(10, -1))
        a.process.send_signal(signal.SIGTERM)
        warnings = [moving.recv(), staying.recv()]
        assert all(w.WhichOneof("message") == "draining" for w in warnings)
        draining = warnings[0].draining
        assert draining.resume_token and draining.last_sequence_number == 2 and 0 < draining.time_left_s <= 1
        assert warnings[1].draining.last_sequence_number == -1
        # the stream that stays past the grace gets a last token, then UNAVAILABLE
        last = staying.recv()
        assert last.draining.closing and last.draining.resume_token
        with pytest.raises(StatusError) as info:
            list(staying.responses())
        assert info.value.code.name == "UNAVAILABLE"
        moving.cancel()
    with b.client() as cb:
        moved = cb.stream("lstm", chunks[3:], resume_token=bytes(draining.resume_token))
    assert moved.started.next_sequence_number == 3 and moved.frame_offset == 30
    np.testing.assert_allclose(np.concatenate([*rows, moved.outputs]), whole, atol=1e-6)
