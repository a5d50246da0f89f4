"""Stateful Predict that states its frame offset: safe to retry, never silently
restarted, and portable across worker processes with resume tokens."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from lstm_client import LstmClient, StatusError
from lstm_serve.tokens import write_key_file
from tests.conftest import FixtureModels
from tests.harness import ATOL, ServerHandle, frames, start_server


def _sid() -> str:
    return f"offsets-{uuid.uuid4().hex}"


def test_a_retried_call_is_replayed_not_applied_twice(server: ServerHandle) -> None:
    x = frames(1, 30)
    sid = _sid()
    with server.client() as client:
        whole = client.predict("lstm", x).outputs[0]
        first = client.predict("lstm", x[:10], session_id=sid, frame_offset=0)
        retry = client.predict("lstm", x[:10], session_id=sid, frame_offset=0)
        assert not first.replayed and retry.replayed
        np.testing.assert_array_equal(retry.outputs[0], first.outputs[0])
        second = client.predict("lstm", x[10:20], session_id=sid, frame_offset=10)
        again = client.predict("lstm", x[10:20], session_id=sid, frame_offset=10)
        assert again.replayed and again.frame_offset == 10
        third = client.predict("lstm", x[20:], session_id=sid, frame_offset=20, end_session=True)
        # the retry of a call that ended the session is still a replay
        assert client.predict("lstm", x[20:], session_id=sid, frame_offset=20).replayed
    got = np.concatenate([first.outputs[0], second.outputs[0], third.outputs[0]])
    np.testing.assert_allclose(got, whole, atol=ATOL)


def test_a_wrong_offset_names_both_and_changes_nothing(server: ServerHandle) -> None:
    x = frames(2, 20)
    sid = _sid()
    with server.client() as client:
        client.predict("lstm", x[:10], session_id=sid, frame_offset=0)
        with pytest.raises(StatusError) as info:
            client.predict("lstm", x[10:], session_id=sid, frame_offset=7)
        assert info.value.code.name == "FAILED_PRECONDITION"
        assert "frame 7" in info.value.details and "frame 10" in info.value.details
        assert client.predict("lstm", x[10:], session_id=sid, frame_offset=10).frame_offset == 10


def test_continuing_an_unknown_session_is_not_found_never_a_restart(server: ServerHandle) -> None:
    with server.client() as client, pytest.raises(StatusError) as info:
        client.predict("lstm", frames(3, 5), session_id=_sid(), frame_offset=40)
    assert info.value.code.name == "NOT_FOUND"
    assert "resume_token" in info.value.details and "nothing was started" in info.value.details


def test_two_workers_tokens_continue_anywhere_and_ids_alone_never_go_silently_wrong(
    fixture_models: FixtureModels, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    write_key_file(keys)
    x = frames(4, 60)
    env = {"LSTM_SERVE_SESSIONS__TOKEN_KEYS_FILE": str(keys)}
    with start_server(fixture_models.root, env=env, args=["--workers", "2"]) as handle:
        with handle.client() as client:
            whole = client.predict("lstm", x).outputs[0]
        rows, token = [], b""
        for i in range(6):  # every call on a new connection, as separate services call it
            with LstmClient(handle.target) as own:
                kw = {"resume_token": token} if token else {"session_id": _sid()}
                result = own.predict("lstm", x[i * 10 : (i + 1) * 10], frame_offset=i * 10, return_token=True, **kw)
            rows.append(result.outputs[0])
            token = result.resume_token
        np.testing.assert_allclose(np.concatenate(rows), whole, atol=1e-5)

        outcomes = []
        sid = _sid()
        for i in range(8):
            with LstmClient(handle.target) as own:
                try:
                    out = own.predict("lstm", x[i * 5 : (i + 1) * 5], session_id=sid, frame_offset=i * 5)
                except StatusError as exc:
                    assert exc.code.name in ("NOT_FOUND", "FAILED_PRECONDITION"), exc
                    outcomes.append(exc.code.name)
                    break
                np.testing.assert_allclose(out.outputs[0], whole[i * 5 : (i + 1) * 5], atol=1e-5)
                outcomes.append("OK")
        assert outcomes[0] == "OK"  # the first call creates the session; later ones are right or refused
