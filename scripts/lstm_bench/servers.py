"""The processes the benchmark measures.

Every server binds port 0 and reports its ports back (``run_server`` with no port), so
no other process can take a port between choosing and binding it.

``ServerCode`` says which code a server runs: this checkout (the installed
``lstm-serve``), or a git worktree of another commit, run by the same interpreter with
``PYTHONPATH=<worktree>/server:<worktree>/protos`` so that it imports the old server
(``base_worktree`` makes one and checks that the import resolves there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lstm_client.launch import ServerProcess, free_port, run_server

from . import REPO, WORK

ECHO_METHOD = "/lstmserve.bench.Echo/Echo"
ECHO_ORT_METHOD = "/lstmserve.bench.Echo/EchoOrt"
"""The echo RPC that also runs the model once (B=1, T=100) on a one-thread executor:
the unary floor measured as one bare server, not as a sum of parts measured apart."""
ENTRY = REPO / "scripts" / "bench.py"


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration of the comparison."""

    key: str
    label: str
    args: tuple[str, ...]


SERVER_CONFIGS = [
    ServerConfig("off", "(b) batching off", ("--no-batching",)),
    ServerConfig("on", "(c) batching on (defaults)", ()),
    ServerConfig("workers2", "(d) --workers 2, batching on", ("--workers", "2")),
]


@dataclass(frozen=True)
class ServerCode:
    """The code a server runs: ``root`` is a checkout (this one, or a worktree)."""

    key: str
    root: Path
    commit: str | None
    env: dict[str, str] = field(default_factory=dict)
    port_file: bool = True
    """Whether its ``lstm-serve`` reports the ports it bound (``--port-file``); older
    commits take ports chosen here instead."""

    @property
    def describe(self) -> str:
        """``working tree at 4f0ab1d`` (this checkout) or ``4f0ab1d`` (a worktree of that commit)."""
        return f"{'working tree at ' if self.root == REPO else ''}`{(self.commit or '?')[:7]}`"


def current_code() -> ServerCode:
    """This checkout's working tree, as installed in the virtualenv."""
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False)
    return ServerCode("new", REPO, done.stdout.strip() or None)


def resolve_rev(rev: str) -> str:
    """The full commit id of ``rev`` (raises ``ValueError`` when it is not a commit)."""
    done = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"not a commit: {rev!r}")
    return done.stdout.strip()


@contextlib.contextmanager
def base_worktree(rev: str) -> Iterator[ServerCode]:
    """A detached git worktree of ``rev`` in a temporary directory, removed afterwards."""
    commit = resolve_rev(rev)
    parent = Path(tempfile.mkdtemp(prefix="lstm-bench-base-"))
    tree = parent / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(tree), commit], cwd=REPO, check=True)
    try:
        env = {"PYTHONPATH": os.pathsep.join([str(tree / "server"), str(tree / "protos")])}
        code = ServerCode("old", tree, commit, env, port_file=(tree / "server" / "lstm_serve" / "main.py")
                          .read_text().count('"--port-file"') > 0)
        check_imports(code)
        yield code
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=REPO, check=False,
                       capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=REPO, check=False, capture_output=True)
        with contextlib.suppress(OSError):
            parent.rmdir()


def check_imports(code: ServerCode) -> None:
    """Fail unless ``code``'s environment imports ``lstm_serve`` and ``lstmserve`` from ``code.root``."""
    probe = "import lstm_serve, lstmserve, json; print(json.dumps([lstm_serve.__file__, lstmserve.__path__[0]]))"
    done = subprocess.run([sys.executable, "-c", probe], env={**os.environ, **code.env}, cwd=code.root,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{code.describe}: cannot import the server: {done.stderr[-1000:]}")
    for path in json.loads(done.stdout):
        if not Path(path).resolve().is_relative_to(code.root.resolve()):
            raise RuntimeError(f"{code.describe}: imports {path}, outside {code.root}")


def server_command(models_dir: Path, args: tuple[str, ...]) -> list[str]:
    """``lstm-serve`` on any free loopback ports (the interpreter of this virtualenv)."""
    return [
        sys.executable, "-m", "lstm_serve.main", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
        "--models", str(models_dir), "--grace", "2", "--log-level", "WARNING", *args,
    ]


def lstm_server(
    models_dir: Path, config: ServerConfig, code: ServerCode | None = None,
) -> contextlib.AbstractContextManager[ServerProcess]:
    """``lstm-serve`` with ``config``'s flags, running ``code`` (default: this checkout)."""
    code = code or current_code()
    name = f"server-{config.key}" + ("" if code.root == REPO else f"-{code.key}")
    log_path = WORK / "logs" / f"{name}.log"
    if code.port_file:
        return run_server(server_command(models_dir, config.args), None, None, log_path,
                          env=code.env, cwd=code.root, ready_timeout=120)
    # a commit from before --port-file: ports chosen here (a small race, for old code only)
    port, metrics_port = free_port(), free_port()
    cmd = server_command(models_dir, config.args)
    cmd[cmd.index("--port") + 1], cmd[cmd.index("--metrics-port") + 1] = str(port), str(metrics_port)
    return run_server(cmd, port, metrics_port, log_path, env=code.env, cwd=code.root, ready_timeout=120)


def echo_server(package: Path | None = None) -> contextlib.AbstractContextManager[ServerProcess]:
    """The bare grpc.aio echo server (with a health service) in its own process; with
    ``package`` (a model version's directory) it also serves ``ECHO_ORT_METHOD``."""
    cmd = [sys.executable, str(ENTRY), "--echo-server", *(["--echo-model", str(package)] if package else [])]
    return run_server(cmd, None, None, WORK / "logs" / "echo-server.log", cwd=REPO, ready_timeout=120)


AUDIO_MODEL = "kws"
AUDIO_RATE_HZ = 16_000
ECHO_MESSAGES = "bench_echo_messages_total"
"""The echo server's count of StreamPredict chunks answered (its /metrics)."""


def _echo_stream_handlers(output_dim: int) -> Any:
    """StreamPredict and GetModelMetadata of a model with no model behind them: the
    stream transport floor. Every message is parsed and answered with protobuf, as
    lstm-serve must, so the floor is a bare grpc.aio server of the same messages and
    sizes, driven by the same load generator (``lstm-client bench``)."""
    import grpc
    import numpy as np
    from prometheus_client import Counter

    from lstm_client.client import to_tensor
    from lstmserve.v1 import inference_pb2 as pb

    answered = Counter(ECHO_MESSAGES.removesuffix("_total"), "StreamPredict chunks the echo server answered")
    outputs: dict[int, pb.Tensor] = {}

    def tensor(frames: int) -> pb.Tensor:
        if frames not in outputs:
            outputs[frames] = to_tensor(np.zeros((frames, output_dim), np.float32))
        return outputs[frames]

    async def metadata(request: pb.GetModelMetadataRequest, context: Any) -> pb.ModelMetadata:
        meta = pb.ModelMetadata(
            name=request.model.name, version="1", ready=True, input_kind=pb.INPUT_KIND_FEATURES, feature_dim=40,
            frame_rate_hz=100.0, output_dim=output_dim, streamable=True,
        )
        if request.model.name == AUDIO_MODEL:
            meta.input_kind = pb.INPUT_KIND_AUDIO
            meta.audio.sample_rate_hz = AUDIO_RATE_HZ
        return meta

    async def stream(requests: Any, context: Any) -> Any:
        async for request in requests:
            kind = request.WhichOneof("message")
            if kind == "config":
                yield pb.StreamResponse(started=pb.Started(session_id="echo", model=request.config.model,
                                                           frame_rate_hz=100.0))
            elif kind == "chunk" and request.chunk.HasField("audio"):
                # an audio stream's results carry events, not per-frame outputs (lstm-serve's default)
                answered.inc()
                frames = len(request.chunk.audio) * 100 // (2 * AUDIO_RATE_HZ)
                yield pb.StreamResponse(result=pb.Result(sequence_number=request.chunk.sequence_number,
                                                         frames=frames))
            elif kind == "chunk":
                frames = request.chunk.features.shape[0] if request.chunk.features.shape else 0
                answered.inc()
                yield pb.StreamResponse(result=pb.Result(
                    sequence_number=request.chunk.sequence_number, frames=frames, outputs=tensor(frames)))
            else:
                yield pb.StreamResponse(final=pb.Final(session_id="echo"))
                return

    return grpc.method_handlers_generic_handler("lstmserve.v1.Inference", {
        "GetModelMetadata": grpc.unary_unary_rpc_method_handler(
            metadata, request_deserializer=pb.GetModelMetadataRequest.FromString,
            response_serializer=pb.ModelMetadata.SerializeToString),
        "StreamPredict": grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=pb.StreamRequest.FromString,
            response_serializer=pb.StreamResponse.SerializeToString),
    })


def _echo_ort(package: Path) -> Any:
    """``ECHO_ORT_METHOD``'s behaviour: the echo, after one in-process onnxruntime call
    of a fixed ``[1, 100, feature_dim]`` input on a one-thread executor (the server's
    own ``ModelRuntime`` and thread settings), awaited from the event loop."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from lstm_serve.manifest import load_manifest
    from lstm_serve.runtime import ModelRuntime

    runtime = ModelRuntime(load_manifest(package), package, ["CPUExecutionProvider"], 1, 1)
    x = np.random.default_rng(1).standard_normal((1, 100, runtime.manifest.input.feature_dim)).astype(np.float32)
    states = runtime.zero_states(1)
    pool = ThreadPoolExecutor(max_workers=1)

    async def echo_ort(request: bytes, context: Any) -> bytes:
        await asyncio.get_running_loop().run_in_executor(pool, runtime.run, x, states)
        size = int.from_bytes(request[:4], "little")
        return request[4 : 4 + size]

    return echo_ort


async def serve_echo(port_file: str | None, package: Path | None = None, output_dim: int = 12) -> None:
    """The transport floor in its own process, on any free loopback ports: a bytes-in,
    bytes-out unary RPC (no protobuf, no model), and StreamPredict answered without a
    model (:func:`_echo_stream_handlers`), with a /metrics endpoint counting its chunks;
    with ``package``, also the echo after one model call (:func:`_echo_ort`).

    The unary request carries the Predict request's payload; the reply is the first
    ``reply_bytes`` (4-byte little-endian prefix) bytes of it, the size of a Predict reply.
    Writes ``{"port": P, "metrics_port": M}`` to ``port_file``."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio
    from prometheus_client import start_http_server

    async def echo(request: bytes, context: Any) -> bytes:
        size = int.from_bytes(request[:4], "little")
        return request[4 : 4 + size]

    server = grpc.aio.server()
    methods = {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    if package is not None:
        methods["EchoOrt"] = grpc.unary_unary_rpc_method_handler(_echo_ort(package))
    handler = grpc.method_handlers_generic_handler("lstmserve.bench.Echo", methods)
    server.add_generic_rpc_handlers((handler, _echo_stream_handlers(output_dim)))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    metrics_http, _ = start_http_server(0, addr="127.0.0.1")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    if port_file:
        with open(port_file, "w") as out:
            out.write(json.dumps({"port": port, "metrics_port": metrics_http.server_port}) + "\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)
    metrics_http.shutdown()
