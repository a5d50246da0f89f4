"""Start a real lstm-serve process on free loopback ports and wait for it via health.

Integration tests talk to it with the real client; nothing is mocked.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lstm_client import LstmClient

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerHandle:
    """A running server process."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` for the client."""
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def client(self, timeout: float = 30.0) -> LstmClient:
        """A new client connected to this server."""
        return LstmClient(self.target, timeout=timeout)

    def log(self) -> str:
        """Everything the server logged so far."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def start_server(
    models_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[ServerHandle]:
    """Run ``lstm-serve`` on free ports until the block exits (then SIGTERM it)."""
    port, metrics_port = free_port(), free_port()
    log_dir = Path(os.environ.get("LSTM_SERVE_TEST_LOGS", "/tmp"))
    log_path = log_dir / f"lstm-serve-test-{port}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    full_env.update(env or {})
    cmd = [
        sys.executable, "-m", "lstm_serve.main",
        "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
        "--models", str(models_dir), *(args or []),
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=REPO)
    handle = ServerHandle(process, port, metrics_port, log_path)
    try:
        with handle.client() as client:
            try:
                client.wait_ready(timeout=ready_timeout)
            except TimeoutError:
                raise RuntimeError(f"server did not become ready:\n{handle.log()}") from None
        yield handle
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    """Poll ``predicate()`` until true or ``timeout`` (for server-side effects such as expiry)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def scrape(url: str) -> dict[str, float]:
    """Every sample of a /metrics page, keyed ``name{label="value",...}`` (labels sorted)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


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
