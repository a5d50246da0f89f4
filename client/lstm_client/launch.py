"""Run a local server process, wait for it through the gRPC health service, read its metrics.

Tests and the benchmark start real servers with this; it never sleeps to wait.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lstm_client.client import LstmClient


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """A running server subprocess on loopback."""

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
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_server(
    cmd: list[str],
    port: int,
    metrics_port: int,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """Start ``cmd`` (which serves gRPC on ``port``), wait until health says SERVING,
    and SIGTERM it when the block exits. ``LSTM_SERVE_*`` variables of this process are
    not passed on; ``env`` adds variables."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    full_env.update(env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
    server = ServerProcess(process, port, metrics_port, log_path)
    try:
        with server.client() as client:
            try:
                client.wait_ready(timeout=ready_timeout)
            except TimeoutError:
                raise RuntimeError(f"{cmd[0]} did not become ready:\n{server.log()}") from None
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def scrape(url: str) -> dict[str, float]:
    """Every sample of a Prometheus /metrics page, keyed ``name{label="value",...}``
    with the labels sorted."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples
