"""``lstm-client bench``: a load generator for lstm-serve (see docs/benchmarks.md).

It opens N concurrent ``StreamPredict`` streams (or N unary ``Predict`` callers) and
drives them for a fixed duration, either paced at real time (one chunk of K frames
every K / frame_rate seconds per stream, like a microphone or a sensor) or as fast as
possible (closed loop: each stream sends its next chunk when the previous one is
answered). Everything runs in one asyncio loop with ``grpc.aio`` over several
channels (separate TCP connections, min(N, 8) by default), in this process, which is
never the server's. Against ``lstm-serve --workers N`` the kernel (SO_REUSEPORT)
spreads those connections, not the streams, over the workers, so use at least a few
channels per worker.

Measured over the window after ``--warmup``:

- ``frames_per_s``: feature frames answered per second, all streams together;
- ``latency_ms``: chunk latency p50/p95/p99, from the moment a chunk was *due*
  (its real-time slot) to the moment its result arrived. Counting from the due time
  rather than the actual send avoids coordinated omission: a load generator that falls
  behind shows up as latency, and ``send_lag_ms`` says how much of it is the client's;
- ``realtime_fraction``: frames answered / (streams x frame rate x duration). 1.0
  means every stream was kept at real time; in as-fast-as-possible mode it is the
  speed-up over real time;
- ``errors``: failed calls by gRPC status code (a failed stream is reopened with a
  new session at its next slot); chunks still unanswered ``drain_s`` (5 s) after the
  end are counted apart, in ``unanswered_chunks``;
- ``client_cpu_s``: this process's CPU time (user + system, all threads), so that a
  saturated load generator can be told from a saturated server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import grpc
import numpy as np

from lstm_client.client import LstmClient, to_tensor
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc

HELP = "load generator: N real-time (or as-fast-as-possible) streams or unary callers"

DESCRIPTION = """\
Load generator: drive N concurrent StreamPredict streams (or unary Predict callers) of
one model for S seconds and report throughput, chunk latency, errors and the fraction
of real time achieved. Inputs are random float32 frames of the model's feature_dim
(from GetModelMetadata); an audio model (kws) gets PCM chunks of --chunk-ms, cut
from --wav (looped) or, without one, quiet noise at the model's sample rate.

pacing:
  --realtime      each stream sends one chunk of K frames every K / frame_rate seconds
                  (K=10 at 100 Hz: a 100 ms chunk every 100 ms); streams start staggered
                  over one chunk period. This is how capacity in *streams* is measured.
  (default)       as fast as possible, closed loop: each stream sends its next chunk as
                  soon as the previous one is answered. This measures saturation.

latency is counted from the moment a chunk was due to the moment its result arrived,
so a load generator that falls behind shows up as latency (send_lag_ms tells whose).
client_cpu_s is this process's own CPU time: if it is close to the wall time, the load
generator, not the server, is the bottleneck.

examples:
  lstm-client bench har --streams 16 --duration 10 --chunk-frames 10 --realtime
  lstm-client --target 10.0.0.5:50051 bench reference --streams 256 --realtime --json
  lstm-client bench reference --streams 64 --duration 5            # saturation
  lstm-client bench har --mode predict --streams 8 --chunk-frames 100 --json
  lstm-client bench har --mode predict --session --streams 16 --chunk-frames 10   # stateful Predict
  lstm-client bench kws --streams 64 --realtime --chunk-ms 100 --wav demo/demo1.wav

exit code: 0 when no call failed, 1 when some did (the report is printed either way).
"""

LOSS_CODES = ("UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED")


@dataclass
class BenchConfig:
    """What one bench run does."""

    model: str
    streams: int
    duration_s: float
    chunk_frames: int
    realtime: bool
    mode: str = "stream"
    version: str = ""
    warmup_s: float = 1.0
    channels: int = 0
    seed: int = 0
    drain_s: float = 5.0
    chunk_ms: float = 100.0
    """Audio per chunk, for an audio model."""
    wav: str = ""
    """A WAV file whose audio the chunks are cut from (looped), for an audio model."""
    session: bool = False
    """Predict mode: each caller continues its own session (``session_id``)."""


@dataclass
class _Stats:
    """Samples collected by all workers (single asyncio loop: no locking needed)."""

    window_start: float
    window_end: float
    latencies: list[float] = field(default_factory=list)
    send_lags: list[float] = field(default_factory=list)
    frames: int = 0
    chunks: int = 0
    sent: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    streams_opened: int = 0
    unanswered: int = 0

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end

    def answered(self, due: float, now: float, frames: int) -> None:
        """Record one answered chunk that was due at ``due``."""
        if self.in_window(now):
            self.frames += frames
            self.chunks += 1
        if self.in_window(due):
            self.latencies.append(now - due)

    def error(self, exc: BaseException, now: float) -> None:
        """Record one failed call or stream."""
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
        self.errors[code] += 1


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    if not samples:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    arr = np.asarray(samples) * 1000.0
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(arr.max()), 3),
        "mean": round(float(arr.mean()), 3),
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class AudioInput:
    """What an audio model's chunks are: PCM16 at ``sample_rate_hz``."""

    sample_rate_hz: int
    chunks: list[bytes]
    """The chunks of ``chunk_ms``, sent round-robin."""


def audio_input(cfg: BenchConfig, sample_rate_hz: int) -> AudioInput:
    """Chunks of ``cfg.chunk_ms`` cut from ``cfg.wav``, or of quiet noise without one."""
    samples = max(1, round(sample_rate_hz * cfg.chunk_ms / 1000))
    if cfg.wav:
        from pathlib import Path

        from lstm_client.wav import read_wav

        wav = read_wav(Path(cfg.wav))
        if wav.encoding != "pcm16" or wav.sample_rate_hz != sample_rate_hz:
            raise ValueError(f"--wav: {cfg.wav} is {wav.encoding} at {wav.sample_rate_hz} Hz; the bench "
                             f"sends pcm16 at the model's {sample_rate_hz} Hz")
        pcm = np.frombuffer(wav.data, "<i2")
    else:
        pcm = (np.random.default_rng(cfg.seed).standard_normal(samples * 16) * 300).astype("<i2")
    whole = len(pcm) // samples
    if whole == 0:
        raise ValueError(f"--wav: {cfg.wav} is shorter than one chunk of {cfg.chunk_ms:g} ms")
    return AudioInput(sample_rate_hz, [pcm[i * samples : (i + 1) * samples].tobytes() for i in range(whole)])


class _Payloads:
    """Pre-built inputs, reused round-robin so the client spends no time on them."""

    def __init__(
        self, cfg: BenchConfig, feature_dim: int, variants: int = 16, audio: AudioInput | None = None,
    ) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.tensors = [
            to_tensor(rng.standard_normal((cfg.chunk_frames, feature_dim)).astype(np.float32))
            for _ in range(variants)
        ]
        self.audio = audio
        self.predicts = [
            pb.PredictRequest(model=pb.ModelRef(name=cfg.model, version=cfg.version), features=t)
            for t in self.tensors
        ]
        config = pb.StreamConfig(model=pb.ModelRef(name=cfg.model, version=cfg.version))
        if audio is not None:
            config.audio.CopyFrom(pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16,
                                                 sample_rate_hz=audio.sample_rate_hz))
        self.config = pb.StreamRequest(config=config)
        self.end = pb.StreamRequest(end=pb.End())

    def chunk(self, seq: int) -> pb.StreamRequest:
        """The stream request for chunk ``seq``."""
        if self.audio is not None:
            pcm = self.audio.chunks[seq % len(self.audio.chunks)]
            return pb.StreamRequest(chunk=pb.Chunk(sequence_number=seq, audio=pcm))
        tensor = self.tensors[seq % len(self.tensors)]
        return pb.StreamRequest(chunk=pb.Chunk(sequence_number=seq, features=tensor))


async def _stream_worker(
    stub: pb_grpc.InferenceStub, cfg: BenchConfig, payloads: _Payloads, stats: _Stats,
    pace: float, first_due: float, stop_at: float,
) -> None:
    """One logical stream; reopened with a new session after a failure."""
    due = first_due
    while due < stop_at:
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        call = stub.StreamPredict()
        stats.streams_opened += 1
        sent: dict[int, float] = {}
        failed = False
        reader: asyncio.Task[None] | None = None
        answered = asyncio.Event()

        async def read(call: Any = call, sent: dict[int, float] = sent, answered: asyncio.Event = answered) -> None:
            try:
                while True:
                    response = await call.read()
                    if response is grpc.aio.EOF:
                        return
                    if response.WhichOneof("message") != "result":
                        continue
                    result = response.result
                    chunk_due = sent.pop(result.sequence_number, None)
                    if chunk_due is not None:
                        stats.answered(chunk_due, time.perf_counter(), result.frames)
                    answered.set()
            finally:
                answered.set()  # never leave the writer waiting on a dead stream

        try:
            await call.write(payloads.config)
            started = await call.read()
            if started is grpc.aio.EOF:
                raise RuntimeError("stream closed before started")
            reader = asyncio.get_running_loop().create_task(read())
            seq = 0
            while due < stop_at:
                if reader.done():
                    reader.result()  # raises the stream's error
                    raise RuntimeError("stream ended before end was sent")
                due = await _wait_until_due(due, pace, stats)
                answered.clear()
                sent[seq] = due
                await call.write(payloads.chunk(seq))
                stats.sent += 1
                seq += 1
                if pace > 0:
                    due += pace
                else:
                    await answered.wait()
                    due = time.perf_counter()
            await call.write(payloads.end)
            await call.done_writing()
            try:
                await asyncio.wait_for(reader, timeout=max(0.1, stop_at + cfg.drain_s - time.perf_counter()))
            except TimeoutError:
                # the server is so far behind that the drain allowance ran out: not a failed call
                stats.unanswered += len(sent)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, RuntimeError,
                TimeoutError) as exc:
            failed = True
            reason: BaseException = exc
            if reader is not None and reader.done() and not reader.cancelled():
                reason = reader.exception() or exc  # the stream's status beats the write's
            stats.error(reason, time.perf_counter())
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
            call.cancel()
        if failed:
            # the stream is gone; reopen it (a new session) at its next slot
            due = max(due + pace, time.perf_counter() + (pace if pace > 0 else 0.05))


async def _wait_until_due(due: float, pace: float, stats: _Stats) -> float:
    """Paced: sleep until ``due`` and record how late the send is; as fast as possible:
    the send is due now. Returns the send's due time."""
    now = time.perf_counter()
    if pace <= 0:
        return now
    if due > now:
        await asyncio.sleep(due - now)
        now = time.perf_counter()
    if stats.in_window(due):
        stats.send_lags.append(now - due)
    return due


async def _predict_worker(
    stub: pb_grpc.InferenceStub, cfg: BenchConfig, payloads: _Payloads, stats: _Stats,
    pace: float, first_due: float, stop_at: float,
) -> None:
    """One unary caller: a whole ``[K, F]`` sequence per call; with ``cfg.session``,
    each call continues the caller's own server-side session (stateful Predict)."""
    due = first_due
    i = 0
    requests = payloads.predicts
    if cfg.session:
        session_id = f"bench-{uuid.uuid4().hex[:16]}"
        requests = [pb.PredictRequest(model=r.model, features=r.features, session_id=session_id) for r in requests]
    while due < stop_at:
        due = await _wait_until_due(due, pace, stats)
        stats.sent += 1
        try:
            await stub.Predict(requests[i % len(requests)], timeout=cfg.drain_s + 30)
            stats.answered(due, time.perf_counter(), cfg.chunk_frames)
        except grpc.aio.AioRpcError as exc:
            stats.error(exc, time.perf_counter())
        i += 1
        due = due + pace if pace > 0 else time.perf_counter()


async def run_bench(
    target: str, cfg: BenchConfig, feature_dim: int, frame_rate_hz: float, audio: AudioInput | None = None,
) -> dict[str, Any]:
    """Run one benchmark against ``target`` and return the report (see :func:`cmd_bench`);
    with ``audio``, the streams send its PCM chunks of ``cfg.chunk_ms``."""
    chunk_s = cfg.chunk_ms / 1000 if audio is not None else cfg.chunk_frames / frame_rate_hz
    pace = chunk_s if cfg.realtime else 0.0
    n_channels = cfg.channels or max(1, min(cfg.streams, 8))
    options = [
        ("grpc.use_local_subchannel_pool", 1),  # a TCP connection per channel
        ("grpc.max_receive_message_length", 64 << 20),
        ("grpc.max_send_message_length", 64 << 20),
    ]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in range(n_channels)]
    try:
        await asyncio.gather(*(c.channel_ready() for c in channels))
        stubs = [pb_grpc.InferenceStub(c) for c in channels]
        payloads = _Payloads(cfg, feature_dim, audio=audio)
        t0 = time.perf_counter() + 0.05
        window_start = t0 + cfg.warmup_s
        stop_at = window_start + cfg.duration_s
        stats = _Stats(window_start, stop_at)
        worker = _stream_worker if cfg.mode == "stream" else _predict_worker
        stagger = pace if pace > 0 else 0.0
        cpu0, wall0 = _cpu_seconds(), time.perf_counter()
        await asyncio.gather(
            *(
                worker(stubs[i % n_channels], cfg, payloads, stats, pace, t0 + stagger * i / cfg.streams, stop_at)
                for i in range(cfg.streams)
            )
        )
        wall = time.perf_counter() - wall0
        cpu = _cpu_seconds() - cpu0
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    expected = cfg.streams * frame_rate_hz * cfg.duration_s
    errors = dict(sorted(stats.errors.items()))
    return {
        "model": cfg.model,
        "mode": cfg.mode,
        "session": cfg.session,
        "realtime": cfg.realtime,
        "streams": cfg.streams,
        "chunk_frames": cfg.chunk_frames,
        "chunk_ms": round(1000 * chunk_s, 3),
        "input": "audio" if audio is not None else "features",
        "frame_rate_hz": frame_rate_hz,
        "duration_s": cfg.duration_s,
        "warmup_s": cfg.warmup_s,
        "drain_s": cfg.drain_s,
        "channels": n_channels,
        "frames": stats.frames,
        "chunks": stats.chunks,
        "chunks_sent": stats.sent,
        "frames_per_s": round(stats.frames / cfg.duration_s, 1),
        "chunks_per_s": round(stats.chunks / cfg.duration_s, 1),
        "latency_ms": _percentiles(stats.latencies),
        "send_lag_ms": _percentiles(stats.send_lags),
        "errors": errors,
        "error_count": sum(errors.values()),
        "unanswered_chunks": stats.unanswered,
        "streams_opened": stats.streams_opened if cfg.mode == "stream" else 0,
        "realtime_fraction": round(stats.frames / expected, 4) if expected else None,
        "client_cpu_s": round(cpu, 3),
        "client_wall_s": round(wall, 3),
        "client_cpu_cores": round(cpu / wall, 3) if wall > 0 else None,
    }


def _fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.1f}{unit}"


def format_report(report: dict[str, Any]) -> str:
    """The human-readable report."""
    lat, lag = report["latency_ms"], report["send_lag_ms"]
    pacing = f"real time ({report['chunk_ms']:g} ms chunks)" if report["realtime"] else "as fast as possible"
    errors = ", ".join(f"{k}={v}" for k, v in report["errors"].items()) or "none"
    lines = [
        f"{report['model']}: {report['streams']} {report['mode']} worker(s), {report['chunk_frames']} frames/chunk, "
        f"{pacing}, {report['duration_s']:g} s (+{report['warmup_s']:g} s warm-up), {report['channels']} channel(s)",
        f"  frames/s          {report['frames_per_s']:.0f}  ({report['chunks_per_s']:.0f} chunks/s)",
        f"  real-time         {report['realtime_fraction']:.3f} of {report['streams']} x {report['frame_rate_hz']:g} "
        "frames/s",
        f"  chunk latency ms  p50 {_fmt(lat['p50'])}  p95 {_fmt(lat['p95'])}  p99 {_fmt(lat['p99'])}  "
        f"max {_fmt(lat['max'])}",
    ]
    if report["realtime"]:
        lines.append(f"  client send lag   p50 {_fmt(lag['p50'])}  p99 {_fmt(lag['p99'])} ms")
    if report["unanswered_chunks"]:
        errors += f"; {report['unanswered_chunks']} chunk(s) still unanswered {report['drain_s']:g} s after the end"
    lines += [
        f"  errors            {errors}",
        f"  client CPU        {report['client_cpu_s']:.2f} s in {report['client_wall_s']:.2f} s "
        f"({report['client_cpu_cores']:.2f} cores)",
    ]
    return "\n".join(lines)


def cmd_bench(client: LstmClient, args: argparse.Namespace) -> int:
    """Run the load generator against the CLI's ``--target``; print the report."""
    meta = client.metadata(args.name, args.version)
    if not meta["ready"]:
        print(f"error: model '{args.name}' is not ready: {meta.get('error', '')}", file=sys.stderr)
        return 1
    if args.mode == "stream" and not meta["streamable"]:
        print(f"error: model '{args.name}' does not stream; use --mode predict", file=sys.stderr)
        return 2
    if args.session and args.mode != "predict":
        print("error: --session goes with --mode predict (a stream always has its session)", file=sys.stderr)
        return 2
    frame_rate = float(meta["frame_rate_hz"]) or 100.0
    cfg = BenchConfig(
        model=args.name, version=args.version, streams=args.streams, duration_s=args.duration,
        chunk_frames=args.chunk_frames, realtime=args.realtime, mode=args.mode, warmup_s=args.warmup,
        channels=args.channels, seed=args.seed, chunk_ms=args.chunk_ms, wav=args.wav or "",
        session=args.session,
    )
    audio = None
    if meta["input_kind"] == "audio":
        if args.mode != "stream":
            print(f"error: model '{args.name}' takes audio; it streams only (--mode stream)", file=sys.stderr)
            return 2
        try:
            audio = audio_input(cfg, int(meta["audio"]["sample_rate_hz"]))
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    elif args.wav:
        print(f"error: --wav: model '{args.name}' takes feature frames, not audio", file=sys.stderr)
        return 2
    report = asyncio.run(run_bench(client.target, cfg, int(meta["feature_dim"]), frame_rate, audio))
    report["config"] = asdict(cfg)
    print(json.dumps(report) if args.json else format_report(report))
    return 1 if report["error_count"] else 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def add_bench_parser(sub: Any) -> None:
    """Register the ``bench`` subcommand on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "bench", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("name", help="model name (e.g. reference, har)")
    p.add_argument("--version", default="", help="model version (default: the highest ready one)")
    p.add_argument("--streams", "-n", type=_positive_int, default=16,
                   help="concurrent streams (or unary callers with --mode predict) (default 16)")
    p.add_argument("--duration", "-d", type=_positive_float, default=10.0,
                   help="measured seconds, after the warm-up (default 10)")
    p.add_argument("--chunk-frames", "-k", type=_positive_int, default=10,
                   help="feature frames per chunk / per Predict sequence (default 10: 100 ms at 100 Hz)")
    p.add_argument("--realtime", action="store_true",
                   help="pace each stream at real time (a chunk every K / frame_rate s); default: as fast as possible")
    p.add_argument("--mode", choices=("stream", "predict"), default="stream",
                   help="stream: StreamPredict, state carried across chunks; predict: one unary Predict "
                   "per chunk, no session (default stream)")
    p.add_argument("--session", action="store_true",
                   help="with --mode predict: each caller continues its own server-side session (stateful "
                   "Predict with session_id); default: stateless calls")
    p.add_argument("--warmup", type=float, default=1.0,
                   help="seconds run before the measured window, not counted (default 1)")
    p.add_argument("--channels", type=int, default=0,
                   help="gRPC channels (TCP connections) the workers share round-robin (default min(N, 8))")
    p.add_argument("--chunk-ms", type=_positive_float, default=100.0,
                   help="audio milliseconds per chunk, for an audio model (default 100)")
    p.add_argument("--wav", help="a 16-bit PCM WAV at the model's sample rate whose audio the chunks are cut "
                   "from, looped (audio models; default: quiet noise)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the input frames (default 0)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.set_defaults(func=cmd_bench)
