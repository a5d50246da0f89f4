"""The soak's load: paced ``har`` and ``kws`` streams, Predict calls and injected faults,
in one asyncio loop (``grpc.aio``), against replicas that may drain and come back.

- ``Router``: the replicas (a few channels each), which of them serve (a health check
  every half second, and a ``draining`` message marks a replica down at once), and
  round-robin over those that do. A replica restarted on new ports gets a new
  generation; a call's failure is judged against the generation it ran on.
- ``stream_slot``: one logical stream. It runs sessions of random length back to back,
  each paced at one chunk every ``chunk_ms``, asks for a resume token every 10 chunks,
  and resumes the session from its newest token (resending the chunks after it) when
  the stream is cut: by an injected disconnect (the client cancels), an injected bad
  chunk (the server answers INVALID_ARGUMENT), a ``draining`` message, or a failure.
  A resent chunk's first result is kept; for feature models the second one is
  compared with it.
- ``library_slot``: a ``har`` stream through the client library's own
  ``LstmClient.stream(auto_resume=True)``, blocking, in a thread, against a target
  naming both replicas.
- ``predict_driver``: Predict calls at a fixed rate, half stateless (a batch of ``har``
  sequences; one in twenty carries a NaN and must get INVALID_ARGUMENT), half stateful
  jobs of three calls (``frame_offset`` 0, 50, 100, a token returned each time, the
  session ended by the last call) that move to another replica with their token when
  theirs drains.
- ``Stats``: per-window chunk latency (from the moment a chunk was due, so a client
  that falls behind shows up as latency), errors by code, injected faults and their
  outcomes, and how long each resume took.

Every loop is bounded: streams and Predict stop at ``stop_at``, each session by its
chunk count and its attempt count, each resume by ``retry_for_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lstm_client.client import (
    ENCODINGS,
    FLOAT32,
    LstmClient,
    StatusError,
    chunk_request,
    session_metadata,
    to_array,
    to_tensor,
)
from lstm_client.wav import read_wav
from lstmserve.v1 import inference_pb2 as pb
from lstmserve.v1 import inference_pb2_grpc as pb_grpc

CHUNK_MS = 100.0
CHUNK_FRAMES = 10
"""A feature chunk: 10 frames every 100 ms (``har``'s manifest says 10 Hz; the soak sends
it at 100 Hz, the per-chunk load of a 100 Hz sensor). An audio chunk: 100 ms of 16 kHz PCM16."""
TOKEN_EVERY = 10
MAX_ATTEMPTS = 30
"""Most stream attempts one session makes (its first and every resume)."""
RESENT_ATOL = 1e-4
CHANNELS_PER_REPLICA = 4
CALL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Mix:
    """What the load does; ``streams`` is the only figure scaled to capacity."""

    streams: int
    kws_fraction: float = 0.25
    predict_per_s: float = 2.0
    disconnect_per_min: float = 1.0
    """Injected client disconnects per stream-minute (the client cancels, then resumes)."""
    bad_chunk_per_min: float = 0.5
    """Injected bad chunks per stream-minute (wrong feature dim, NaN, features to an audio model)."""
    session_s: tuple[float, float] = (5.0, 30.0)
    """Each session streams a random length in this range, then sends ``end``."""
    faults: bool = True

    @property
    def kws_streams(self) -> int:
        """Audio streams among ``streams``."""
        return round(self.streams * self.kws_fraction)

    @property
    def har_streams(self) -> int:
        """Feature streams among ``streams``."""
        return self.streams - self.kws_streams

    def describe(self) -> dict[str, Any]:
        """The mix as a JSON-ready dict."""
        return {
            "streams": self.streams, "har_streams": self.har_streams, "kws_streams": self.kws_streams,
            "chunk_ms": CHUNK_MS, "har_chunk_frames": CHUNK_FRAMES, "kws_chunk_bytes": 3200,
            "predict_per_s": self.predict_per_s if self.faults or self.predict_per_s else 0.0,
            "disconnect_per_stream_min": self.disconnect_per_min if self.faults else 0.0,
            "bad_chunk_per_stream_min": self.bad_chunk_per_min if self.faults else 0.0,
            "session_s": list(self.session_s), "token_every": TOKEN_EVERY,
        }


# ------------------------------------------------------------------------------ stats
@dataclass
class Stats:
    """Everything the load saw (one asyncio loop: no locking)."""

    t0: float
    window_s: float
    latencies: dict[int, dict[str, list[float]]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    """Window index (by due time) -> stream kind -> latency seconds of chunks answered on time."""
    recovery: list[float] = field(default_factory=list)
    """Latency of chunks that were due while their stream was being resumed."""
    resume_gaps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: Counter[str] = field(default_factory=Counter)
    """Unexpected failures, ``where:CODE``."""
    injected: Counter[str] = field(default_factory=Counter)
    drain: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    due: Counter[int] = field(default_factory=Counter)
    """Window index -> chunks first sent that were due in it."""
    mismatch_max: float = 0.0

    def window(self, t: float) -> int:
        """The window index of monotonic time ``t``."""
        return int((t - self.t0) // self.window_s)

    def answered(self, kind: str, due: float, now: float, recovering: bool) -> None:
        """One chunk's first result."""
        self.counts[f"{kind}_chunks_answered"] += 1
        if recovering:
            self.recovery.append(now - due)
        else:
            self.latencies[self.window(due)][kind].append(now - due)

    def error(self, where: str, code: str) -> None:
        """An unexpected failure."""
        self.errors[f"{where}:{code}"] += 1


def percentiles(samples: list[float]) -> dict[str, float | None]:
    """p50/p99/max in ms and the count."""
    if not samples:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    arr = np.asarray(samples) * 1000.0
    p50, p99 = np.percentile(arr, [50, 99])
    return {"n": len(samples), "p50": round(float(p50), 2), "p99": round(float(p99), 2),
            "max": round(float(arr.max()), 2)}


def code_name(exc: BaseException) -> str:
    """The gRPC status name of a failed call, else the exception's type."""
    return exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__


# ----------------------------------------------------------------------------- router
@dataclass
class Replica:
    """One server as the clients see it."""

    name: str
    target: str
    generation: int
    channels: list[grpc.aio.Channel]
    serving: bool = True
    terminated: set[int] = field(default_factory=set)
    """Generations that were sent SIGTERM (their UNAVAILABLE is expected)."""
    _next: itertools.count[int] = field(default_factory=itertools.count)

    def stub(self) -> pb_grpc.InferenceStub:
        """A stub on the next channel (round robin)."""
        return pb_grpc.InferenceStub(self.channels[next(self._next) % len(self.channels)])


def _channel(target: str) -> grpc.aio.Channel:
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", 64 << 20)]
    return grpc.aio.insecure_channel(target, options=options)


class Router:
    """The replicas and which of them take new calls."""

    def __init__(self) -> None:
        self.replicas: dict[str, Replica] = {}
        self._turn = itertools.count()
        self._old: list[grpc.aio.Channel] = []

    def add(self, name: str, target: str) -> None:
        """Route to ``name`` at ``target`` (a restarted replica: a new generation)."""
        old = self.replicas.get(name)
        if old is not None:
            self._old.extend(old.channels)
        generation = old.generation + 1 if old else 0
        self.replicas[name] = Replica(
            name, target, generation, [_channel(target) for _ in range(CHANNELS_PER_REPLICA)],
            terminated=old.terminated if old else set(),
        )

    def terminated(self, name: str) -> None:
        """The orchestrator sent ``name`` SIGTERM: its failures from now on are expected."""
        replica = self.replicas[name]
        replica.terminated.add(replica.generation)

    def expected_loss(self, name: str, generation: int) -> bool:
        """Whether a call on ``name``'s ``generation`` may fail because it was terminated."""
        return generation in self.replicas[name].terminated

    def pick(self, avoid: str | None = None) -> Replica:
        """A serving replica, round robin, other than ``avoid`` when another serves."""
        names = sorted(self.replicas)
        serving = [n for n in names if self.replicas[n].serving]
        choices = [n for n in serving if n != avoid] or serving or [n for n in names if n != avoid] or names
        return self.replicas[choices[next(self._turn) % len(choices)]]

    async def watch_health(self, stop: asyncio.Event, seconds: float, interval_s: float = 0.5) -> None:
        """Health-check every replica every ``interval_s`` until ``stop``, for at most ``seconds``."""
        for _ in range(int(seconds / interval_s) + 1):
            if stop.is_set():
                return
            for replica in list(self.replicas.values()):
                stub = health_pb2_grpc.HealthStub(replica.channels[0])
                try:
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    replica.serving = reply.status == health_pb2.HealthCheckResponse.SERVING
                except grpc.aio.AioRpcError:
                    replica.serving = False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)

    async def close(self) -> None:
        """Close every channel."""
        channels = [c for r in self.replicas.values() for c in r.channels] + self._old
        await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


# ----------------------------------------------------------------------------- inputs
class Inputs:
    """The chunks streams send: random feature frames, and the demo WAVs looped as audio."""

    def __init__(self, demo: Path) -> None:
        audio = b"".join(read_wav(p).data for p in sorted(demo.glob("demo[0-9].wav")))
        step = int(16_000 * CHUNK_MS / 1000) * 2
        self.audio = [audio[i : i + step] for i in range(0, len(audio) - step + 1, step)]

    def feature_chunks(self, rng: np.random.Generator, n: int) -> list[np.ndarray]:
        """``n`` random ``[CHUNK_FRAMES, 6]`` har chunks."""
        return list(rng.standard_normal((n, CHUNK_FRAMES, 6)).astype(FLOAT32))

    def audio_chunks(self, rng: np.random.Generator, n: int) -> list[bytes]:
        """``n`` consecutive 100 ms PCM16 chunks of the looped demo audio, from a random place."""
        start = int(rng.integers(len(self.audio)))
        return [self.audio[(start + i) % len(self.audio)] for i in range(n)]


def bad_chunk(kind: str, seq: int, variant: int) -> pb.StreamRequest:
    """A chunk the server must refuse with INVALID_ARGUMENT."""
    chunk = pb.Chunk(sequence_number=seq)
    if kind == "kws":
        chunk.features.CopyFrom(to_tensor(np.zeros((CHUNK_FRAMES, 40), dtype=FLOAT32)))  # features to an audio model
    elif variant % 2 == 0:
        chunk.features.CopyFrom(to_tensor(np.zeros((CHUNK_FRAMES, 5), dtype=FLOAT32)))  # wrong feature dim
    else:
        frames = np.zeros((CHUNK_FRAMES, 6), dtype=FLOAT32)
        frames[3, 2] = np.nan
        chunk.features.CopyFrom(to_tensor(frames))
    return pb.StreamRequest(chunk=chunk)


# ---------------------------------------------------------------------------- streams
@dataclass
class _Session:
    """One session's chunks, schedule and resume checkpoint."""

    kind: str
    payloads: list[Any]
    due: list[float]
    disconnect_at: set[int]
    bad_at: set[int]
    token: bytes = b""
    covered: int = -1
    answered: set[int] = field(default_factory=set)
    outputs: dict[int, np.ndarray] = field(default_factory=dict)
    """Outputs of answered chunks the checkpoint does not cover yet (they may be resent)."""
    recovering_until: float = 0.0
    sent: int = -1
    """The highest sequence number sent so far."""
    final: bool = False

    def advance(self, token: bytes, covered: int) -> None:
        if token and covered >= self.covered:
            self.token, self.covered = token, covered
            for seq in [s for s in self.outputs if s <= covered]:
                del self.outputs[seq]


@dataclass
class _Attempt:
    """How one stream attempt ended."""

    outcome: str = "open"
    """open (still, or ended without final: a failure), final, draining, disconnect, bad_chunk, or
    started_failed (refused before ``started``)."""
    code: str = ""
    started_at: float = 0.0


class StreamLoad:
    """The stream slots and Predict driver of one run, with their shared context."""

    def __init__(
        self, router: Router, stats: Stats, mix: Mix, inputs: Inputs, start: float, stop_at: float, seed: int,
        retry_for_s: float = 30.0,
    ) -> None:
        self.router, self.stats, self.mix, self.inputs = router, stats, mix, inputs
        self.start, self.stop_at, self.seed, self.retry_for_s = start, stop_at, seed, retry_for_s
        self.pace = CHUNK_MS / 1000
        self.stream_deadline = stop_at + 120.0

    def library_slot(self, index: int, target: str, first_due: float) -> Counter[str]:
        """One ``har`` stream through the client library's own auto-resume
        (``LstmClient.stream(auto_resume=True)``, blocking: run it in a thread), sessions of
        10 s back to back until ``stop_at``, against ``target`` naming both replicas as
        they were at the start. Returns its counts (the caller merges them)."""
        counts: Counter[str] = Counter()
        rng = np.random.default_rng([self.seed, 20_000 + index])
        time.sleep(max(0.0, first_due - time.monotonic()))
        with LstmClient(target, timeout=30.0) as client:
            for _ in range(int(self.stop_at - self.start) + 1):
                n = min(100, int((self.stop_at - time.monotonic()) / self.pace))
                if n < 10:
                    break
                try:
                    result = client.stream("har", self.inputs.feature_chunks(rng, n), auto_resume=True,
                                           pace_s=self.pace, retry_for_s=self.retry_for_s)
                except StatusError as exc:
                    counts[f"error:library_stream:{exc.code.name}"] += 1
                    continue
                counts["library_sessions"] += 1
                counts["library_resumes"] += result.resumes
                if result.outputs.shape[0] != n * CHUNK_FRAMES:
                    counts["error:library_stream:ROWS_MISSING"] += 1
        return counts

    async def stream_slot(self, index: int, kind: str, first_due: float) -> None:
        """Sessions back to back until ``stop_at`` (at most one per second of the run)."""
        rng = np.random.default_rng([self.seed, index])
        start = first_due
        for _ in range(int(self.stop_at - self.start) + 1):
            if start >= self.stop_at:
                return
            await self._session(kind, rng, start)
            start = max(time.monotonic(), start + self.pace)

    def _plan(self, kind: str, rng: np.random.Generator, start: float) -> _Session:
        low, high = self.mix.session_s
        n = max(2, int(rng.uniform(low, high) * 1000 / CHUNK_MS))
        n = max(1, min(n, int((self.stop_at - start) / self.pace) + 1))
        payloads: list[Any] = (self.inputs.audio_chunks(rng, n) if kind == "kws"
                               else self.inputs.feature_chunks(rng, n))
        per_chunk = self.pace / 60.0
        disconnect = bad = np.zeros(n, dtype=bool)
        if self.mix.faults:
            disconnect = rng.random(n) < self.mix.disconnect_per_min * per_chunk
            bad = rng.random(n) < self.mix.bad_chunk_per_min * per_chunk
        return _Session(kind, payloads, [start + i * self.pace for i in range(n)],
                        {int(i) for i in np.flatnonzero(disconnect) if i > 0},
                        {int(i) for i in np.flatnonzero(bad)})

    async def _session(self, kind: str, rng: np.random.Generator, start: float) -> None:
        session = self._plan(kind, rng, start)
        stats = self.stats
        stats.counts[f"{kind}_sessions"] += 1
        now = time.monotonic()
        if start > now:
            await asyncio.sleep(start - now)
        broke_at, cause, avoid = 0.0, "", None
        give_up = 0.0
        for tries in range(MAX_ATTEMPTS):
            replica = self.router.pick(avoid)
            attempt = await self._attempt(session, replica, resumed=bool(cause))
            now = time.monotonic()
            if attempt.outcome == "started_failed":
                # refused before started (a draining or dead replica): try another one
                if not self.router.expected_loss(replica.name, replica.generation):
                    stats.error(f"{kind}_open", attempt.code)
                else:
                    stats.drain[f"open_refused:{attempt.code}"] += 1
                give_up = give_up or now + self.retry_for_s
                if now > give_up:
                    stats.error(f"{kind}_resume", "GAVE_UP")
                    return
                avoid = replica.name
                await asyncio.sleep(0.05 * min(tries + 1, 10))
                continue
            if cause:
                stats.resume_gaps[cause].append(attempt.started_at - broke_at)
            if attempt.outcome == "final":
                stats.counts["sessions_ended"] += 1
                return
            broke_at, cause, give_up = now, attempt.outcome, 0.0
            if attempt.outcome == "draining":
                replica.serving = False
                avoid = replica.name
            elif attempt.outcome in ("disconnect", "bad_chunk"):
                avoid = replica.name if rng.random() < 0.5 else None
            else:
                cause = "failure"
                avoid = replica.name
            session.recovering_until = float("inf")
        stats.error(f"{kind}_session", "TOO_MANY_ATTEMPTS")

    async def _attempt(self, session: _Session, replica: Replica, resumed: bool) -> _Attempt:
        """One stream on ``replica``: config (with the newest token when resuming), chunks
        from ``started.next_sequence_number``, then ``end``."""
        stats, kind = self.stats, session.kind
        attempt = _Attempt()
        config = pb.StreamConfig(model=pb.ModelRef(name=kind), token_every=TOKEN_EVERY, resume_token=session.token)
        if kind == "kws":
            config.input_kind = pb.INPUT_KIND_AUDIO
            config.audio.CopyFrom(pb.AudioFormat(encoding=ENCODINGS["pcm16"], sample_rate_hz=16_000))
        call = replica.stub().StreamPredict(timeout=max(1.0, self.stream_deadline - time.monotonic()))
        generation = replica.generation
        try:
            await call.write(pb.StreamRequest(config=config))
            first = await call.read()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            call.cancel()
            attempt.outcome, attempt.code = "started_failed", code_name(exc)
            return attempt
        if first is grpc.aio.EOF or first.WhichOneof("message") != "started":
            call.cancel()
            attempt.outcome, attempt.code = "started_failed", "NO_STARTED"
            return attempt
        started = first.started
        attempt.started_at = time.monotonic()
        if resumed:
            stats.counts["resumes"] += 1
            session.recovering_until = attempt.started_at
        session.advance(bytes(started.resume_token), int(started.next_sequence_number) - 1)
        stopped = asyncio.Event()
        reader = asyncio.get_running_loop().create_task(self._read(call, session, attempt, stopped))
        injected_bad = False
        try:
            for seq in range(int(started.next_sequence_number), len(session.payloads)):
                due = session.due[seq]
                now = time.monotonic()
                if due > now:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopped.wait(), due - now)
                if stopped.is_set():
                    break
                if seq in session.disconnect_at:
                    session.disconnect_at.discard(seq)
                    stats.injected["disconnect"] += 1
                    attempt.outcome = "disconnect"
                    break
                if seq in session.bad_at:
                    session.bad_at.discard(seq)
                    stats.injected["bad_chunk_sent"] += 1
                    injected_bad = True
                    await call.write(bad_chunk(kind, seq, stats.injected["bad_chunk_sent"]))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(asyncio.shield(reader), CALL_TIMEOUT_S)
                    break
                await call.write(chunk_request(seq, session.payloads[seq]))
                stats.counts["chunks_sent"] += 1
                if seq > session.sent:
                    session.sent = seq
                    stats.due[stats.window(due)] += 1
                else:
                    stats.counts["chunks_resent"] += 1
            else:
                await call.write(pb.StreamRequest(end=pb.End()))
                await call.done_writing()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), CALL_TIMEOUT_S + 20)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            pass  # the reader has the stream's status
        finally:
            # a no-op on a finished call; otherwise the session is detached server-side
            call.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(reader, 5.0)
        return self._judge(attempt, session, replica, generation, injected_bad)

    def _judge(self, attempt: _Attempt, session: _Session, replica: Replica, generation: int, bad: bool) -> _Attempt:
        stats, kind = self.stats, session.kind
        if bad:
            if attempt.code == "INVALID_ARGUMENT":
                stats.injected["bad_chunk_refused:INVALID_ARGUMENT"] += 1
                attempt.outcome = "bad_chunk"
            elif attempt.outcome == "draining":
                stats.injected["bad_chunk_overtaken_by_drain"] += 1
            else:
                stats.error(f"{kind}_bad_chunk", attempt.code or "ACCEPTED")
                attempt.outcome = "bad_chunk"
            return attempt
        if attempt.outcome == "open":
            attempt.outcome = "failure"
            code = attempt.code or "NO_FINAL"
            attempt.code = code
            if self.router.expected_loss(replica.name, generation) and code in ("UNAVAILABLE", "CANCELLED"):
                stats.drain[f"stream_lost:{code}"] += 1
            else:
                stats.error(f"{kind}_stream", code)
        return attempt

    async def _read(self, call: Any, session: _Session, attempt: _Attempt, stopped: asyncio.Event) -> None:
        stats, kind = self.stats, session.kind
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return
                which = response.WhichOneof("message")
                now = time.monotonic()
                if which == "result":
                    self._result(session, response.result, now)
                elif which == "draining":
                    d = response.draining
                    stats.drain["draining_messages"] += 1
                    session.advance(bytes(d.resume_token), int(d.last_sequence_number))
                    if attempt.outcome == "open":
                        attempt.outcome = "draining"
                    return
                elif which == "final":
                    session.final = True
                    attempt.outcome = "final"
                    stats.counts[f"{kind}_final_events"] += len(response.final.events)
        except grpc.aio.AioRpcError as exc:
            attempt.code = exc.code().name
        except asyncio.CancelledError:
            attempt.code = attempt.code or "CANCELLED"
        finally:
            stopped.set()

    def _result(self, session: _Session, result: pb.Result, now: float) -> None:
        stats = self.stats
        seq = int(result.sequence_number)
        session.advance(bytes(result.resume_token), seq)
        if result.flush or result.duplicate:
            return
        rows = to_array(result.outputs) if result.HasField("outputs") else None
        if seq in session.answered:
            stats.counts["chunks_resent_answered"] += 1
            first = session.outputs.get(seq)
            if first is not None and rows is not None:
                diff = float(np.max(np.abs(first - rows))) if first.shape == rows.shape else float("inf")
                stats.mismatch_max = max(stats.mismatch_max, diff)
                if diff > RESENT_ATOL:
                    stats.error(f"{session.kind}_resent", "OUTPUT_MISMATCH")
            return
        session.answered.add(seq)
        if rows is not None and seq > session.covered:
            session.outputs[seq] = rows
        stats.answered(session.kind, session.due[seq], now, session.due[seq] < session.recovering_until)

    # --------------------------------------------------------------------- Predict
    async def predict_driver(self, rate_per_s: float) -> None:
        """Predict calls at ``rate_per_s`` until ``stop_at``: even ticks a stateless call,
        odd ticks the calls of stateful three-call jobs (one starts every sixth tick)."""
        if rate_per_s <= 0:
            return
        tick = 1.0 / rate_per_s
        rng = np.random.default_rng([self.seed, 10_000])
        tasks: set[asyncio.Task[None]] = set()
        due = self.start + tick / 2
        for i in range(int((self.stop_at - self.start) / tick) + 1):
            if due >= self.stop_at:
                break
            now = time.monotonic()
            if due > now:
                await asyncio.sleep(due - now)
            due += tick
            if i % 2 == 0:
                job = self._stateless(rng, i)
            elif i % 6 == 1:
                job = self._stateful(rng, i, tick * 2)  # its three calls take ticks i, i + 2 and i + 4
            else:
                continue
            task = asyncio.get_running_loop().create_task(job)
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=60.0)

    async def _predict(self, replica: Replica, request: pb.PredictRequest) -> pb.PredictResponse:
        return await replica.stub().Predict(request, timeout=CALL_TIMEOUT_S,
                                             metadata=session_metadata(request.session_id))

    async def _stateless(self, rng: np.random.Generator, i: int) -> None:
        lengths = rng.integers(20, 101, size=4)
        x = np.zeros((4, int(lengths.max()), 6), dtype=FLOAT32)
        for row, n in enumerate(lengths):
            x[row, :n] = rng.standard_normal((n, 6))
        nan = self.mix.faults and i % 40 == 20
        if nan:
            x[1, 3, 0] = np.nan
        request = pb.PredictRequest(model=pb.ModelRef(name="har"), features=to_tensor(x), lengths=lengths.tolist())
        await self._unary("predict_stateless", request, nan)

    async def _unary(
        self, where: str, request: pb.PredictRequest, bad: bool, replica: Replica | None = None,
        token: bytes = b"",
    ) -> tuple[pb.PredictResponse | None, Replica]:
        """One call; when its replica was terminated, moved to another one (with ``token``
        for a stateful call). Returns the response (None after a failure) and the replica
        that answered."""
        stats = self.stats
        replica = replica or self.router.pick()
        for _ in range(3):
            generation = replica.generation
            try:
                response = await self._predict(replica, request)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                if bad and code == "INVALID_ARGUMENT":
                    stats.injected["bad_predict_refused:INVALID_ARGUMENT"] += 1
                    return None, replica
                if code == "UNAVAILABLE" and self.router.expected_loss(replica.name, generation):
                    stats.drain[f"predict_refused:{code}"] += 1
                    replica.serving = False
                    replica = self.router.pick(avoid=replica.name)
                    if request.session_id and token:
                        stats.drain["predict_moved_with_token"] += 1
                        request.resume_token = token
                    continue
                stats.error(where, code)
                return None, replica
            stats.counts[f"{where}_ok"] += 1
            if bad:
                stats.error(where, "BAD_INPUT_ACCEPTED")
            return response, replica
        stats.error(where, "NO_REPLICA")
        return None, replica

    async def _stateful(self, rng: np.random.Generator, i: int, spacing_s: float) -> None:
        """Three calls of one session at ``frame_offset`` 0, 50, 100 on one replica, a
        token returned each time; the third ends the session. When its replica stops
        serving, the next call goes to another one with the newest token."""
        session_id = f"soak-predict-{self.seed}-{i}"
        replica = self.router.pick()
        token = b""
        for step in range(3):
            frames = rng.standard_normal((50, 6)).astype(FLOAT32)
            request = pb.PredictRequest(
                model=pb.ModelRef(name="har"), features=to_tensor(frames), session_id=session_id,
                return_token=True, end_session=step == 2, frame_offset=50 * step,
            )
            if not replica.serving and token:
                replica = self.router.pick(avoid=replica.name)
                request.resume_token = token
                self.stats.drain["predict_moved_with_token"] += 1
            response, replica = await self._unary("predict_stateful", request, False, replica, token)
            if response is None:
                return
            token = bytes(response.resume_token)
            if step < 2:
                await asyncio.sleep(spacing_s)
