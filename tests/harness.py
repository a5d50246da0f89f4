"""Start a real lstm-serve process on free loopback ports and wait for it via health,
and the helpers that several test modules share.

Integration tests talk to it with the real client; nothing is mocked.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import numpy as np
import pytest
import redis

from lstm_client.client import Security
from lstm_client.launch import ServerProcess, free_port, run_server, scrape

__all__ = [
    "ATOL", "FEATURE_DIM", "REPO", "ServerHandle", "active_sessions", "frames", "metric_sum", "scrape",
    "start_server", "wait_until",
]

REPO = Path(__file__).resolve().parent.parent
FEATURE_DIM = 6
"""Input dimension of the fixture feature models (``lstm``, ``gru``, ``bilstm``)."""
ATOL = 1e-5
"""Served outputs and states against PyTorch's."""


ServerHandle = ServerProcess


def start_server(
    models_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready_timeout: float = 60.0,
    security: Security | None = None,
) -> AbstractContextManager[ServerProcess]:
    """Run ``lstm-serve`` until the block exits (then SIGTERM it). It binds free loopback
    ports itself (port 0) and reports them back; the handle carries them. ``security``
    is how the readiness check and ``handle.client()`` connect (TLS, token)."""
    log_dir = Path(os.environ.get("LSTM_SERVE_TEST_LOGS", "/tmp"))
    log_dir.mkdir(parents=True, exist_ok=True)
    fd, log_name = tempfile.mkstemp(dir=log_dir, prefix="lstm-serve-test-", suffix=".log")
    os.close(fd)
    cmd = [
        sys.executable, "-m", "lstm_serve.main",
        "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--models", str(models_dir), *(args or []),
    ]
    return run_server(
        cmd, None, None, Path(log_name), env=env, cwd=REPO, ready_timeout=ready_timeout, security=security
    )


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` (for server-side effects such as expiry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def metric_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def frames(seed: int, length: int) -> np.ndarray:
    """Random [length, FEATURE_DIM] float32 feature frames."""
    return np.random.default_rng(seed).standard_normal((length, FEATURE_DIM)).astype(np.float32)


def active_sessions(server: ServerProcess) -> float:
    """The active-sessions gauge, summed over models."""
    return metric_sum(scrape(server.metrics_url), "lstm_serve_sessions_active")


# ------------------------------------------------------------------ a real redis-server
requires_redis = pytest.mark.skipif(
    subprocess.run(["which", "redis-server"], capture_output=True).returncode != 0,
    reason="redis-server is not installed (.ci/run installs it)",
)
"""Skip a test (or, as ``pytestmark``, a module) that needs a real redis-server."""


def start_redis(port: int, data_dir: Path | None) -> subprocess.Popen[bytes] | None:
    """redis-server on ``port``, answering PING; None when it did not come up. With
    ``data_dir``, an append-only file there survives a restart; otherwise no persistence."""
    persist = ["--appendonly", "yes", "--dir", str(data_dir)] if data_dir is not None else ["--appendonly", "no"]
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", *persist],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    if wait_until(lambda: _pings(probe), timeout=5) and proc.poll() is None:
        return proc
    proc.kill()
    proc.wait()
    return None


@contextmanager
def redis_server(data_dir: Path | None = None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway redis-server on a free loopback port (see :func:`start_redis`)."""
    for _ in range(5):
        port = free_port()
        proc = start_redis(port, data_dir)
        if proc is not None:
            try:
                yield proc, port
            finally:
                proc.terminate()
                proc.wait(timeout=10)
            return
    raise RuntimeError("could not start redis-server")


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
