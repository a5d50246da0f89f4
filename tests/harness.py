"""Start a real lstm-serve process on free loopback ports and wait for it via health.

Integration tests talk to it with the real client; nothing is mocked.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import AbstractContextManager
from pathlib import Path

from lstm_client.launch import ServerProcess, free_port, run_server, scrape

__all__ = ["REPO", "ServerHandle", "metric_sum", "scrape", "start_server", "wait_until"]

REPO = Path(__file__).resolve().parent.parent


ServerHandle = ServerProcess


def start_server(
    models_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready_timeout: float = 60.0,
) -> AbstractContextManager[ServerProcess]:
    """Run ``lstm-serve`` on free loopback ports until the block exits (then SIGTERM it)."""
    port, metrics_port = free_port(), free_port()
    log_dir = Path(os.environ.get("LSTM_SERVE_TEST_LOGS", "/tmp"))
    cmd = [
        sys.executable, "-m", "lstm_serve.main",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
        "--models", str(models_dir), *(args or []),
    ]
    log_path = log_dir / f"lstm-serve-test-{port}.log"
    return run_server(cmd, port, metrics_port, log_path, env=env, cwd=REPO, ready_timeout=ready_timeout)


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
