"""Session semantics: resume, duplicates, gaps, conflicts, TTL, cap, end, cancel."""

from __future__ import annotations

import numpy as np
import pytest

from lstm_client import StatusError
from tests.conftest import FixtureModels
from tests.harness import ATOL, ServerHandle, active_sessions, frames, metric_sum, scrape, start_server, wait_until


def test_resume_after_disconnect_continues_exactly(server: ServerHandle) -> None:
    x = frames(7, 60)
    with server.client() as client:
        want = client.predict("lstm", x).outputs[0]
        call = client.open_stream()
        call.config(model={"name": "lstm"}, session_id="resume-me")
        started = call.recv().started
        assert started.session_id == "resume-me" and not started.resumed
        for seq in range(3):
            call.chunk(seq, x[seq * 10 : (seq + 1) * 10])
            assert call.recv().result.sequence_number == seq
        call.close()  # half-close without end: the session is detached, not deleted
        assert list(call.responses()) == []
        assert wait_until(lambda: active_sessions(server) == 0)
        resumed = client.stream(
            "lstm", [x[30:45], x[45:]], session_id="resume-me", must_exist=True, first_sequence_number=3
        )
        assert resumed.started.resumed and resumed.started.next_sequence_number == 3
        assert resumed.started.frame_offset == 30
        np.testing.assert_allclose(resumed.outputs, want[30:], atol=ATOL)
        with pytest.raises(StatusError) as info:
            client.stream("lstm", [x[:1]], session_id="resume-me", must_exist=True)
        assert info.value.code.name == "NOT_FOUND"  # end deleted it


def test_duplicate_is_ignored_and_gap_refused_without_touching_state(server: ServerHandle) -> None:
    x = frames(8, 30)
    with server.client() as client:
        want = client.predict("gru", x).outputs[0]
        call = client.open_stream()
        call.config(model={"name": "gru"}, session_id="dup-gap")
        call.recv()
        call.chunk(0, x[:10])
        first = call.recv().result
        call.chunk(0, x[:10])
        dup = call.recv().result
        assert dup.duplicate and dup.frames == 0 and not dup.HasField("outputs")
        call.chunk(2, x[10:20])
        with pytest.raises(StatusError) as info:
            call.recv()
        assert info.value.code.name == "FAILED_PRECONDITION"
        assert "expected 1, got 2" in info.value.details
        rest = client.stream("gru", [x[10:20], x[20:]], session_id="dup-gap", must_exist=True, first_sequence_number=1)
        np.testing.assert_allclose(
            np.concatenate([np.frombuffer(first.outputs.data, "<f4").reshape(10, 4), rest.outputs]), want, atol=ATOL
        )


def test_concurrent_attach_is_refused(server: ServerHandle) -> None:
    with server.client() as client:
        call = client.open_stream()
        call.config(model={"name": "lstm"}, session_id="busy")
        call.recv()
        with pytest.raises(StatusError) as info:
            client.stream("lstm", [frames(1, 3)], session_id="busy")
        assert info.value.code.name == "FAILED_PRECONDITION"
        assert "attached to another stream" in info.value.details
        with pytest.raises(StatusError) as info:
            client.predict("lstm", frames(1, 3), session_id="busy")
        assert info.value.code.name == "FAILED_PRECONDITION"
        call.end()
        call.close()
        assert [r.WhichOneof("message") for r in call.responses()] == ["final"]


def test_session_bound_to_its_model(server: ServerHandle) -> None:
    with server.client() as client:
        client.predict("lstm", frames(1, 3), session_id="bound")
        with pytest.raises(StatusError) as info:
            client.predict("gru", frames(1, 3), session_id="bound")
        assert info.value.code.name == "FAILED_PRECONDITION" and "bound to model 'lstm'" in info.value.details
        client.predict("lstm", frames(1, 3), session_id="bound", end_session=True)


def test_cancel_mid_stream_keeps_state_and_releases_session(server: ServerHandle) -> None:
    x = frames(9, 20)
    with server.client() as client:
        baseline = active_sessions(server)
        call = client.open_stream()
        call.config(model={"name": "lstm"}, session_id="cancelled")
        call.recv()
        call.chunk(0, x[:10])
        call.recv()
        assert active_sessions(server) == baseline + 1
        call.cancel()
        assert wait_until(lambda: active_sessions(server) == baseline)
        rest = client.stream("lstm", [x[10:]], session_id="cancelled", must_exist=True, first_sequence_number=1)
        np.testing.assert_allclose(rest.outputs, client.predict("lstm", x).outputs[0][10:], atol=ATOL)


def test_ttl_expiry_and_session_cap(fixture_models: FixtureModels) -> None:
    env = {
        "LSTM_SERVE_SESSIONS__TTL_S": "3",
        "LSTM_SERVE_SESSIONS__REAP_INTERVAL_S": "0.1",
        "LSTM_SERVE_SESSIONS__MAX_SESSIONS": "2",
    }
    with start_server(fixture_models.root, env=env) as handle, handle.client() as client:
        client.predict("lstm", frames(1, 5), session_id="a")
        client.predict("lstm", frames(1, 5), session_id="b")
        with pytest.raises(StatusError) as info:
            client.predict("lstm", frames(1, 5), session_id="c")
        assert info.value.code.name == "RESOURCE_EXHAUSTED" and "MAX_SESSIONS" in info.value.details
        with pytest.raises(StatusError) as info:
            client.stream("lstm", [frames(1, 5)])
        assert info.value.code.name == "RESOURCE_EXHAUSTED"
        assert wait_until(
            lambda: metric_sum(scrape(handle.metrics_url), "lstm_serve_sessions_ended_total", reason="expired") == 2
        )
        with pytest.raises(StatusError) as info:
            client.predict("lstm", frames(1, 5), session_id="a", must_exist=True)
        assert info.value.code.name == "NOT_FOUND" and "expired" in info.value.details
        client.predict("lstm", frames(1, 5), session_id="c")  # room again after expiry


def test_idle_stream_is_closed_with_its_state_kept(fixture_models: FixtureModels) -> None:
    env = {"LSTM_SERVE_SESSIONS__STREAM_IDLE_TIMEOUT_S": "0.5"}
    x = frames(11, 20)
    with start_server(fixture_models.root, env=env) as handle, handle.client() as client:
        call = client.open_stream()
        call.config(model={"name": "lstm"}, session_id="idle")
        call.recv()
        call.chunk(0, x[:10])
        call.recv()
        with pytest.raises(StatusError) as info:
            call.recv()  # nothing more is sent: the server closes the idle stream
        assert info.value.code.name == "DEADLINE_EXCEEDED" and "STREAM_IDLE_TIMEOUT_S" in info.value.details
        rest = client.stream("lstm", [x[10:]], session_id="idle", must_exist=True, first_sequence_number=1)
        np.testing.assert_allclose(rest.outputs, client.predict("lstm", x).outputs[0][10:], atol=ATOL)
