"""Run a local server process, wait for it through the gRPC health service, read its metrics.

Tests and the benchmark start real servers with this; it never sleeps to wait. Given no
port, ``run_server`` lets ``lstm-serve`` bind any free ports (``--port 0 --metrics-port 0``
in its command) and reads the bound ones back through ``--port-file``, so no other
process can take a port between choosing and binding it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lstm_client.client import LstmClient, Security


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (another process may take it before
    the server binds it: prefer ``run_server`` without a port for ``lstm-serve``)."""
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
    security: Security = field(default_factory=Security)
    """How clients of this server connect (TLS, client certificate, token)."""
    health_port: int = 0
    """The plaintext health-only port (``--health-port``), 0 without one."""

    @property
    def target(self) -> str:
        """``127.0.0.1:PORT`` for the client."""
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def client(self, timeout: float = 30.0, security: Security | None = None) -> LstmClient:
        """A new client connected to this server, with the server's ``security`` unless
        another is given."""
        return LstmClient(self.target, timeout=timeout, security=security or self.security)

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")


@contextmanager
def run_server(
    cmd: list[str],
    port: int | None,
    metrics_port: int | None,
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_timeout: float = 60.0,
    security: Security | None = None,
) -> Iterator[ServerProcess]:
    """Start ``cmd``, wait until health says SERVING, and SIGTERM it when the block exits.

    With ``port`` given, ``cmd`` serves gRPC on ``port`` (and metrics on ``metrics_port``).
    With ``port=None``, ``cmd`` is an ``lstm-serve`` command that binds any free ports
    (``--port 0 --metrics-port 0``): ``--port-file`` is appended, pointing at a pipe, and
    the ports come back from it (``metrics_port`` is then ignored; 0 without metrics).
    ``LSTM_SERVE_*`` variables of this process are not passed on; ``env`` adds variables.
    ``security`` is how the readiness check and :meth:`ServerProcess.client` connect."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    full_env.update(env or {})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + ready_timeout
    read_fd, write_fd = os.pipe() if port is None else (-1, -1)
    try:
        if port is None:
            cmd = [*cmd, "--port-file", f"/dev/fd/{write_fd}"]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                pass_fds=(write_fd,) if port is None else (),
            )
        if port is None:
            os.close(write_fd)
            write_fd = -1
    except BaseException:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        raise
    server = ServerProcess(process, port or 0, metrics_port or 0, log_path, security or Security())
    try:
        if port is None:
            try:
                bound = _read_ports(read_fd, deadline)
            except (TimeoutError, ValueError) as exc:
                raise RuntimeError(f"{cmd[0]} reported no ports ({exc}):\n{server.log()}") from None
            finally:
                os.close(read_fd)
            server.port, server.metrics_port, server.health_port = bound
        with server.client() as client:
            try:
                client.wait_ready(timeout=max(1.0, deadline - time.monotonic()))
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


def _read_ports(fd: int, deadline: float) -> tuple[int, int, int]:
    """The JSON line ``lstm-serve --port-file`` writes, read from the pipe ``fd``: blocks
    until the line, the end of the pipe (the process exited) or ``deadline``."""
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError("timed out")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise ValueError("the process closed the pipe without writing the ports")
        data += chunk
    ports = json.loads(data)
    if not isinstance(ports, dict):
        raise ValueError(f"unexpected port file content {data!r}")
    port, metrics_port, health_port = ports.get("port"), ports.get("metrics_port") or 0, ports.get("health_port") or 0
    if not isinstance(port, int) or port <= 0 or not isinstance(metrics_port, int) or not isinstance(health_port, int):
        raise ValueError(f"unexpected port file content {data!r}")
    return port, metrics_port, health_port


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
