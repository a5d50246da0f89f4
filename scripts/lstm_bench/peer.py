"""lstm-serve against the stateless peer (``make bench-peer``): the same reference ONNX
served by lstm-serve (server-side state, the native bidirectional ``StreamPredict``)
and by MLServer (a custom runtime, ``mlserver_peer/runtime.py``, in ``.venv-peer``:
one V2 ``ModelInfer`` per chunk, the client sending h and c with each chunk and taking
the new ones back), both driven by one load generator in one run on this machine.

Both servers run with their default flags. Each load point runs the load generator
(this file with ``--drive``) in its own process: one asyncio loop, the same pacing and
measuring code for both servers (:func:`drive_stream`), and one adapter per server
(:class:`NativeStream`, :class:`StatelessStream`). Measured, interleaved point by point:

- real-time sessions held: a sweep of paced streams of 100 ms chunks (10 frames at
  100 Hz); held as in ``make bench`` (``report.streams_held``: p99 <= 100 ms, no errors,
  >= 98 % of real time); a server's sweep stops after two points in a row not held;
- saturated frames/s: a fixed number of streams, each sending its next chunk once the
  previous one is answered;
- server CPU per chunk: user + system CPU of the server process and every descendant
  (MLServer's inference workers), from /proc, over the measured window, divided by the
  chunks answered in it.

``python scripts/lstm_bench/peer.py [--streams 8,16,20,24,28,32,64,128,160,192,224,256] [--json] [--no-docs]``
prints the table and the ratios lstm-serve / MLServer, writes the results to
``docs/peer-results.json`` and the table into docs/benchmarks.md between
``<!-- peer:begin -->`` and ``<!-- peer:end -->``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstm_bench import CHUNK_FRAMES, MODEL, REPO, SATURATION_STREAMS, WORK, log, write_marked
from lstm_bench.measure import git_commit, machine, machine_busy_s, tree_cpu_s
from lstm_client.bench import BenchConfig, _cpu_seconds, _Payloads, _percentiles, _Stats, _wait_until_due
from lstm_client.launch import free_port
from lstmserve.kserve_v2 import grpc_service_pb2 as v2
from lstmserve.kserve_v2 import grpc_service_pb2_grpc as v2_grpc
from lstmserve.v1 import inference_pb2_grpc as pb_grpc

BEGIN, END = "<!-- peer:begin -->", "<!-- peer:end -->"
PEER_VENV = REPO / ".venv-peer"
RUNTIME_DIR = Path(__file__).resolve().parent / "mlserver_peer"
RUNTIME_CLASS = "runtime.StatelessLstm"
SWEEP = (8, 16, 20, 24, 28, 32, 64, 128, 160, 192, 224, 256)
"""Paced stream counts: doubling, with steps between 16 and 32 and between 128 and 256, where
the two servers stop holding, so the ratio of sessions held is not just a power of two."""
MISSES_TO_STOP = 2
"""A server's paced sweep stops after this many points in a row not held."""
DRAIN_S = 5.0
SERVERS = ("lstm-serve", "mlserver")


# ------------------------------------------------------------------------ pure helpers
def model_settings(manifest: Any, package: Path) -> dict[str, Any]:
    """MLServer's model-settings.json for ``package`` (a model version's directory) and
    its ``manifest``: the custom runtime, the ONNX file and the tensor names it needs."""
    return {
        "name": manifest.name,
        "implementation": RUNTIME_CLASS,
        "parameters": {
            "uri": str((package / "model.onnx").resolve()),
            "version": manifest.version,
            "extra": {
                "input": manifest.input.name,
                "output": manifest.output.name,
                "states": [[s.input, s.output] for s in manifest.states],
            },
        },
    }


def server_settings(http_port: int, grpc_port: int, metrics_port: int,
                    overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """MLServer's settings.json: where it listens, and ``overrides`` (none in the
    published run); everything else is MLServer's default."""
    return {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
            **(overrides or {})}


def parse_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--mlserver-setting``, the value read as JSON when it parses
    (``debug=false``, ``parallel_workers=2``), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def held(point: dict[str, Any]) -> bool:
    """``make bench``'s criterion for one paced point (``report.streams_held``), and every
    chunk answered (a chunk cut off at the drain deadline is no more held than a failed one)."""
    from lstm_bench.report import streams_held

    return streams_held({"one": {"sweep": [point]}}, "one") > 0 and not point.get("unanswered_chunks")


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` to two places, or None when either is missing or ``b`` is 0."""
    return round(a / b, 2) if a is not None and b else None


# --------------------------------------------------------------- the load generator
class Stream(Protocol):
    """One logical session of one server, as the shared loop drives it."""

    async def open(self) -> None:
        """Start the session (lstm-serve: the stream and its config; MLServer: the zero state)."""

    async def send(self, seq: int, due: float) -> None:
        """Hand chunk ``seq``, due at ``due``, to the server; answers go to the stats."""

    async def answered(self) -> None:
        """Return once every chunk sent so far is answered (the closed loop's wait)."""

    async def close(self, deadline: float) -> int:
        """End the session, waiting for answers until ``deadline``; the chunks left unanswered."""

    def failure(self, exc: BaseException) -> BaseException:
        """What failed the session, given the exception the loop caught."""

    def abort(self) -> None:
        """Release the session's resources, whatever state it is in."""


class NativeStream:
    """lstm-serve as its users drive it: one ``StreamPredict`` per session, the state on
    the server, chunks written as they fall due and answers read as they come."""

    def __init__(self, stub: pb_grpc.InferenceStub, payloads: _Payloads, stats: _Stats) -> None:
        self.stub, self.payloads, self.stats = stub, payloads, stats
        self.sent: dict[int, float] = {}
        self.event = asyncio.Event()
        self.call: Any = None
        self.reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        self.call = self.stub.StreamPredict()
        await self.call.write(self.payloads.config)
        if await self.call.read() is grpc.aio.EOF:
            raise RuntimeError("stream closed before started")
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while (response := await self.call.read()) is not grpc.aio.EOF:
                if response.WhichOneof("message") == "result":
                    due = self.sent.pop(response.result.sequence_number, None)
                    if due is not None:
                        self.stats.answered(due, time.perf_counter(), response.result.frames)
                    if not self.sent:
                        self.event.set()
        finally:
            self.event.set()  # never leave the writer waiting on a dead stream

    def _check(self) -> None:
        if self.reader is not None and self.reader.done():
            self.reader.result()  # raises the stream's error
            raise RuntimeError("stream ended before end was sent")

    async def send(self, seq: int, due: float) -> None:
        self._check()
        self.sent[seq] = due
        self.event.clear()
        await self.call.write(self.payloads.chunk(seq))

    async def answered(self) -> None:
        await self.event.wait()
        if self.sent:
            self._check()

    async def close(self, deadline: float) -> int:
        await self.call.write(self.payloads.end)
        await self.call.done_writing()
        assert self.reader is not None
        try:
            await asyncio.wait_for(self.reader, timeout=max(0.1, deadline - time.perf_counter()))
        except TimeoutError:
            return len(self.sent)
        return 0

    def failure(self, exc: BaseException) -> BaseException:
        if self.reader is not None and self.reader.done() and not self.reader.cancelled():
            return self.reader.exception() or exc  # the stream's status beats the write's
        return exc

    def abort(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.cancel()
        if self.call is not None:
            self.call.cancel()


@dataclass(frozen=True)
class StatelessModel:
    """What a stateless client must know of the model to carry its state."""

    name: str
    input: str
    output: str
    states: list[tuple[str, str, list[int]]]
    """Each state's input name, output name and shape for one session (``[layers, 1, hidden]``)."""

    @classmethod
    def of(cls, manifest: Any) -> StatelessModel:
        return cls(manifest.name, manifest.input.name, manifest.output.name,
                   [(s.input, s.output, [s.layers, 1, s.hidden]) for s in manifest.states])


class StatelessStream:
    """MLServer driven the stateless way: one ``ModelInfer`` per chunk, carrying the
    chunk and the state the previous answer returned; the next chunk waits for it."""

    def __init__(self, stub: v2_grpc.GRPCInferenceServiceStub, model: StatelessModel, chunks: list[bytes],
                 frames: int, feature_dim: int, stats: _Stats, drain_end: float) -> None:
        self.stub, self.model, self.chunks, self.stats = stub, model, chunks, stats
        self.frames, self.feature_dim, self.drain_end = frames, feature_dim, drain_end
        self.state: list[bytes] = []
        self.late = 0
        """Calls cut off at ``drain_end``, unanswered (not failed), as a native stream's last chunks."""

    async def open(self) -> None:
        self.state = [np.zeros(shape, np.float32).tobytes() for _, _, shape in self.model.states]

    def request(self, seq: int) -> v2.ModelInferRequest:
        """Chunk ``seq`` with the session's state, as raw little-endian float32 contents."""
        request = v2.ModelInferRequest(model_name=self.model.name)
        request.inputs.add(name=self.model.input, datatype="FP32", shape=[1, self.frames, self.feature_dim])
        for name, _, shape in self.model.states:
            request.inputs.add(name=name, datatype="FP32", shape=shape)
        request.raw_input_contents.extend([self.chunks[seq % len(self.chunks)], *self.state])
        return request

    async def send(self, seq: int, due: float) -> None:
        try:
            response = await self.stub.ModelInfer(self.request(seq),
                                                  timeout=max(0.1, self.drain_end - time.perf_counter()))
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED or time.perf_counter() < self.drain_end - 0.05:
                raise
            self.late += 1
            return
        raw = {out.name: content for out, content in zip(response.outputs, response.raw_output_contents, strict=True)}
        shapes = {out.name: list(out.shape) for out in response.outputs}
        self.state = [raw[output] for _, output, _ in self.model.states]
        self.stats.answered(due, time.perf_counter(), shapes[self.model.output][1])

    async def answered(self) -> None:
        return None

    async def close(self, deadline: float) -> int:
        return self.late

    def failure(self, exc: BaseException) -> BaseException:
        return exc

    def abort(self) -> None:
        self.state = []


async def drive_stream(
    make: Callable[[], Stream], stats: _Stats, pace: float, first_due: float, stop_at: float,
) -> None:
    """The shared loop of one logical stream: paced (a chunk every ``pace`` s) or closed
    loop (``pace`` 0: the next chunk once the previous one is answered); a failed
    session is reopened, from the zero state, at its next slot. Nothing is sent after
    ``stop_at`` plus the drain allowance (``DRAIN_S``): chunks due in the window but not
    answered by then count as unanswered, as ``lstm-client bench`` counts them."""
    due, drain_end = first_due, stop_at + DRAIN_S
    while due < stop_at:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        stream = make()
        stats.streams_opened += 1
        try:
            await stream.open()
            seq = 0
            while due < stop_at:
                if pace > 0 and time.perf_counter() >= drain_end:
                    # so far behind that the drain allowance is gone: the chunks still due go unsent
                    stats.unanswered += math.ceil((stop_at - due) / pace)
                    due = stop_at  # and no new session either
                    break
                due = await _wait_until_due(due, pace, stats)
                await stream.send(seq, due)
                stats.sent += 1
                seq += 1
                if pace > 0:
                    due += pace
                else:
                    await stream.answered()
                    due = time.perf_counter()
            stats.unanswered += await stream.close(stop_at + DRAIN_S)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError,
                TimeoutError) as exc:
            stats.error(stream.failure(exc), time.perf_counter())
            due = max(due + pace, time.perf_counter() + (pace if pace > 0 else 0.05))
        finally:
            stream.abort()


async def sample_server_cpu(pid: int, at: list[float], out: list[tuple[dict[int, float], float, float]]) -> None:
    """Read the server tree's CPU (and the machine's busy time) at each of ``at``."""
    for moment in at:
        await asyncio.sleep(max(0.0, moment - time.perf_counter()))
        cpu, busy = await asyncio.to_thread(lambda: (tree_cpu_s(pid), machine_busy_s()))
        out.append((cpu, busy, time.perf_counter()))


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    """One load point against one server (``args.drive``): the report of ``lstm-client
    bench`` plus the server's CPU over the measured window."""
    from lstm_serve.manifest import load_manifest

    manifest = load_manifest(Path(args.package))
    rate = manifest.input.frame_rate_hz
    pace = args.chunk_frames / rate if args.realtime else 0.0
    cfg = BenchConfig(model=manifest.name, streams=args.streams, duration_s=args.duration,
                      chunk_frames=args.chunk_frames, realtime=args.realtime, warmup_s=args.warmup)
    payloads = _Payloads(cfg, manifest.input.feature_dim)
    n_channels = max(1, min(args.streams, 8))
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    channels = [grpc.aio.insecure_channel(args.target, options=options) for _ in range(n_channels)]
    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        t0 = time.perf_counter() + 0.05
        stats = _Stats(t0 + args.warmup, t0 + args.warmup + args.duration)
        makers: list[Callable[[], Stream]] = []
        for i in range(args.streams):
            channel = channels[i % n_channels]
            if args.drive == "lstm-serve":
                stub = pb_grpc.InferenceStub(channel)
                makers.append(lambda stub=stub: NativeStream(stub, payloads, stats))  # type: ignore[misc]
            else:
                v2_stub = v2_grpc.GRPCInferenceServiceStub(channel)
                model, chunks = StatelessModel.of(manifest), [t.data for t in payloads.tensors]
                makers.append(lambda s=v2_stub, m=model, c=chunks: StatelessStream(  # type: ignore[misc]
                    s, m, c, args.chunk_frames, manifest.input.feature_dim, stats, stats.window_end + DRAIN_S))
        samples: list[tuple[dict[int, float], float, float]] = []
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        await asyncio.gather(
            sample_server_cpu(args.server_pid, [stats.window_start, stats.window_end], samples),
            *(drive_stream(make, stats, pace, t0 + pace * i / args.streams, stats.window_end)
              for i, make in enumerate(makers)),
        )
        cpu, wall = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    (tree0, busy0, at0), (tree1, busy1, at1) = samples
    server_cpu = sum(c - tree0.get(p, 0.0) for p, c in tree1.items())
    window = at1 - at0
    expected = args.streams * rate * args.duration
    errors = dict(sorted(stats.errors.items()))
    return {
        "server": args.drive,
        "realtime": args.realtime,
        "streams": args.streams,
        "chunk_frames": args.chunk_frames,
        "duration_s": args.duration,
        "channels": n_channels,
        "chunks": stats.chunks,
        "frames_per_s": round(stats.frames / args.duration, 1),
        "realtime_fraction": round(stats.frames / expected, 4) if expected else None,
        "latency_ms": _percentiles(stats.latencies),
        "send_lag_ms": _percentiles(stats.send_lags),
        "errors": errors,
        "error_count": sum(errors.values()),
        "unanswered_chunks": stats.unanswered,
        "streams_opened": stats.streams_opened,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_cores": round(server_cpu / window, 3) if window > 0 else None,
        "server_processes": len(tree1),
        "cpu_us_per_chunk": round(1e6 * server_cpu / stats.chunks, 1) if stats.chunks else None,
        "machine_busy_cores": round((busy1 - busy0) / window, 3) if window > 0 else None,
        "client_cpu_s": round(cpu, 3),
        "client_cpu_cores": round(cpu / wall, 3) if wall > 0 else None,
    }


# ------------------------------------------------------------------------ the servers
@dataclass
class Peer:
    """A running server the load generator can drive."""

    name: str
    target: str
    pid: int
    version: str
    command: str


def mlserver_version() -> str:
    """The installed MLServer's version (``.venv-peer``)."""
    done = subprocess.run([str(PEER_VENV / "bin" / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def wait_model_ready(target: str, model: str, process: subprocess.Popen[bytes], log_path: Path,
                     timeout: float) -> None:
    """Poll V2 ``ModelReady`` until ``model`` is ready; fail with the log if the server exits or times out."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"mlserver exited ({process.returncode}):\n{log_path.read_text()[-3000:]}")
            with contextlib.suppress(grpc.RpcError):
                if stub.ModelReady(v2.ModelReadyRequest(name=model), timeout=2).ready:
                    return
            time.sleep(0.25)
    raise RuntimeError(f"mlserver did not get {model} ready in {timeout:g} s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def mlserver(package: Path, overrides: dict[str, Any] | None = None) -> Iterator[Peer]:
    """``mlserver start`` on a model repository made in a temporary directory (the
    runtime's model-settings.json, settings.json with free ports and ``overrides``),
    stopped afterwards."""
    from lstm_serve.manifest import load_manifest

    manifest = load_manifest(package)
    with tempfile.TemporaryDirectory(prefix="lstm-bench-peer-") as tmp:
        root = Path(tmp)
        (root / manifest.name).mkdir()
        (root / manifest.name / "model-settings.json").write_text(json.dumps(model_settings(manifest, package)))
        ports = free_port(), free_port(), free_port()
        (root / "settings.json").write_text(json.dumps(server_settings(*ports, overrides)))
        log_path = WORK / "logs" / "mlserver.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(RUNTIME_DIR)}
        env = {k: v for k, v in env.items() if not k.startswith("MLSERVER_")}
        cmd = [str(PEER_VENV / "bin" / "mlserver"), "start", str(root)]
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(cmd, cwd=root, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        try:
            target = f"127.0.0.1:{ports[1]}"
            wait_model_ready(target, manifest.name, process, log_path, timeout=120)
            changed = [f"({k}={v})" for k, v in (overrides or {}).items()]
            yield Peer("mlserver", target, process.pid, mlserver_version(),
                       " ".join(["mlserver start MODEL_REPOSITORY", *changed]))
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@contextlib.contextmanager
def lstm_serve(models: Path) -> Iterator[Peer]:
    """lstm-serve from this checkout with its defaults (``servers.lstm_server``; its log
    level put back to the default INFO, which the benchmark's command line lowers)."""
    from lstm_bench.servers import ServerConfig, lstm_server

    config = ServerConfig("peer", "lstm-serve, defaults", ("--log-level", "INFO"))
    with lstm_server(models, config) as server:
        git = git_commit()
        yield Peer("lstm-serve", server.target, server.process.pid,
                   f"{git['short']}{' (dirty)' if git['dirty'] else ''}", "lstm-serve --models MODELS")


def parity(package: Path, lstm_target: str, peer_target: str, chunks: int = 5) -> float:
    """Largest difference between the two servers' outputs for the same chunks, the
    state carried (lstm-serve by the stream, MLServer by the client)."""
    from lstm_client.client import LstmClient, to_array
    from lstm_serve.manifest import load_manifest

    manifest = load_manifest(package)
    model = StatelessModel.of(manifest)
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((CHUNK_FRAMES, manifest.input.feature_dim)).astype(np.float32) for _ in range(chunks)]
    with LstmClient(lstm_target) as client:
        native = np.concatenate([to_array(r.outputs) for r in client.stream(manifest.name, xs, timeout=60).results])
    state = [np.zeros(shape, np.float32) for _, _, shape in model.states]
    outputs = []
    with grpc.insecure_channel(peer_target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        for x in xs:
            request = v2.ModelInferRequest(model_name=model.name)
            request.inputs.add(name=model.input, datatype="FP32", shape=[1, *x.shape])
            for (name, _, shape) in model.states:
                request.inputs.add(name=name, datatype="FP32", shape=shape)
            request.raw_input_contents.extend([x.tobytes(), *(s.tobytes() for s in state)])
            response = stub.ModelInfer(request, timeout=30)
            raw = {o.name: (c, list(o.shape)) for o, c in zip(response.outputs, response.raw_output_contents,
                                                             strict=True)}
            outputs.append(np.frombuffer(raw[model.output][0], np.float32).reshape(raw[model.output][1])[0])
            state = [np.frombuffer(raw[out][0], np.float32).reshape(shape) for _, out, shape in model.states]
    return float(np.abs(native - np.concatenate(outputs)).max())


# ---------------------------------------------------------------------------- the run
def run_point(peer: Peer, package: Path, streams: int, realtime: bool, duration: float,
              warmup: float) -> dict[str, Any]:
    """One load point: the load generator in its own process against ``peer``."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--drive", peer.name, "--target", peer.target,
           "--server-pid", str(peer.pid), "--package", str(package), "--streams", str(streams),
           "--duration", str(duration), "--warmup", str(warmup), *(["--realtime"] if realtime else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 2 * DRAIN_S + 120,
                          check=False)
    if not done.stdout.strip():
        raise RuntimeError(f"the load generator failed against {peer.name} ({done.returncode}):\n"
                           f"{done.stderr[-3000:]}")
    point: dict[str, Any] = json.loads(done.stdout)
    point["held"] = realtime and held(point)
    return point


def describe(point: dict[str, Any]) -> str:
    """One log line's worth of a point."""
    return (f"{point['frames_per_s']:.0f} frames/s, RT {point['realtime_fraction']}, p99 "
            f"{point['latency_ms']['p99']} ms, {point['error_count']} errors, {point['cpu_us_per_chunk']} µs "
            f"CPU/chunk, {point['server_cpu_cores']} server cores{', held' if point['held'] else ''}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Both servers, the paced sweep and the saturation run interleaved point by point."""
    from tqdm import tqdm

    from lstm_bench.measure import ensure_model

    WORK.mkdir(exist_ok=True)
    package = ensure_model(args.models)
    results: dict[str, Any] = {
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["scripts/lstm_bench/peer.py", *args.argv]),
        "machine": machine(),
        "model": {"name": MODEL, "input_dim": 40, "hidden": 256, "layers": 2, "outputs": 12, "cell": "lstm"},
        "chunk_frames": CHUNK_FRAMES,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sweep_streams": args.streams,
        "saturation_streams": args.saturation_streams,
        "mlserver_overrides": dict(args.mlserver_setting),
        "servers": {},
    }
    started = time.perf_counter()
    with lstm_serve(args.models) as native, mlserver(package, dict(args.mlserver_setting)) as peer:
        peers = {"lstm-serve": native, "mlserver": peer}
        for name, p in peers.items():
            results["servers"][name] = {"version": p.version, "command": p.command, "sweep": [], "saturation": None}
        results["parity_max_abs_diff"] = parity(package, native.target, peer.target)
        log(f"both servers up; outputs agree to {results['parity_max_abs_diff']:.2e}")
        misses = dict.fromkeys(peers, 0)
        with tqdm(total=len(peers) * (len(args.streams) + 1), desc="bench-peer", unit="point", file=sys.stderr,
                  disable=None, leave=False) as bar:
            for i, count in enumerate(args.streams):
                for name in (SERVERS if i % 2 == 0 else SERVERS[::-1]):
                    if misses[name] >= MISSES_TO_STOP:
                        bar.update()
                        continue
                    point = run_point(peers[name], package, count, True, args.duration, args.warmup)
                    misses[name] = 0 if point["held"] else misses[name] + 1
                    results["servers"][name]["sweep"].append(point)
                    log(f"{name}, {count} paced streams: {describe(point)}")
                    bar.update()
            for name in SERVERS:
                point = run_point(peers[name], package, args.saturation_streams, False, args.duration, args.warmup)
                results["servers"][name]["saturation"] = point
                log(f"{name}, {args.saturation_streams} streams as fast as possible: {describe(point)}")
                bar.update()
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    results["summary"] = summarize(results)
    return results


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures per server and their ratios lstm-serve / MLServer."""
    from lstm_bench.report import streams_held

    servers = results["servers"]
    out: dict[str, Any] = {name: {"sessions_held": streams_held(servers, name)} for name in servers}
    for name, server in servers.items():
        saturation = server["saturation"] or {}
        out[name]["saturated_frames_per_s"] = saturation.get("frames_per_s")
        out[name]["saturated_cpu_us_per_chunk"] = saturation.get("cpu_us_per_chunk")
        out[name]["saturated_server_cores"] = saturation.get("server_cpu_cores")
    # CPU per chunk paced: at the most streams both held (else the first point), the same chunks/s for both
    both = [p["streams"] for p in servers["mlserver"]["sweep"] if p["held"]
            and any(q["held"] and q["streams"] == p["streams"] for q in servers["lstm-serve"]["sweep"])]
    common = max(both) if both else (results["sweep_streams"] or [0])[0]
    out["paced_streams"] = common
    for name, server in servers.items():
        at = [p for p in server["sweep"] if p["streams"] == common]
        out[name]["paced_cpu_us_per_chunk"] = at[0]["cpu_us_per_chunk"] if at else None
    figures = ("sessions_held", "saturated_frames_per_s", "saturated_cpu_us_per_chunk", "paced_cpu_us_per_chunk")
    out["ratios"] = {f: ratio(out["lstm-serve"][f], out["mlserver"][f]) for f in figures}
    out["target"] = 5.0
    out["met"] = all((out["ratios"][f] or 0) >= out["target"] for f in ("sessions_held", "saturated_frames_per_s"))
    return out


def _cell(value: Any, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if isinstance(value, int | float) else str(value)


def render(results: dict[str, Any]) -> str:
    """The generated block of docs/benchmarks.md: this run's figures only."""
    m, s = results["machine"], results["summary"]
    lstm, peer, r = s["lstm-serve"], s["mlserver"], s["ratios"]
    servers = results["servers"]
    lines = [
        f"Run of {results['started_at']} on {m['cpu_model']} ({m['nproc']} cores, load average "
        f"{m['loadavg_at_start'][0]} at the start), {results['elapsed_s']:.0f} s: `reference` (I=40, H=256, "
        f"2 layers, 12 outputs), {results['chunk_frames']}-frame chunks (100 ms at 100 Hz), "
        f"{results['duration_s']:g} s measured per point after {results['warmup_s']:g} s of warm-up. lstm-serve "
        f"`{servers['lstm-serve']['version']}` and MLServer {servers['mlserver']['version']}, each with its "
        f"defaults. The two servers' outputs for the same 5 chunks agree to "
        f"{results['parity_max_abs_diff']:.1e}.",
        "",
        "| figure | lstm-serve | MLServer | lstm-serve ÷ MLServer |",
        "|---|---|---|---|",
        f"| real-time sessions held (p99 <= 100 ms, 0 errors, >= 98 % of real time) | {_cell(lstm['sessions_held'])} "
        f"| {_cell(peer['sessions_held'])} | {_cell(r['sessions_held'], 2)} (target >= {s['target']:g}) |",
        f"| saturated frames/s ({results['saturation_streams']} streams, closed loop) "
        f"| {_cell(lstm['saturated_frames_per_s'])} | {_cell(peer['saturated_frames_per_s'])} "
        f"| {_cell(r['saturated_frames_per_s'], 2)} (target >= {s['target']:g}) |",
        f"| server CPU µs per chunk, saturated | {_cell(lstm['saturated_cpu_us_per_chunk'])} "
        f"| {_cell(peer['saturated_cpu_us_per_chunk'])} | {_cell(r['saturated_cpu_us_per_chunk'], 2)} |",
        f"| server CPU µs per chunk, {s['paced_streams']} paced streams | {_cell(lstm['paced_cpu_us_per_chunk'])} "
        f"| {_cell(peer['paced_cpu_us_per_chunk'])} | {_cell(r['paced_cpu_us_per_chunk'], 2)} |",
        f"| server cores used, saturated | {_cell(lstm['saturated_server_cores'], 2)} "
        f"| {_cell(peer['saturated_server_cores'], 2)} | |",
        "",
        f"Target (>= {s['target']:g}x in sessions held and in saturated frames/s): "
        f"{'met' if s['met'] else 'not met'} in this run. CPU per chunk: lower is better.",
        "",
        "| streams | server | frames/s | real time | p50 ms | p99 ms | errors | CPU µs/chunk | server cores "
        "| client cores | held |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [(str(count), name, p) for count in results["sweep_streams"] for name in SERVERS
            for p in servers[name]["sweep"] if p["streams"] == count]
    rows += [(f"{results['saturation_streams']} (as fast as possible)", name, servers[name]["saturation"])
             for name in SERVERS if servers[name]["saturation"]]
    for label, name, p in rows:
        lines.append(
            f"| {label} | {name} | {_cell(p['frames_per_s'])} | {_cell(p['realtime_fraction'], 3)} "
            f"| {_cell(p['latency_ms']['p50'], 1)} | {_cell(p['latency_ms']['p99'], 1)} "
            f"| {p['error_count'] + p['unanswered_chunks']} | {_cell(p['cpu_us_per_chunk'])} "
            f"| {_cell(p['server_cpu_cores'], 2)} | {_cell(p['client_cpu_cores'], 2)} "
            f"| {'yes' if p['held'] else ('no' if p['realtime'] else '-')} |")
    skipped = {n: [c for c in results["sweep_streams"] if c not in {p["streams"] for p in servers[n]["sweep"]}]
               for n in SERVERS}
    lines += [
        "",
        f"Paced points not run (the sweep stops after {MISSES_TO_STOP} in a row not held): "
        + ("; ".join(f"{n}: {', '.join(map(str, c))}" for n, c in skipped.items() if c) or "none") + ". "
        "Errors include chunks still unanswered 5 s after the window. "
        "Reproduce: `make bench-peer` (raw figures: [`peer-results.json`](peer-results.json)).",
    ]
    return "\n".join(lines)


def summary_text(results: dict[str, Any]) -> str:
    """The headline figures and ratios, for the terminal."""
    s = results["summary"]
    return "\n".join(
        f"{figure:28} lstm-serve {_cell(s['lstm-serve'][figure]):>9}  MLServer {_cell(s['mlserver'][figure]):>9}  "
        f"ratio {_cell(s['ratios'][figure], 2)}"
        for figure in s["ratios"]
    ) + f"\ntarget >= {s['target']:g}x in sessions held and saturated frames/s: {'met' if s['met'] else 'not met'}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=lambda t: [int(n) for n in t.split(",")], default=list(SWEEP),
                        help=f"paced stream counts of the sweep (default {','.join(map(str, SWEEP))})")
    parser.add_argument("--saturation-streams", type=int, default=SATURATION_STREAMS,
                        help=f"streams of the saturation run (default {SATURATION_STREAMS})")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per point (default 6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each window (default 1)")
    parser.add_argument("--models", type=Path, default=WORK / "models",
                        help="model repository holding reference/1 (default .bench/models; exported if absent)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where benchmarks.md and "
                        "peer-results.json are (default docs/)")
    parser.add_argument("--mlserver-setting", type=parse_setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a non-default MLServer setting (settings.json), e.g. debug=false; for exploring only: "
                        "the published table uses MLServer's defaults, and a run with any of these writes no docs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/")
    drive_group = parser.add_argument_group("one load point (what the run starts per point)")
    drive_group.add_argument("--drive", choices=SERVERS, help="run one load point against this server and print "
                             "its report as JSON")
    drive_group.add_argument("--target", help="HOST:PORT of the server")
    drive_group.add_argument("--server-pid", type=int, help="the server's process, whose tree's CPU is read")
    drive_group.add_argument("--package", help="the model version's directory (its manifest)")
    drive_group.add_argument("--realtime", action="store_true", help="pace each stream at real time")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.drive:
        if not (args.target and args.server_pid and args.package) or len(args.streams) != 1:
            parser.error("--drive needs --target, --server-pid, --package and one --streams count")
        args.streams = args.streams[0]
        args.chunk_frames = CHUNK_FRAMES
        print(json.dumps(asyncio.run(drive(args))))
        return 0
    if not (PEER_VENV / "bin" / "mlserver").exists():
        parser.error(f"no {PEER_VENV.relative_to(REPO)}: run scripts/setup-peer-venv.sh (make bench-peer does)")
    results = measure(args)
    if not args.no_docs and not args.mlserver_setting:
        (args.docs / "peer-results.json").write_text(json.dumps(results, indent=1) + "\n")
        write_marked(args.docs / "benchmarks.md", BEGIN, END, render(results), "The stateless peer")
    print(json.dumps(results, indent=1) if args.json else summary_text(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
