"""The shared session store on a real redis-server: any replica continues any session
by id alone, leases keep one owner, and a store outage is UNAVAILABLE, not a wrong answer."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import redis

from lstm_client import StatusError
from lstm_client.launch import free_port
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, ServerHandle, start_server, wait_until

pytestmark = pytest.mark.skipif(
    subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0,
    reason="redis-server is not installed (.ci/run installs it)",
)


@contextmanager
def redis_server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway redis-server on a free loopback port, no persistence."""
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        probe = redis.Redis(port=port, socket_connect_timeout=0.2)
        if wait_until(lambda probe=probe: _pings(probe), timeout=5) and proc.poll() is None:
            try:
                yield proc, port
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            return
        proc.kill()
        proc.wait()
    raise RuntimeError("could not start redis-server")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="module")
def store() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    with redis_server() as running:
        yield running


def _env(port: int, **extra: str) -> dict[str, str]:
    return {"LSTM_SERVE_SESSIONS__STORE_URL": f"redis://127.0.0.1:{port}/0", **extra}


@pytest.fixture(scope="module")
def replicas(fixture_models: FixtureModels, store: tuple[object, int]) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    env = _env(store[1], LSTM_SERVE_SESSIONS__LEASE_S="1")
    with start_server(fixture_models.root, env=env) as a, start_server(fixture_models.root, env=env) as b:
        yield a, b


def _x(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEATURE_DIM)).astype(np.float32)


def test_predict_by_session_id_alternating_replicas_equals_one_call(
    replicas: tuple[ServerHandle, ServerHandle],
) -> None:
    x = _x(40, 1)
    with replicas[0].client() as ca, replicas[1].client() as cb:
        whole = ca.predict("lstm", x).outputs[0]
        rows = [c.predict("lstm", x[i * 10 : (i + 1) * 10], session_id="alt", frame_offset=i * 10).outputs[0]
                for i, c in enumerate([ca, cb, ca, cb])]
    np.testing.assert_allclose(np.concatenate(rows), whole, atol=1e-5)


def test_stream_paused_on_a_resumes_on_b_by_id_alone(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    rng = np.random.default_rng(2)
    pcm = (np.clip(0.3 * rng.standard_normal(16000), -1, 1) * 32767).astype("<i2").tobytes()
    pieces = [pcm[i : i + 1601] for i in range(0, len(pcm), 1601)]
    kw = {"audio": ("pcm16", 16000), "frame_outputs": True}
    with replicas[0].client() as ca, replicas[1].client() as cb:
        whole = ca.stream("audio", pieces, **kw)  # type: ignore[arg-type]
        first = ca.stream("audio", pieces[:6], session_id="redis-audio", keep_session=True, **kw)  # type: ignore[arg-type]
        second = cb.stream("audio", pieces[6:], session_id="redis-audio", must_exist=True, **kw)  # type: ignore[arg-type]
    assert second.resumed and second.frame_offset == first.frames
    np.testing.assert_array_equal(np.concatenate([first.outputs, second.outputs]), whole.outputs)


def test_a_held_session_is_refused_on_the_other_replica(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    with replicas[0].client() as ca, replicas[1].client() as cb:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id="held")
        assert call.recv().WhichOneof("message") == "started"
        with pytest.raises(StatusError) as info:
            cb.predict("lstm", _x(3, 3), session_id="held")
        call.cancel()
    assert info.value.code.name == "FAILED_PRECONDITION" and "held by" in info.value.details


def test_sigkill_frees_the_session_after_its_lease(
    fixture_models: FixtureModels, store: tuple[object, int], replicas: tuple[ServerHandle, ServerHandle]
) -> None:
    x = _x(40, 4)
    chunks = [x[i : i + 10] for i in range(0, 40, 10)]
    _, b = replicas
    with b.client() as cb:
        whole = cb.stream("lstm", chunks).outputs
    env = _env(store[1], LSTM_SERVE_SESSIONS__LEASE_S="1")
    with start_server(fixture_models.root, env=env) as a, a.client() as ca:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id="killed")
        call.recv()
        rows = []
        for seq in range(2):
            call.chunk(seq, chunks[seq])
            rows.append(np.frombuffer(call.recv().result.outputs.data, "<f4").reshape(10, -1))
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(timeout=10)
    with b.client() as cb:
        assert wait_until(lambda: _resumable(cb), timeout=5)
        rest = cb.stream("lstm", chunks[2:], session_id="killed", must_exist=True)
    assert rest.started.next_sequence_number == 2
    np.testing.assert_allclose(np.concatenate([*rows, rest.outputs]), whole, atol=1e-6)


def _resumable(client: object) -> bool:
    call = client.open_stream()  # type: ignore[attr-defined]
    call.config(model={"name": "lstm"}, session_id="killed", must_exist=True)
    call.close()
    try:
        list(call.responses())
    except StatusError as exc:
        return exc.code.name != "FAILED_PRECONDITION"
    return True


def test_store_outage_is_unavailable_and_recovers(fixture_models: FixtureModels) -> None:
    with redis_server() as (proc, port):
        env = _env(port, LSTM_SERVE_SESSIONS__STORE_OP_TIMEOUT_S="0.3")
        with start_server(fixture_models.root, env=env) as server, server.client() as client:
            x = _x(10, 5)
            client.predict("lstm", x, session_id="outage", frame_offset=0)
            proc.send_signal(signal.SIGSTOP)  # a store that hangs
            try:
                started = time.monotonic()
                with pytest.raises(StatusError) as info:
                    client.predict("lstm", x, session_id="outage", frame_offset=10)
                assert info.value.code.name == "UNAVAILABLE" and "session store unavailable" in info.value.details
                assert time.monotonic() - started < 5
                assert client.predict("lstm", x).outputs[0].shape == (10, 4)  # stateless work goes on
            finally:
                proc.send_signal(signal.SIGCONT)
            again = client.predict("lstm", x, session_id="outage", frame_offset=10)
            assert again.frame_offset == 10 and not again.replayed


def test_ttl_expiry_in_redis_is_not_found_expired(fixture_models: FixtureModels, store: tuple[object, int]) -> None:
    env = _env(store[1], LSTM_SERVE_SESSIONS__TTL_S="0.3")
    with start_server(fixture_models.root, env=env) as server, server.client() as client:
        client.predict("lstm", _x(3, 6), session_id="ttl")
        # polled slower than the TTL: a successful poll is a use, which refreshes it
        assert wait_until(lambda: _expired(client), timeout=5, interval=0.6)


def _expired(client: object) -> bool:
    try:
        client.predict("lstm", _x(3, 6), session_id="ttl", must_exist=True)  # type: ignore[attr-defined]
    except StatusError as exc:
        assert exc.code.name == "NOT_FOUND"
        return "expired" in exc.details
    return False


def test_a_paused_writer_past_its_lease_is_fenced(
    fixture_models: FixtureModels, store: tuple[object, int], replicas: tuple[ServerHandle, ServerHandle]
) -> None:
    x = _x(30, 7)
    chunks = [x[i : i + 10] for i in range(0, 30, 10)]
    _, b = replicas
    env = _env(store[1], LSTM_SERVE_SESSIONS__LEASE_S="1")
    with start_server(fixture_models.root, env=env) as a, a.client() as ca:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id="fenced")
        call.recv()
        call.chunk(0, chunks[0])
        call.recv()
        a.process.send_signal(signal.SIGSTOP)
        try:
            with b.client() as cb:
                assert wait_until(lambda: _takes_over(cb), timeout=5)
                moved_on = cb.stream("lstm", [chunks[1]], session_id="fenced", must_exist=True, keep_session=True)
            assert moved_on.frame_offset == 10
        finally:
            a.process.send_signal(signal.SIGCONT)
        call.chunk(1, chunks[2])  # the stale copy on A tries to advance from frame 10
        with pytest.raises(StatusError) as info:
            call.recv()
    assert info.value.code.name == "FAILED_PRECONDITION" and "changed meanwhile" in info.value.details
    with b.client() as cb:
        rest = cb.predict("lstm", chunks[2], session_id="fenced", frame_offset=20)
        whole = cb.predict("lstm", x).outputs[0]
    np.testing.assert_allclose(rest.outputs[0], whole[20:], atol=1e-5)


def _takes_over(client: object) -> bool:
    try:
        client.predict("lstm", _x(1, 8), session_id="fenced-probe")  # type: ignore[attr-defined]
        call = client.open_stream()  # type: ignore[attr-defined]
        call.config(model={"name": "lstm"}, session_id="fenced", must_exist=True)
        call.close()
        list(call.responses())
    except StatusError as exc:
        return exc.code.name != "FAILED_PRECONDITION"
    return True
