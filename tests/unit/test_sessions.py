"""Session holds and the store: a stream holds a session alone; Predict calls share it;
nothing held expires; a close gives up only its own hold; commits are compare-and-set."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from lstm_serve.domain import ModelRef
from lstm_serve.errors import SessionConflict, SessionNotFound
from lstm_serve.metrics import Metrics
from lstm_serve.session_registry import SessionRegistry
from lstm_serve.session_store import InMemorySessionStore, StaleState
from lstm_serve.sessions import LiveSession
from lstm_serve.state import SessionState, now_ms

MODEL = ModelRef("lstm", "1")


def _fresh(session_id: str) -> SessionState:
    return SessionState(session_id, MODEL, "hash", (np.zeros((1, 1, 4), np.float32),))


def _registry(ttl_s: float = 60.0) -> tuple[SessionRegistry, InMemorySessionStore, Metrics]:
    metrics = Metrics()
    store = InMemorySessionStore(ttl_s=ttl_s, max_sessions=10, metrics=metrics)
    return SessionRegistry(store, metrics), store, metrics


async def _open(registry: SessionRegistry, stream: bool, mode: str = "create_or_continue") -> LiveSession:
    live, _ = await registry.open("s", _fresh, requested_version="", mode=mode, stream=stream)  # type: ignore[arg-type]
    return live


def _active(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("lstm_serve_sessions_active", {"model": "lstm", "version": "1"}) or 0.0


def test_predict_in_flight_blocks_a_stream_and_its_close_keeps_nothing_attached() -> None:
    async def scenario() -> None:
        registry, store, metrics = _registry()
        first = await _open(registry, stream=False)
        second = await _open(registry, stream=False)  # Predict calls share (and queue on the lock)
        assert first is second
        with pytest.raises(SessionConflict, match="in use by a Predict call"):
            await _open(registry, stream=True)
        await registry.close(first, stream=False)
        with pytest.raises(SessionConflict):
            await _open(registry, stream=True)
        await registry.close(second, stream=False)
        stream = await _open(registry, stream=True)
        with pytest.raises(SessionConflict, match="attached to another stream"):
            await _open(registry, stream=False)
        with pytest.raises(SessionConflict, match="attached to another stream"):
            await _open(registry, stream=True)
        assert _active(metrics) == 1
        await registry.close(stream, stream=True, delete=True)
        assert await store.get("s") is None and _active(metrics) == 0

    asyncio.run(scenario())


def test_held_sessions_never_expire() -> None:
    async def scenario() -> None:
        registry, store, _ = _registry(ttl_s=0.01)
        stream = await _open(registry, stream=True)
        await asyncio.sleep(0.05)
        assert await store.expire(now_ms(), registry.held) == []
        await registry.close(stream, stream=True)
        await asyncio.sleep(0.05)
        assert await store.expire(now_ms(), registry.held) == ["s"] and await store.was_expired("s")
        with pytest.raises(SessionNotFound, match="expired"):
            await _open(registry, stream=True, mode="continue")

    asyncio.run(scenario())


def test_closing_a_stale_handle_does_not_delete_a_newer_session() -> None:
    async def scenario() -> None:
        registry, store, _ = _registry(ttl_s=0.01)
        old = await _open(registry, stream=False)
        await registry.close(old, stream=False)
        await asyncio.sleep(0.05)
        await store.expire(now_ms(), registry.held)
        new = await _open(registry, stream=True)
        old.predict_holds += 1
        await registry.close(old, stream=False, delete=True)
        stored = await store.get("s")
        assert stored is not None and stored is new.state

    asyncio.run(scenario())


def test_commits_are_compare_and_set_on_the_version() -> None:
    async def scenario() -> None:
        _, store, _ = _registry()
        created = await store.create(_fresh("s"))
        assert created.version == 1
        advanced = await store.compare_and_set(created.advanced(frame_offset=5), 1)
        assert advanced.version == 2 and advanced.frame_offset == 5
        with pytest.raises(StaleState, match="expected version 1"):
            await store.compare_and_set(created.advanced(frame_offset=9), 1)
        stored = await store.get("s")
        assert stored is not None and stored.frame_offset == 5
        with pytest.raises(StaleState):
            await store.create(_fresh("s"))

    asyncio.run(scenario())


def test_restart_replaces_the_state_and_create_refuses_an_existing_id() -> None:
    async def scenario() -> None:
        registry, store, _ = _registry()
        live = await _open(registry, stream=False)
        live.state = await store.compare_and_set(live.state.advanced(frame_offset=7), live.state.version)
        await registry.close(live, stream=False)
        with pytest.raises(SessionConflict, match="exists already"):
            await _open(registry, stream=False, mode="create")
        restarted = await _open(registry, stream=False, mode="restart")
        assert restarted.state.frame_offset == 0
        await registry.close(restarted, stream=False)

    asyncio.run(scenario())


def test_state_arrays_are_read_only_values() -> None:
    state = _fresh("s")
    with pytest.raises(ValueError):
        state.states[0][0, 0, 0] = 1.0
