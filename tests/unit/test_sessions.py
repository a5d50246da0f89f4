"""Session holds: a stream holds a session alone; Predict calls share it; nothing held
expires; a release gives up only its own hold."""

from __future__ import annotations

import time

import numpy as np
import pytest

from lstm_serve.domain import ModelRef
from lstm_serve.errors import SessionConflict
from lstm_serve.metrics import Metrics
from lstm_serve.sessions import InMemorySessionStore, SessionManager

MODEL = ModelRef("lstm", "1")


def _manager(ttl_s: float = 60.0) -> tuple[SessionManager, InMemorySessionStore, Metrics]:
    metrics = Metrics()
    store = InMemorySessionStore(ttl_s=ttl_s, max_sessions=10, metrics=metrics)
    return SessionManager(store, metrics), store, metrics


def _acquire(manager: SessionManager, stream: bool) -> object:
    zeros = [np.zeros((1, 1, 4), np.float32)]
    return manager.acquire("s", MODEL, "", zeros, must_exist=False, stream=stream)[0]


def _active(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("lstm_serve_sessions_active", {"model": "lstm", "version": "1"}) or 0.0


def test_predict_in_flight_blocks_a_stream_and_its_release_keeps_nothing_attached() -> None:
    manager, store, metrics = _manager()
    first = _acquire(manager, stream=False)
    second = _acquire(manager, stream=False)  # Predict calls share (and queue on the lock)
    with pytest.raises(SessionConflict, match="in use by a Predict call"):
        _acquire(manager, stream=True)
    manager.release(first, stream=False)  # type: ignore[arg-type]
    with pytest.raises(SessionConflict):
        _acquire(manager, stream=True)
    manager.release(second, stream=False)  # type: ignore[arg-type]
    stream = _acquire(manager, stream=True)
    with pytest.raises(SessionConflict, match="attached to another stream"):
        _acquire(manager, stream=False)
    with pytest.raises(SessionConflict, match="attached to another stream"):
        _acquire(manager, stream=True)
    assert _active(metrics) == 1
    manager.release(stream, stream=True, delete=True)  # type: ignore[arg-type]
    assert store.get("s") is None and _active(metrics) == 0


def test_held_sessions_never_expire() -> None:
    manager, store, _ = _manager(ttl_s=0.01)
    stream = _acquire(manager, stream=True)
    time.sleep(0.05)
    assert store.expire(time.monotonic()) == []
    manager.release(stream, stream=True)  # type: ignore[arg-type]
    time.sleep(0.05)
    assert store.expire(time.monotonic()) == ["s"] and store.was_expired("s")


def test_ending_a_stale_handle_does_not_delete_a_newer_session() -> None:
    manager, store, _ = _manager(ttl_s=0.01)
    old = _acquire(manager, stream=False)
    manager.release(old, stream=False)  # type: ignore[arg-type]
    time.sleep(0.05)
    store.expire(time.monotonic())
    new = _acquire(manager, stream=True)
    old.predict_holds += 1  # type: ignore[attr-defined]
    manager.release(old, stream=False, delete=True)  # type: ignore[arg-type]
    assert store.get("s") is new
