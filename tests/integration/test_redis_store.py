"""The shared session store on a real redis-server: any replica continues any session
by id alone, leases keep one owner, and a store outage is UNAVAILABLE, not a wrong answer."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lstm_client import StatusError
from tests.conftest import FixtureModels
from tests.harness import (
    FEATURE_DIM,
    ServerHandle,
    metric_sum,
    redis_server,
    requires_redis,
    scrape,
    start_redis,
    start_server,
    wait_until,
)

pytestmark = requires_redis


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
    # 6 chunks, fewer than the write-back interval (10): kept in memory, written back on detach
    assert metric_sum(scrape(replicas[0].metrics_url), "lstm_serve_store_write_backs_total", reason="detach") >= 1


def test_a_held_session_is_refused_on_the_other_replica(replicas: tuple[ServerHandle, ServerHandle]) -> None:
    with replicas[0].client() as ca, replicas[1].client() as cb:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id="held")
        assert call.recv().WhichOneof("message") == "started"
        with pytest.raises(StatusError) as info:
            cb.predict("lstm", _x(3, 3), session_id="held")
        call.cancel()
    assert info.value.code.name == "FAILED_PRECONDITION" and "held by" in info.value.details


def test_sigkill_loses_at_most_write_back_chunks_and_a_resend_continues_on_b(
    fixture_models: FixtureModels, store: tuple[object, int], replicas: tuple[ServerHandle, ServerHandle]
) -> None:
    """A stream on A writes back every 4 chunks; A dies after 6 chunks. B takes the
    session after its lease, at the written-back chunk (4), and the client's resend
    from there gives what an uninterrupted run gives."""
    every, sent = 4, 6
    x = _x(40, 4)
    chunks = [x[i : i + 5] for i in range(0, 40, 5)]
    _, b = replicas
    with b.client() as cb:
        whole = cb.stream("lstm", chunks).outputs
    env = _env(store[1], LSTM_SERVE_SESSIONS__LEASE_S="1", LSTM_SERVE_SESSIONS__WRITE_BACK_CHUNKS=str(every))
    with start_server(fixture_models.root, env=env) as a, a.client() as ca:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id="killed")
        call.recv()
        rows = []
        for seq in range(sent):
            call.chunk(seq, chunks[seq])
            rows.append(np.frombuffer(call.recv().result.outputs.data, "<f4").reshape(5, -1))
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(timeout=10)
    with b.client() as cb:
        assert wait_until(lambda: _resumable(cb), timeout=5)
        resume_at = cb.stream("lstm", [], session_id="killed", must_exist=True, keep_session=True)
        written = resume_at.started.next_sequence_number
        rest = cb.stream("lstm", chunks[written:], session_id="killed", must_exist=True)
    assert written == every and sent - written <= every
    assert rest.started.frame_offset == 5 * written
    np.testing.assert_allclose(np.concatenate([*rows[:written], rest.outputs]), whole, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(rows[written:]), rest.outputs[: 5 * (sent - written)], atol=1e-5)


def _resumable(client: object) -> bool:
    call = client.open_stream()  # type: ignore[attr-defined]
    call.config(model={"name": "lstm"}, session_id="killed", must_exist=True)
    call.close()
    try:
        list(call.responses())
    except StatusError as exc:
        return exc.code.name != "FAILED_PRECONDITION"
    return True


BUDGETS = {
    "LSTM_SERVE_SESSIONS__STORE_OP_TIMEOUT_S": "0.3",
    "LSTM_SERVE_SESSIONS__STORE_CALL_BUDGET_S": "1",
    "LSTM_SERVE_SESSIONS__STORE_BACKOFF_MAX_S": "0.5",
}
"""Short failure budgets, so an outage test takes seconds."""


def _continues(client: object, x: np.ndarray, session_id: str, offset: int) -> object:
    """The Predict at ``offset`` once the store answers again (UNAVAILABLE until then)."""
    got: list[object] = []

    def attempt() -> bool:
        try:
            got.append(client.predict("lstm", x, session_id=session_id, frame_offset=offset))  # type: ignore[attr-defined]
        except StatusError as exc:
            assert exc.code.name == "UNAVAILABLE", exc
            return False
        return True

    assert wait_until(attempt, timeout=10, interval=0.1)
    return got[0]


def _unavailable_in_budget(client: object, x: np.ndarray, session_id: str, offset: int) -> StatusError:
    started = time.monotonic()
    with pytest.raises(StatusError) as info:
        client.predict("lstm", x, session_id=session_id, frame_offset=offset)  # type: ignore[attr-defined]
    elapsed = time.monotonic() - started
    assert info.value.code.name == "UNAVAILABLE" and "session store unavailable" in info.value.details
    assert elapsed < 1.0 + 0.5, f"UNAVAILABLE after {elapsed:.2f} s, budget 1 s"
    assert 1 <= int(info.value.trailers["grpc-retry-pushback-ms"]) <= 500
    return info.value


def test_store_outage_is_unavailable_and_recovers(fixture_models: FixtureModels) -> None:
    """A store that hangs (SIGSTOP): UNAVAILABLE within the call budget, with a retry
    hint; stateless work goes on; the session continues once the store answers."""
    with redis_server() as (proc, port), start_server(
        fixture_models.root, env=_env(port, **BUDGETS)
    ) as server, server.client() as client:
        x = _x(10, 5)
        client.predict("lstm", x, session_id="outage", frame_offset=0)
        proc.send_signal(signal.SIGSTOP)
        try:
            _unavailable_in_budget(client, x, "outage", 10)
            assert client.predict("lstm", x).outputs[0].shape == (10, 4)  # stateless work goes on
        finally:
            proc.send_signal(signal.SIGCONT)
        again = _continues(client, x, "outage", 10)
        assert again.frame_offset == 10 and not again.replayed  # type: ignore[attr-defined]


def test_store_stopped_and_restarted(fixture_models: FixtureModels, tmp_path: Path) -> None:
    """Redis stopped (connections refused): store calls get UNAVAILABLE within the
    budget, fast while it stays down, stateless Predict is fine and health stays
    SERVING; restarted on the same port (its append-only file kept), the service
    reconnects and the session continues exactly."""
    x = _x(30, 9)
    with redis_server(tmp_path) as (proc, port), start_server(
        fixture_models.root, env=_env(port, **BUDGETS)
    ) as server, server.client() as client:
        whole = client.predict("lstm", x).outputs[0]
        first = client.predict("lstm", x[:10], session_id="restarted", frame_offset=0).outputs[0]
        proc.terminate()
        proc.wait(timeout=10)
        restarted = None
        try:
            _unavailable_in_budget(client, x[10:20], "restarted", 10)
            started = time.monotonic()
            for _ in range(3):  # while down, calls fail at once instead of each waiting a budget
                with pytest.raises(StatusError):
                    client.predict("lstm", x[10:20], session_id="restarted", frame_offset=10)
            assert time.monotonic() - started < 3 * 1.5
            assert client.predict("lstm", x).outputs[0].shape == (30, 4)
            assert client.health() == "SERVING"
            restarted = start_redis(port, tmp_path)
            assert restarted is not None
            second = _continues(client, x[10:20], "restarted", 10)
            third = client.predict("lstm", x[20:], session_id="restarted", frame_offset=20)
        finally:
            if restarted is not None:
                restarted.terminate()
                restarted.wait(timeout=10)
    rows = np.concatenate([first, second.outputs[0], third.outputs[0]])  # type: ignore[attr-defined]
    np.testing.assert_allclose(rows, whole, atol=1e-5)


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


@pytest.mark.parametrize("every", [1, 3])
def test_a_paused_writer_past_its_lease_is_fenced(
    fixture_models: FixtureModels, store: tuple[object, int], replicas: tuple[ServerHandle, ServerHandle],
    every: int,
) -> None:
    """Writing through (1), the stale write is refused by compare-and-set; writing back
    every 3 chunks, the stale step (which writes nothing) is refused by the lease check."""
    x = _x(30, 7)
    chunks = [x[i : i + 10] for i in range(0, 30, 10)]
    _, b = replicas
    env = _env(store[1], LSTM_SERVE_SESSIONS__LEASE_S="1", LSTM_SERVE_SESSIONS__WRITE_BACK_CHUNKS=str(every))
    with start_server(fixture_models.root, env=env) as a, a.client() as ca:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id=f"fenced-{every}")
        call.recv()
        call.chunk(0, chunks[0])
        call.recv()
        written = 1 if every == 1 else 0
        a.process.send_signal(signal.SIGSTOP)
        try:
            with b.client() as cb:
                assert wait_until(lambda: _takes_over(cb, f"fenced-{every}"), timeout=5)
                moved_on = cb.stream(
                    "lstm", [chunks[written]], session_id=f"fenced-{every}", must_exist=True, keep_session=True
                )
            assert moved_on.frame_offset == 10 * written
        finally:
            a.process.send_signal(signal.SIGCONT)
        call.chunk(1, chunks[2])  # the stale copy on A tries to advance from frame 10
        with pytest.raises(StatusError) as info:
            call.recv()
    assert info.value.code.name == "FAILED_PRECONDITION" and "changed meanwhile" in info.value.details
    with b.client() as cb:
        rest = cb.predict("lstm", chunks[written + 1], session_id=f"fenced-{every}", frame_offset=10 * (written + 1))
        whole = cb.predict("lstm", x).outputs[0]
    np.testing.assert_allclose(rest.outputs[0], whole[10 * (written + 1) : 10 * (written + 2)], atol=1e-5)


def _takes_over(client: object, session_id: str) -> bool:
    try:
        client.predict("lstm", _x(1, 8), session_id="fenced-probe")  # type: ignore[attr-defined]
        call = client.open_stream()  # type: ignore[attr-defined]
        call.config(model={"name": "lstm"}, session_id=session_id, must_exist=True)
        call.close()
        list(call.responses())
    except StatusError as exc:
        return exc.code.name != "FAILED_PRECONDITION"
    return True


def test_session_cap_counts_every_replica(fixture_models: FixtureModels) -> None:
    """MAX_SESSIONS bounds the sessions in Redis, whichever replica made them; an ended
    session frees its place; stateless work is not counted."""
    with redis_server() as (_, port):
        env = _env(port, LSTM_SERVE_SESSIONS__MAX_SESSIONS="3")
        with start_server(fixture_models.root, env=env) as a, start_server(
            fixture_models.root, env=env
        ) as b, a.client() as ca, b.client() as cb:
            x = _x(3, 10)
            ca.predict("lstm", x, session_id="cap-1")
            cb.predict("lstm", x, session_id="cap-2")
            ca.stream("lstm", [x], session_id="cap-3", keep_session=True)
            for client in (ca, cb):
                with pytest.raises(StatusError) as info:
                    client.predict("lstm", x, session_id="cap-4")
                assert info.value.code.name == "RESOURCE_EXHAUSTED"
                assert "LSTM_SERVE_SESSIONS__MAX_SESSIONS" in info.value.details
            ca.predict("lstm", x)  # stateless: no session, no cap
            cb.predict("lstm", x, session_id="cap-1", frame_offset=3)  # existing sessions go on
            cb.predict("lstm", x, session_id="cap-2", end_session=True)
            assert cb.predict("lstm", x, session_id="cap-4").session_id == "cap-4"


def test_drain_writes_back_before_draining(
    fixture_models: FixtureModels, store: tuple[object, int], replicas: tuple[ServerHandle, ServerHandle]
) -> None:
    """Three chunks kept in memory (write-back every 10) are in Redis when `draining`
    arrives, so B continues right after them, with no resend."""
    x = _x(30, 11)
    chunks = [x[i : i + 10] for i in range(0, 30, 10)]
    _, b = replicas
    with b.client() as cb:
        whole = cb.stream("lstm", chunks).outputs
    with start_server(fixture_models.root, env=_env(store[1])) as a, a.client() as ca:
        call = ca.open_stream()
        call.config(model={"name": "lstm"}, session_id="drained")
        call.recv()
        rows = []
        for seq in range(2):
            call.chunk(seq, chunks[seq])
            rows.append(np.frombuffer(call.recv().result.outputs.data, "<f4").reshape(10, -1))
        a.process.send_signal(signal.SIGTERM)
        draining = call.recv()
        assert draining.WhichOneof("message") == "draining"
        assert draining.draining.last_sequence_number == 1
        call.cancel()
    with b.client() as cb:
        rest = cb.stream("lstm", chunks[2:], session_id="drained", must_exist=True)
    assert rest.started.next_sequence_number == 2
    np.testing.assert_allclose(np.concatenate([*rows, rest.outputs]), whole, atol=1e-5)


def test_a_burst_of_opens_shares_the_capped_connections(fixture_models: FixtureModels) -> None:
    """STORE_MAX_CONNECTIONS bounds the connections a process keeps to Redis: 24 sessions
    opened at once wait for a warm connection instead of opening more, and each one's
    result is what it is without the cap (the same frames in one stateless call)."""
    import threading

    with redis_server() as (_, port):
        before = _connections_received(port)
        env = _env(port, LSTM_SERVE_SESSIONS__STORE_MAX_CONNECTIONS="2")
        with start_server(fixture_models.root, env=env) as server:
            x = [_x(10, 100 + i) for i in range(24)]
            got: dict[int, np.ndarray] = {}

            def one(i: int) -> None:
                with server.client() as client:
                    first = client.predict("lstm", x[i][:5], session_id=f"burst-{i}").outputs[0]
                    rest = client.predict("lstm", x[i][5:], session_id=f"burst-{i}", frame_offset=5).outputs[0]
                    got[i] = np.concatenate([first, rest])

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(x))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert sorted(got) == list(range(len(x))), "a session's calls failed (see the server log)"
            with server.client() as client:
                for i in range(len(x)):
                    np.testing.assert_allclose(got[i], client.predict("lstm", x[i]).outputs[0], atol=1e-5)
        # the server's pool, plus the health checks' and this test's own short connections
        assert _connections_received(port) - before <= 2 + 2


def _connections_received(port: int) -> int:
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "stats"], capture_output=True, text=True,
                          check=True).stdout
    return int(next(line for line in info.splitlines() if line.startswith("total_connections_received:"))
               .split(":")[1])


def test_closing_the_store_closes_its_connections() -> None:
    """The store's pool belongs to it: close() leaves no connection open in Redis."""
    import asyncio

    from lstm_serve.metrics import Metrics
    from lstm_serve.redis_store import RedisSessionStore, SnapshotCodec
    from lstm_serve.repository import ModelRepository

    async def scenario(port: int) -> tuple[int, int]:
        store = RedisSessionStore(
            f"redis://127.0.0.1:{port}/0", SnapshotCodec(ModelRepository(root=Path("no-models")), 60.0), Metrics(),
            ttl_s=60.0, max_sessions=10, lease_s=1.0, op_timeout_s=1.0, max_connections=4,
        )
        await asyncio.gather(*(store.count() for _ in range(4)))
        during = _connected_clients(port)
        await store.close()
        return during, _connected_clients(port)

    with redis_server() as (_, port):
        during, after = asyncio.run(scenario(port))
    assert during >= 2  # the store's connections and redis-cli's own
    assert after == 1  # redis-cli's own


def _connected_clients(port: int) -> int:
    info = subprocess.run(["redis-cli", "-p", str(port), "info", "clients"], capture_output=True, text=True,
                          check=True).stdout
    return int(next(line for line in info.splitlines() if line.startswith("connected_clients:")).split(":")[1])
