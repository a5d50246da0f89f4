"""The lstm-serve benchmark (``make bench``): one run, every configuration side by side.

On a small, shared machine absolute figures drift from run to run, so everything is
measured in the same run and compared as ratios:

(a) in-process onnxruntime (the server's own ``ModelRuntime``, same thread settings) at
    the batch sizes the server reaches;
(b) the server with batching off (``lstm-serve --no-batching``), the baseline;
(c) the server with batching on (the defaults: adaptive delay, ``max_delay_ms`` 2 under
    load only);
(d) multi-process serving: ``lstm-serve --workers 2`` (batching on), two worker processes
    sharing the port with SO_REUSEPORT; the kernel spreads the load generator's
    connections (one per channel, min(N, 8) channels) over them.

For each server configuration it sweeps N real-time streams of 100 ms chunks (10 frames
at 100 Hz) with ``lstm-client bench`` in its own process, then one as-fast-as-possible
saturation run, reading the batch-size distribution from the server's /metrics and the
server's CPU time from /proc (the server process and all its descendants, so that the
worker processes of ``--workers`` count, each also reported on its own). It also
measures the unary Predict overhead over the transport floor: the p50 of an echo RPC on
a bare grpc.aio server (started from this script with ``--echo-server``), the p50 of
in-process onnxruntime (B=1, T=100) and the p50 of Predict (B=1, T=100). A py-spy
profile of the saturated server (batching on) is summarized when py-spy is installed.

Writes ``docs/benchmarks.md``, ``docs/bench-results.json`` and ``docs/img/*.png``.

    .venv/bin/python scripts/bench.py            # the full run (about 5 minutes)
    .venv/bin/python scripts/bench.py --quick    # a smoke run (about 1 minute)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lstm_client.launch import ServerProcess as Server
from lstm_client.launch import free_port, run_server, scrape

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORK = REPO / ".bench"
MODEL = "reference"
CHUNK_FRAMES = 10
FULL_STREAMS = [1, 16, 64, 128, 256, 384]
QUICK_STREAMS = [1, 16, 64]
SATURATION_STREAMS = 128
ORT_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 384]
ECHO_METHOD = "/lstmserve.bench.Echo/Echo"
LATENCY_TARGET_MS = 100.0
REALTIME_HELD = 0.98

TARGETS = {
    "streams_held": 256,
    "batching_speedup": 4.0,
    "served_vs_ort": 0.5,
    "predict_overhead_ms": 0.3,
}


@dataclass(frozen=True)
class ServerConfig:
    """One server configuration of the comparison."""

    key: str
    label: str
    args: tuple[str, ...]
    sweep: bool = True


SERVER_CONFIGS = [
    ServerConfig("off", "(b) batching off", ("--no-batching",)),
    ServerConfig("on", "(c) batching on (defaults: max batch 64, adaptive delay, 2 ms under load)", ()),
    ServerConfig("workers2", "(d) --workers 2, batching on", ("--workers", "2")),
]


# ---------------------------------------------------------------------------------- utils
def log(message: str) -> None:
    """Progress on stderr."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...), from /proc/*/stat ppid."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None:
                children[int(fields[1])].append(int(entry.name))
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children.get(child, []))
    return sorted(out)


def tree_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of each live descendant (worker processes), by pid.

    A descendant's CPU is counted while it is alive; the workers live as long as the
    server, so deltas between two readings are exact for them.
    """
    out = {}
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, IndexError):
            out[p] = process_cpu_s(p)
    return out


def process_role(pid: int, root: int) -> str:
    """``server`` for the process started, ``resource_tracker`` for multiprocessing's helper,
    ``worker`` for any other descendant."""
    if pid == root:
        return "server"
    with contextlib.suppress(OSError):
        if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return "resource_tracker"
    return "worker"


def machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (everything but idle and iowait), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99 of seconds, in ms."""
    p50, p95, p99 = np.percentile(np.asarray(samples) * 1000.0, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4)}


def machine() -> dict[str, Any]:
    """What this ran on."""
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    versions = {}
    for module in ("grpc", "onnxruntime", "numpy"):
        with contextlib.suppress(ImportError):
            versions[module] = __import__(module).__version__
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


# ---------------------------------------------------------------------------------- model
def ensure_model(models_dir: Path) -> Path:
    """The reference package (I=40, H=256, 2 layers, 12 outputs), exported once."""
    package = models_dir / MODEL / "1"
    if not (package / "model.onnx").is_file():
        log(f"exporting the reference model into {models_dir} (lstm-train reference)")
        subprocess.run([str(BIN / "lstm-train"), "reference", "--out", str(models_dir)], check=True,
                       stdout=subprocess.DEVNULL)
    return package


def load_runtime(package: Path, threads: int = 1) -> Any:
    """The server's own ModelRuntime on the CPU provider."""
    from lstm_serve.manifest import load_manifest
    from lstm_serve.runtime import ModelRuntime

    return ModelRuntime(load_manifest(package), package, ["CPUExecutionProvider"], threads, 1)


# ---------------------------------------------------------------------------- (a) in-process
def ort_throughput(runtime: Any, batch: int, frames: int, seconds: float) -> dict[str, float]:
    """Frames/s and ms per call of ``runtime.run`` at ``[batch, frames, I]``."""
    rng = np.random.default_rng(batch)
    x = rng.standard_normal((batch, frames, runtime.manifest.input.feature_dim)).astype(np.float32)
    states = runtime.zero_states(batch)
    runtime.run(x, states)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 3:
        started = time.perf_counter()
        runtime.run(x, states)
        times.append(time.perf_counter() - started)
    per_call = float(np.median(times))
    return {
        "batch": batch,
        "frames": frames,
        "ms_per_call": round(per_call * 1000, 4),
        "frames_per_s": round(batch * frames / per_call, 1),
    }


def ort_p50(runtime: Any, frames: int, calls: int) -> dict[str, float]:
    """Latency percentiles of one B=1 call of ``frames`` frames."""
    x = np.random.default_rng(1).standard_normal((1, frames, runtime.manifest.input.feature_dim)).astype(np.float32)
    states = runtime.zero_states(1)
    for _ in range(20):
        runtime.run(x, states)
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        runtime.run(x, states)
        samples.append(time.perf_counter() - started)
    return percentiles_ms(samples)


# ---------------------------------------------------------------------------------- servers
def lstm_server(models_dir: Path, config: ServerConfig) -> contextlib.AbstractContextManager[Server]:
    """``lstm-serve`` on free loopback ports with ``config``'s flags."""
    port, metrics_port = free_port(), free_port()
    cmd = [
        str(BIN / "lstm-serve"), "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(metrics_port),
        "--models", str(models_dir), "--grace", "2", "--log-level", "WARNING", *config.args,
    ]
    return run_server(cmd, port, metrics_port, WORK / "logs" / f"server-{config.key}.log", cwd=REPO, ready_timeout=120)


def echo_server() -> contextlib.AbstractContextManager[Server]:
    """This script's bare grpc.aio echo server (with a health service) in its own process."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--echo-server", str(port)]
    return run_server(cmd, port, 0, WORK / "logs" / "echo-server.log", cwd=REPO, ready_timeout=120)


async def _serve_echo(port: int) -> None:
    """A bytes-in, bytes-out unary RPC: the transport floor (no protobuf, no model).

    The request carries the Predict request's payload; the reply is the first
    ``reply_bytes`` (4-byte little-endian prefix) bytes of it, the size of a Predict reply.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    async def echo(request: bytes, context: Any) -> bytes:
        size = int.from_bytes(request[:4], "little")
        return request[4 : 4 + size]

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "lstmserve.bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}
    )
    server.add_generic_rpc_handlers((handler,))
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)


# -------------------------------------------------------------------------------- measuring
def metric_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, float]:
    """Per-label-set increase of every sample of ``name`` (summed over models)."""
    out: dict[str, float] = defaultdict(float)
    for key, value in after.items():
        base, _, labels = key.partition("{")
        if base != name:
            continue
        le = ""
        for part in labels.rstrip("}").split(","):
            if part.startswith("le="):
                le = part[4:-1]
        out[le] += value - before.get(key, 0.0)
    return dict(out)


def server_view(
    before: dict[str, float], after: dict[str, float], cpu_s: float, wall_s: float, busy_s: float,
    process_cpu: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Batch-size distribution, compute and queue time, and CPU of one measured point."""
    buckets = metric_delta(before, after, "lstm_serve_batch_size_bucket")
    count = metric_delta(before, after, "lstm_serve_batch_size_count").get("", 0.0)
    total = metric_delta(before, after, "lstm_serve_batch_size_sum").get("", 0.0)
    compute_s = metric_delta(before, after, "lstm_serve_compute_seconds_sum").get("", 0.0)
    queue_n = metric_delta(before, after, "lstm_serve_queue_wait_seconds_count").get("", 0.0)
    queue_s = metric_delta(before, after, "lstm_serve_queue_wait_seconds_sum").get("", 0.0)
    edges = sorted((float(le), n) for le, n in buckets.items() if le and le != "+Inf")
    histogram, previous = {}, 0.0
    for edge, cumulative in edges:
        histogram[f"<={edge:g}"] = round(cumulative - previous)
        previous = cumulative
    return {
        "batches": int(count),
        "mean_batch": round(total / count, 2) if count else None,
        "batch_histogram": histogram,
        "compute_s": round(compute_s, 3),
        "compute_busy_fraction": round(compute_s / wall_s, 3) if wall_s else None,
        "mean_compute_ms": round(1000 * compute_s / count, 3) if count else None,
        "mean_queue_wait_ms": round(1000 * queue_s / queue_n, 3) if queue_n else None,
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_cores": round(cpu_s / wall_s, 3) if wall_s else None,
        # each server process: the one started first, then its descendants (the workers)
        "processes": process_cpu or [],
        "machine_busy_cores": round(busy_s / wall_s, 3) if wall_s else None,
    }


def run_load(server: Server, streams: int, duration: float, realtime: bool, warmup: float) -> dict[str, Any]:
    """One ``lstm-client bench`` run in its own process, with the server's view of it."""
    cmd = [
        str(BIN / "lstm-client"), "--target", server.target, "bench", MODEL, "--streams", str(streams),
        "--duration", str(duration), "--chunk-frames", str(CHUNK_FRAMES), "--warmup", str(warmup), "--json",
    ]
    if realtime:
        cmd.append("--realtime")
    before = scrape(server.metrics_url)
    cpu0, busy0, wall0 = tree_cpu_s(server.process.pid), machine_busy_s(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + warmup + 120)
    cpu1, busy1, wall1 = tree_cpu_s(server.process.pid), machine_busy_s(), time.perf_counter()
    after = scrape(server.metrics_url)
    if not done.stdout.strip():
        raise RuntimeError(f"lstm-client bench failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    report.pop("config", None)
    wall = wall1 - wall0
    per_process = {p: cpu1[p] - cpu0.get(p, 0.0) for p in cpu1}
    processes = [
        {"pid": p, "role": process_role(p, server.process.pid), "cpu_cores": round(c / wall, 3)}
        for p, c in per_process.items()
    ]
    view = server_view(before, after, sum(per_process.values()), wall, busy1 - busy0, processes)
    # what neither the server nor the load generator used: other jobs on the machine (and the CLI's start-up)
    client_share = report["client_cpu_s"] / (wall1 - wall0)
    view["others_cores"] = round(max(0.0, view["machine_busy_cores"] - view["server_cpu_cores"] - client_share), 3)
    report["server"] = view
    report["command"] = " ".join(["lstm-client", *cmd[1:3], *cmd[3:]]).replace(server.target, "HOST:PORT")
    return report


def profile_during_load(
    server: Server, streams: int, duration: float, warmup: float, out: Path
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A saturation run with py-spy sampling the server (when py-spy is installed)."""
    py_spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if py_spy is None:
        log("py-spy not installed: no profile (pip install py-spy into .venv)")
        return run_load(server, streams, duration, False, warmup), None
    cmd = [py_spy, "record", "--pid", str(server.process.pid), "--duration", str(max(1, int(duration))),
           "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]
    time_to_start = warmup + 0.5
    spy: subprocess.Popen[bytes] | None = None

    def start_spy() -> None:
        nonlocal spy
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    import threading

    timer = threading.Timer(time_to_start, start_spy)
    timer.start()
    report = run_load(server, streams, duration, False, warmup)
    timer.join()
    if spy is None:
        return report, None
    assert isinstance(spy, subprocess.Popen)
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.is_file():
        log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return report, None
    return report, summarize_profile(out)


PROFILE_BUCKETS = [
    ("onnxruntime call (executor thread)", ("runtime.py:", "_run_group")),
    ("batcher loop (collect, split, resolve futures)", ("batching.py:",)),
    ("protobuf <-> domain conversion", ("convert.py:",)),
    ("domain stream logic (service.py)", ("service.py:",)),
    ("servicer / interceptor", ("servicer.py:", "interceptor.py:")),
    ("grpc.aio machinery (cygrpc, polling)", ("grpc/", "cygrpc", "_poll_wrapper", "aio/")),
    ("asyncio loop + grpc.aio Cython callbacks (native, shown as Handle._run)", ("asyncio/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
]


def summarize_profile(folded: Path) -> dict[str, Any]:
    """Self and inclusive shares of the sampled stacks (py-spy raw, non-idle samples)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0].split(" ")[0] if frames else "?"] += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
        # the innermost frame that belongs to a known part decides the bucket
        for frame in reversed(frames):
            hit = next((name for name, keys in PROFILE_BUCKETS if any(k in frame for k in keys)), None)
            if hit is not None:
                buckets[hit] += count
                break
        else:
            buckets["other"] += count
    share = {k: round(v / total, 3) for k, v in buckets.most_common()} if total else {}
    return {
        "samples": total,
        "by_part": share,
        "top_self": [(f, round(c / total, 3)) for f, c in leaf.most_common(12)] if total else [],
        "top_inclusive": [
            (f, round(c / total, 3)) for f, c in inclusive.most_common(40) if not f.startswith(("process ", "thread "))
        ][:20] if total else [],
        "folded": str(folded.relative_to(REPO)) if folded.is_relative_to(REPO) else str(folded),
    }


def unary_p50(target: str, method: str, request: Any, calls: int, echo: bool) -> dict[str, float]:
    """Sequential unary calls on one channel from this process (sync client)."""
    import grpc

    from lstmserve.v1 import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(target) as channel:
        if echo:
            call: Any = channel.unary_unary(method)
        else:
            call = pb_grpc.InferenceStub(channel).Predict
        for _ in range(50):
            call(request, timeout=10)
        samples = []
        for _ in range(calls):
            started = time.perf_counter()
            call(request, timeout=10)
            samples.append(time.perf_counter() - started)
    return percentiles_ms(samples)


def predict_request(feature_dim: int, frames: int) -> Any:
    """A Predict request for one random ``[frames, feature_dim]`` sequence."""
    from lstm_client.client import to_tensor
    from lstmserve.v1 import inference_pb2 as pb

    x = np.random.default_rng(2).standard_normal((frames, feature_dim)).astype(np.float32)
    return pb.PredictRequest(model=pb.ModelRef(name=MODEL), features=to_tensor(x))


def echo_payload(predict: Any, output_dim: int, frames: int) -> bytes:
    """Echo request as big as the Predict request, asking for a reply as big as Predict's."""
    reply_bytes = frames * output_dim * 4 + 40
    body = predict.SerializeToString()
    return reply_bytes.to_bytes(4, "little") + body + bytes(max(0, reply_bytes - len(body)))


# ---------------------------------------------------------------------------------- report
def streams_held(servers: dict[str, Any], key: str) -> int:
    """The most paced streams of ``key``'s sweep held in real time at the latency target with no errors."""
    ok = [
        p["streams"] for p in servers.get(key, {}).get("sweep", [])
        if p["latency_ms"]["p99"] is not None and p["latency_ms"]["p99"] <= LATENCY_TARGET_MS
        and p["error_count"] == 0 and (p["realtime_fraction"] or 0) >= REALTIME_HELD
    ]
    return max(ok) if ok else 0


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets against what was measured, for every configuration that applies."""
    rows = []
    servers = results["servers"]
    batched = [k for k in servers if k != "off"]

    def held(key: str) -> int:
        return streams_held(servers, key)

    if servers:
        best = max(servers, key=held)
        rows.append({
            "figure": "real-time streams held (100 ms chunks, p99 <= 100 ms, 0 errors, "
                      f">= {REALTIME_HELD:.0%} of real time)",
            "target": f">= {TARGETS['streams_held']}",
            "measured": "; ".join(f"{held(k)} ({k})" for k in servers),
            "met": held(best) >= TARGETS["streams_held"],
        })
    sat_off = servers.get("off", {}).get("saturation")
    if sat_off:
        parts, ratios = [], []
        for key in batched:
            sat = servers[key].get("saturation")
            if not sat:
                continue
            ratio = sat["frames_per_s"] / max(sat_off["frames_per_s"], 1e-9)
            ratios.append(ratio)
            paced = [
                (p_on["streams"], p_on["frames_per_s"] / max(p_off["frames_per_s"], 1e-9))
                for p_on, p_off in zip(servers[key].get("sweep", []), servers["off"].get("sweep", []), strict=False)
                if p_on["streams"] >= 64
            ]
            paced_text = ", ".join(f"N={n}: {r:.2f}x" for n, r in paced)
            parts.append(f"{key} / off: **{ratio:.2f}x** saturated ({SATURATION_STREAMS} streams, as fast as "
                         f"possible); paced: {paced_text}")
        if ratios:
            rows.append({
                "figure": "frames/s, batching on / off, >= 64 streams",
                "target": f">= {TARGETS['batching_speedup']:g}x",
                "measured": "; ".join(parts),
                "met": max(ratios) >= TARGETS["batching_speedup"],
            })
    served = results.get("served_vs_ort", {})
    if served:
        rows.append({
            "figure": "saturated served frames/s / in-process onnxruntime frames/s, same batch size",
            "target": f">= {TARGETS['served_vs_ort']:g}",
            "measured": "; ".join(
                f"{k}: **{v['ratio_1_thread']:.2f}** against ORT with 1 thread, as the server (B={v['batch']}), "
                f"{v['ratio_2_threads']:.2f} against ORT with 2 threads" for k, v in served.items()
            ),
            "met": max(v["ratio_1_thread"] for v in served.values()) >= TARGETS["served_vs_ort"],
        })
    overhead = results.get("unary", {}).get("overhead_ms", {})
    if overhead:
        rows.append({
            "figure": "Predict p50 - (echo RPC p50 + in-process ORT p50), B=1, T=100",
            "target": f"<= {TARGETS['predict_overhead_ms']:g} ms",
            "measured": ", ".join(f"{v:.3f} ms ({k})" for k, v in overhead.items()),
            "met": min(overhead.values()) <= TARGETS["predict_overhead_ms"],
        })
    return rows


def plot(results: dict[str, Any], img: Path) -> list[str]:
    """PNG plots; returns their paths relative to docs/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    servers = results["servers"]
    styles = {"off": ("tab:red", "o"), "on": ("tab:blue", "s"), "workers2": ("tab:green", "^")}
    written = []

    fig, ax = plt.subplots(figsize=(10, 4.6))
    for key, data in servers.items():
        sweep = data.get("sweep", [])
        if not sweep:
            continue
        color, marker = styles.get(key, ("gray", "x"))
        ns = [p["streams"] for p in sweep]
        ax.plot(ns, [max(p["latency_ms"]["p99"] or np.nan, 0.1) for p in sweep], marker=marker, color=color,
                label=f"{data['label']} p99")
        ax.plot(ns, [max(p["latency_ms"]["p50"] or np.nan, 0.1) for p in sweep], marker=marker, color=color,
                linestyle=":", alpha=0.6, label="p50")
    ax.axhline(LATENCY_TARGET_MS, color="black", linestyle="--", linewidth=1, label="target p99 100 ms")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent real-time streams (100 ms chunks)")
    ax.set_ylabel("chunk latency, ms (log)")
    ax.set_title("Chunk latency vs streams (reference LSTM, 2 cores)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(img / "bench-latency.png", dpi=110)
    plt.close(fig)
    written.append("img/bench-latency.png")

    fig, ax = plt.subplots(figsize=(10, 4.6))
    ns_all = sorted({p["streams"] for d in servers.values() for p in d.get("sweep", [])})
    ax.plot(ns_all, [n * 100 for n in ns_all], color="black", linestyle="--", linewidth=1,
            label="offered (real time)")
    for key, data in servers.items():
        sweep = data.get("sweep", [])
        if not sweep:
            continue
        color, marker = styles.get(key, ("gray", "x"))
        ax.plot([p["streams"] for p in sweep], [p["frames_per_s"] for p in sweep], marker=marker, color=color,
                label=data["label"])
        sat = data.get("saturation")
        if sat:
            ax.axhline(sat["frames_per_s"], color=color, linestyle=":", linewidth=1,
                       label=f"saturated ({SATURATION_STREAMS} streams, as fast as possible)")
    ax.set_xlabel("concurrent real-time streams (100 ms chunks)")
    ax.set_ylabel("frames/s served")
    ax.set_title("Throughput vs streams")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(img / "bench-throughput.png", dpi=110)
    plt.close(fig)
    written.append("img/bench-throughput.png")

    on = servers.get("on", {})
    points = [(f"N={p['streams']}", p["server"]) for p in on.get("sweep", [])]
    if on.get("saturation"):
        points.append(("saturated", on["saturation"]["server"]))
    if points:
        labels = list(points[0][1]["batch_histogram"].keys())
        fig, ax = plt.subplots(figsize=(7, 4.2))
        width = 0.8 / len(points)
        for i, (name, view) in enumerate(points):
            counts = np.array([view["batch_histogram"].get(lb, 0) for lb in labels], dtype=float)
            fractions = counts / counts.sum() if counts.sum() else counts
            ax.bar(np.arange(len(labels)) + i * width, fractions, width,
                   label=f"{name} (mean {view['mean_batch']})")
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels)
        ax.set_xlabel("batch size bucket (lstm_serve_batch_size, from /metrics)")
        ax.set_ylabel("fraction of onnxruntime calls")
        ax.set_title("Batch-size distribution, batching on (one process)")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(img / "bench-batch-sizes.png", dpi=110)
        plt.close(fig)
        written.append("img/bench-batch-sizes.png")
    return written


def _per_worker(view: dict[str, Any]) -> str:
    workers = [p["cpu_cores"] for p in view.get("processes", []) if p["role"] == "worker"]
    return " / ".join(f"{c:.2f}" for c in workers) if workers else "-"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_markdown(results: dict[str, Any], path: Path, images: list[str], analysis: str) -> None:
    """docs/benchmarks.md."""
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Capacity of lstm-serve (one process, and `--workers 2`) on the reference LSTM (I=40, H=256, "
        "2 layers, 12 outputs, random weights; `lstm-train reference`), measured with the load generator "
        "`lstm-client bench` on the same machine. Everything below comes from **one run** of `make bench` "
        f"(`.venv/bin/python scripts/bench.py{' --quick' if results['quick'] else ''}`, "
        f"{results['started_at']}, {results['elapsed_s']:.0f} s). The machine is small and shared, so "
        "absolute figures move from run to run; the ratios between configurations measured in the same run "
        "are what to compare. Raw figures: [`bench-results.json`](bench-results.json).",
        "",
        "## Machine",
        "",
        f"- {m['nproc']} cores, {m['cpu_model']}; load average at start {m['loadavg_at_start']} "
        "(other jobs share these cores)",
        f"- Python {m['python']}, grpcio {m.get('grpc')}, onnxruntime {m.get('onnxruntime')}, "
        f"numpy {m.get('numpy')}; {m['platform']}",
        "- server: `lstm-serve`, onnxruntime CPU provider, 1 intra-op thread per process (the default); "
        "one process, or with `--workers 2` a parent (metrics only) and two worker processes sharing the "
        "gRPC port (SO_REUSEPORT). Load generator: one `lstm-client bench` process per point, grpc.aio over "
        "min(N, 8) channels, each its own TCP connection",
        "",
        "## Against the targets",
        "",
        "| figure | target | measured | met |",
        "|---|---|---|---|",
    ]
    for row in results["targets"]:
        lines.append(f"| {row['figure']} | {row['target']} | {row['measured']} | {'yes' if row['met'] else '**no**'} |")
    lines += ["", "## Real-time streams (100 ms chunks = 10 frames at 100 Hz, paced in real time)", ""]
    lines += [
        "Latency is counted from the moment a chunk was due to the moment its result arrived at the client "
        "(so a late client shows up as latency too). *RT* is frames answered / (N x 100 frames/s). "
        "*srv CPU* and *cli CPU* are cores used by the server (the process started and all its descendants, "
        "from /proc) and by the load generator; *per worker* the cores of each worker process of `workers2` "
        "(both must be busy for the kernel to have spread the connections); *ORT busy* is the fraction of "
        "wall time the onnxruntime executor thread spent in calls (summed over the workers, so up to 2 for "
        "`workers2`); *batch* the mean sequences per call; *others CPU* the cores busy on this machine "
        "outside the server and the load generator (other jobs: the cores are shared), from /proc/stat.",
        "",
        "| config | N | frames/s | RT | p50 ms | p95 ms | p99 ms | errors | batch | ORT busy | srv CPU "
        "| per worker | cli CPU | others CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, data in results["servers"].items():
        runs = [*data.get("sweep", []), *([data["saturation"]] if data.get("saturation") else [])]
        for p in runs:
            s = p["server"]
            name = f"{p['streams']}" + ("" if p["realtime"] else " (as fast as possible)")
            errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "0"
            lines.append(
                f"| {key} | {name} | {p['frames_per_s']:.0f} | {p['realtime_fraction']:.3f} | "
                f"{_ms(p['latency_ms']['p50'])} | {_ms(p['latency_ms']['p95'])} | {_ms(p['latency_ms']['p99'])} | "
                f"{errors} | {s['mean_batch'] if s['mean_batch'] is not None else '-'} | "
                f"{s['compute_busy_fraction']} | {s['server_cpu_cores']} | {_per_worker(s)} | "
                f"{p['client_cpu_cores']} | {s['others_cores']} |"
            )
    lines += ["", "Configurations: " + "; ".join(f"`{k}` = {d['label']}" for k, d in results["servers"].items())
              + ".", ""]
    lines += [
        "**Why the batching delay is adaptive.** In the previous run of this benchmark (2026-11-27 09:36 UTC, "
        "before the change) a lone step waited out the whole `max_delay_ms` (2 ms) for company that never "
        "came: Predict p50 was 5.436 ms with batching on against 2.795 ms with `--max-delay-ms 0` "
        "(2.6 ms of it the delay), and one real-time stream's chunk p50 was 5.0 ms against 2.6 ms with "
        "batching off. The batcher now runs a step that finds the queue empty at once while recent batches "
        "average fewer than 1.5 steps, and applies `max_delay_ms` only under load; so the `--max-delay-ms 0` "
        "configuration of that run is no longer measured.",
        "",
    ]
    lines += ["## (a) In-process onnxruntime (the server's `ModelRuntime`, T=10 frames per call)", "",
              "| batch | ms/call (1 thread) | frames/s (1 thread) | ms/call (2 threads) | frames/s (2 threads) |",
              "|---|---|---|---|---|"]
    two = {r["batch"]: r for r in results["ort"]["threads_2"]}
    for r in results["ort"]["threads_1"]:
        t = two.get(r["batch"], {})
        lines.append(f"| {r['batch']} | {r['ms_per_call']:.3f} | {r['frames_per_s']:.0f} | "
                     f"{t.get('ms_per_call', float('nan')):.3f} | {t.get('frames_per_s', float('nan')):.0f} |")
    for key, served in results.get("served_vs_ort", {}).items():
        lines += ["", f"Saturated server `{key}` against onnxruntime at its mean batch size B={served['batch']}: "
                  f"{served['served_fps']:.0f} frames/s served ÷ {served['ort_fps_1_thread']:.0f} "
                  f"(1 thread) = **{served['ratio_1_thread']:.2f}**; ÷ {served['ort_fps_2_threads']:.0f} "
                  f"(2 threads) = {served['ratio_2_threads']:.2f}."]
        if key == "workers2":
            lines[-1] += (" The two workers run two 1-thread onnxruntime sessions side by side, so on 2 cores "
                          "their joint roof is up to twice the 1-thread figure: against that roof the ratio "
                          "would be up to half the 1-thread ratio.")
    if results.get("served_vs_ort"):
        lines += ["", "The 2-thread onnxruntime figures are the most sensitive to the other jobs on this "
                  "machine (a second intra-op thread needs a second free core), so they swing widely within "
                  "one run; compare the 1-thread ratios, which run as the server does."]
    u = results["unary"]
    lines += ["", "## Unary Predict overhead (B=1, T=100 frames; sequential calls, p50)", "",
              "| | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|",
              f"| echo RPC (bare grpc.aio server, bytes in/out, same sizes) | {u['echo_ms']['p50']:.3f} | "
              f"{u['echo_ms']['p95']:.3f} | {u['echo_ms']['p99']:.3f} |",
              f"| in-process onnxruntime | {u['ort_ms']['p50']:.3f} | {u['ort_ms']['p95']:.3f} | "
              f"{u['ort_ms']['p99']:.3f} |"]
    for key, p in u["predict_ms"].items():
        lines.append(f"| Predict, {key} | {p['p50']:.3f} | {p['p95']:.3f} | {p['p99']:.3f} |")
    lines += ["", "Overhead = Predict p50 - (echo p50 + ORT p50): "
              + ", ".join(f"**{v:.3f} ms** ({k})" for k, v in u["overhead_ms"].items()) + ".", ""]
    lines += ["## Plots", ""] + [f"![{Path(i).stem}]({i})" for i in images] + [""]
    lines += ["## Batch-size distribution (batching on, one process and `--workers 2` summed over both workers; "
              "onnxruntime calls per bucket, from `lstm_serve_batch_size_bucket`)", "",
              "| point | " + " | ".join(next(iter(_histograms(results)), ("", {}))[1].keys()) + " |",
              "|---|" + "---|" * len(next(iter(_histograms(results)), ("", {}))[1]), ]
    for name, hist in _histograms(results):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in hist.values()) + " |")
    lines += [""]
    prof = results.get("profile")
    lines += ["## What limits capacity", "", analysis, ""]
    if prof:
        lines += [f"### Profile of the saturated server (batching on, py-spy, {prof['samples']} non-idle samples "
                  "over all threads)", "",
                  "Samples by part of the server (innermost known frame decides):", "",
                  "| part | share of samples |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in prof["by_part"].items()]
        lines += ["", "Top functions by self time:", "", "| function | self |", "|---|---|"]
        lines += [f"| `{f}` | {v:.1%} |" for f, v in prof["top_self"]]
        lines += ["", f"Folded stacks (for speedscope or flamegraph.pl): `{prof['folded']}`.", ""]
    lines += ["## Reproduce", "", "```sh",
              "make bench                                   # = .venv/bin/python scripts/bench.py",
              ".venv/bin/python scripts/bench.py --quick    # a one-minute smoke run",
              "# one point by hand:",
              ".venv/bin/lstm-train reference --out .bench/models",
              ".venv/bin/lstm-serve --models .bench/models --port 50051 --metrics-port 9090 &",
              ".venv/bin/lstm-client bench reference --streams 256 --duration 6 --chunk-frames 10 --realtime",
              "# (d): .venv/bin/lstm-serve --models .bench/models --port 50051 --metrics-port 9090 --workers 2",
              "```", "", "Commands of every point (HOST:PORT is the server started for its configuration):", ""]
    for key, data in results["servers"].items():
        lines.append(f"- `{key}`: `{' '.join(data['server_command'])}`")
    first = next(iter(results["servers"].values()))
    if first.get("sweep"):
        lines.append(f"- load, e.g.: `{first['sweep'][-1]['command']}`")
        if first.get("saturation"):
            lines.append(f"- saturation: `{first['saturation']['command']}`")
    lines.append("")
    path.write_text("\n".join(lines))


def write_docs(results: dict[str, Any], docs: Path) -> None:
    """The results JSON, the plots and the markdown."""
    docs.mkdir(parents=True, exist_ok=True)
    images = plot(results, docs / "img")
    (docs / "bench-results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(results, docs / "benchmarks.md", images, analysis_text(results))


def _histograms(results: dict[str, Any]) -> list[tuple[str, dict[str, int]]]:
    out = []
    for key in ("on", "workers2"):
        data = results["servers"].get(key, {})
        out += [(f"{key}, N={p['streams']}", p["server"]["batch_histogram"]) for p in data.get("sweep", [])]
        if data.get("saturation"):
            out.append((f"{key}, saturated", data["saturation"]["server"]["batch_histogram"]))
    return out


def analysis_text(results: dict[str, Any]) -> str:
    """What bounds capacity, read off this run's figures (regenerated with every run)."""
    servers = results["servers"]
    parts = []
    sat_on, sat_off = servers.get("on", {}).get("saturation"), servers.get("off", {}).get("saturation")
    if sat_on and sat_off:
        s_on, s_off = sat_on["server"], sat_off["server"]

        def per_chunk_us(point: dict[str, Any]) -> float:
            chunks = max(1.0, point["server"]["batches"] * (point["server"]["mean_batch"] or 1.0))
            return 1e6 * point["server"]["server_cpu_s"] / chunks

        parts.append(
            f"- **CPU share.** Saturated with batching on, the server used {s_on['server_cpu_cores']} cores, the "
            f"load generator {sat_on['client_cpu_cores']}, and other jobs on the machine "
            f"{s_on['others_cores']} (machine busy {s_on['machine_busy_cores']} of "
            f"{results['machine']['nproc']} cores). Whatever the other jobs take comes straight off the server's "
            "capacity; compare the configurations with each other, within this run."
        )
        parts.append(
            f"- **Per-chunk server cost.** The server spent about {per_chunk_us(sat_on):.0f} µs of CPU per "
            f"100 ms chunk with batching on (mean batch {s_on['mean_batch']}, {s_on['mean_compute_ms']} ms per "
            f"onnxruntime call, executor busy {s_on['compute_busy_fraction']:.0%} of the time) and "
            f"{per_chunk_us(sat_off):.0f} µs with it off (one sequence per call, {s_off['mean_compute_ms']} ms "
            f"per call, executor busy {s_off['compute_busy_fraction']:.0%}). Batching divides the onnxruntime "
            "cost per chunk; what it cannot divide is the per-message gRPC and Python work on the event loop "
            "(receive, decode, session bookkeeping, encode, send), which stays per chunk."
        )
        parts.append(
            "- **One Python process.** The event loop (gRPC, conversion, stream logic) runs on one thread "
            "under the GIL, and onnxruntime runs on one executor thread that releases it. So one process can "
            "use at most about two cores, and the event-loop share grows with streams while the onnxruntime "
            "share shrinks with batching. Past that point more streams only add latency (see the plots)."
        )
        sat_w = servers.get("workers2", {}).get("saturation")
        if sat_w:
            parts.append(workers_text(results, sat_on, sat_w))
    prof = results.get("profile")
    if prof:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in list(prof["by_part"].items())[:5])
        parts.append(
            f"- **Profile** (py-spy, saturated, batching on, all threads): {shares}. grpc.aio's Cython callbacks "
            "run inside asyncio's `Handle._run`, so py-spy (without `--native`) files the transport under the "
            "event loop."
        )
    unary = results.get("unary", {})
    predict = unary.get("predict_ms", {})
    if predict:
        text = (
            f"- **Unary Predict.** The echo floor is {unary['echo_ms']['p50']:.3f} ms and onnxruntime "
            f"{unary['ort_ms']['p50']:.3f} ms (B=1, T=100). Predict p50 is "
            + ", ".join(f"{v['p50']:.3f} ms ({k})" for k, v in predict.items())
            + ". The rest is the server's per-call work (protobuf ↔ numpy, validation, the batcher hop, "
            "metrics)"
        )
        if "on" in predict and "off" in predict:
            text += (
                f". With the adaptive delay a lone call no longer waits for company: Predict with batching on "
                f"is {predict['on']['p50'] - predict['off']['p50']:+.3f} ms from batching off (it was "
                "+2.5 ms with the fixed 2 ms delay, see above)"
                + ("; a difference this small is within this machine's run-to-run noise"
                   if abs(predict['on']['p50'] - predict['off']['p50']) < 0.5 else "")
            )
        parts.append(text + ".")
    return "\n".join(parts)


def workers_text(results: dict[str, Any], sat_on: dict[str, Any], sat_w: dict[str, Any]) -> str:
    """What ``--workers 2`` did, against one process, in this run."""
    servers = results["servers"]
    s_on, s_w = sat_on["server"], sat_w["server"]
    gain = sat_w["frames_per_s"] / max(sat_on["frames_per_s"], 1e-9)
    workers = [p["cpu_cores"] for p in s_w.get("processes", []) if p["role"] == "worker"]
    parent = next((p["cpu_cores"] for p in s_w.get("processes", []) if p["role"] == "server"), 0.0)
    paced_w = [p for p in servers["workers2"].get("sweep", []) if p["streams"] > 1]
    spread = [
        min(c for c in (q["cpu_cores"] for q in p["server"].get("processes", []) if q["role"] == "worker"))
        for p in paced_w
        if any(q["role"] == "worker" for q in p["server"].get("processes", []))
    ]
    both_busy = bool(spread) and all(c > 0.01 for c in spread)
    if gain >= 1.1:
        verdict = f"a second process helps: {gain:.2f}x the frames/s of one process"
    elif gain > 0.9:
        verdict = (f"a second process does not measurably help: {gain:.2f}x the frames/s of one process, "
                   "within the noise of this machine")
    else:
        verdict = f"a second process costs throughput: {gain:.2f}x the frames/s of one process"
    last_on = (servers.get("on", {}).get("sweep") or [None])[-1]
    last_w = (servers["workers2"].get("sweep") or [None])[-1]
    paced = ""
    if last_on and last_w:
        paced = (
            f" At N={last_w['streams']} paced streams, workers2 served {last_w['frames_per_s']:.0f} frames/s "
            f"(RT {last_w['realtime_fraction']:.3f}, p99 {_ms(last_w['latency_ms']['p99'])} ms) against "
            f"{last_on['frames_per_s']:.0f} (RT {last_on['realtime_fraction']:.3f}, p99 "
            f"{_ms(last_on['latency_ms']['p99'])} ms) for one process."
        )
    return (
        f"- **`--workers 2`.** Saturated, {verdict} ({sat_w['frames_per_s']:.0f} against "
        f"{sat_on['frames_per_s']:.0f}). The server as a whole used {s_w['server_cpu_cores']} cores "
        f"(workers {' / '.join(f'{c:.2f}' for c in workers)}, parent {parent:.2f}) against "
        f"{s_on['server_cpu_cores']} for one process; the load generator {sat_w['client_cpu_cores']} and "
        f"other jobs {s_w['others_cores']} (machine busy {s_w['machine_busy_cores']} of "
        f"{results['machine']['nproc']} cores). Each worker sees only its own connections' streams, so batches "
        f"are smaller (mean {s_w['mean_batch']} against {s_on['mean_batch']}). "
        + ("Both workers carried traffic at every paced point with more than one stream (the kernel spread "
           "the load generator's min(N, 8) connections over them; least busy worker "
           f"{min(spread):.2f} to {max(spread):.2f} cores)."
           if both_busy else
           "At some paced point one worker carried no traffic: the kernel hashes connections, not streams, "
           "and with few connections it can put them all on one worker.")
        + paced
        + efficiency_text(results, sat_on, sat_w, gain)
    )


def efficiency_text(results: dict[str, Any], sat_on: dict[str, Any], sat_w: dict[str, Any], gain: float) -> str:
    """Where a second process's frames/s come from: more CPU, or less CPU per frame."""
    servers = results["servers"]
    s_on, s_w = sat_on["server"], sat_w["server"]
    eff_on = sat_on["frames_per_s"] / max(s_on["server_cpu_cores"], 1e-9)
    eff_w = sat_w["frames_per_s"] / max(s_w["server_cpu_cores"], 1e-9)
    text = (
        f" Per server core, one process served {eff_on:.0f} frames/s and two {eff_w:.0f} "
        f"({eff_w / eff_on:.2f}x): "
        + ("the workers' smaller batches cost CPU per frame, " if eff_w < eff_on * 0.97 else "about the same, ")
    )
    if gain >= 1.1:
        text += (
            "so the gain comes from using more of the machine: two event loops (two GILs) can take CPU that "
            "one loop cannot, where the load generator and the other jobs leave some. The other jobs took "
            f"{s_on['others_cores']} cores during the one-process saturated run and {s_w['others_cores']} "
            "during this one, so part of the difference is the background, not the configuration."
        )
    else:
        text += (
            "and on 2 cores shared with the load generator and other jobs there is no idle core for the "
            "second process to take."
        )
    n_on, n_w = streams_held(servers, "on"), streams_held(servers, "workers2")
    cpu_pairs = [
        (p_on["streams"], p_on["server"]["server_cpu_cores"], p_w["server"]["server_cpu_cores"])
        for p_on, p_w in zip(servers["on"].get("sweep", []), servers["workers2"].get("sweep", []), strict=False)
        if p_on["streams"] >= 64 and p_on["realtime_fraction"] >= REALTIME_HELD
        and p_w["realtime_fraction"] >= REALTIME_HELD
    ]
    text += (
        f" Paced, the real-time streams held are {n_w} with two processes against {n_on} with one"
        + ("; at the same paced load the two processes spent more server CPU ("
           + ", ".join(f"N={n}: {w:.2f} against {o:.2f} cores" for n, o, w in cpu_pairs) + ")"
           if cpu_pairs and all(w > o for _, o, w in cpu_pairs) else "")
        + ". With the load generator on the same 2 cores, a second process buys headroom at saturation, "
        "not more real-time streams, in this run (the sweep has no point between "
        f"{n_on} and the next N, so a gain smaller than that step would not show)."
        if n_w <= n_on else
        f" Paced, two processes held {n_w} real-time streams against {n_on} for one."
    )
    return text


# -------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the docs."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer points, shorter")
    parser.add_argument("--duration", type=float, help="measured seconds per point (default 6, quick 2)")
    parser.add_argument("--streams", help="comma list of stream counts (default 1,16,64,128,256,384)")
    parser.add_argument("--models", type=Path, default=WORK / "models", help="model repository (default .bench/models)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where to write (default docs/)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: rewrite the markdown and plots from a results JSON")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server is not None:
        asyncio.run(_serve_echo(args.echo_server))
        return 0
    if args.render is not None:
        rendered: dict[str, Any] = json.loads(args.render.read_text())
        rendered["targets"] = evaluate(rendered)
        write_docs(rendered, args.docs)
        return 0

    started = time.perf_counter()
    quick = args.quick
    duration = args.duration or (2.0 if quick else 6.0)
    warmup = 0.5 if quick else 1.0
    streams = [int(n) for n in args.streams.split(",")] if args.streams else (QUICK_STREAMS if quick else FULL_STREAMS)
    configs = SERVER_CONFIGS
    WORK.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "quick": quick,
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "model": {"name": MODEL, "input_dim": 40, "hidden": 256, "layers": 2, "outputs": 12, "cell": "lstm"},
        "chunk_frames": CHUNK_FRAMES,
        "duration_s": duration,
        "warmup_s": warmup,
        "saturation_streams": SATURATION_STREAMS,
        "targets_wanted": TARGETS,
        "multi_process": "lstm-serve --workers 2 (configuration workers2)",
    }
    package = ensure_model(args.models)

    log("(a) in-process onnxruntime")
    ort_seconds = 0.2 if quick else 0.6
    rt1, rt2 = load_runtime(package, 1), load_runtime(package, 2)
    batches = ORT_BATCHES if not quick else [1, 16, 64]
    results["ort"] = {
        "threads_1": [ort_throughput(rt1, b, CHUNK_FRAMES, ort_seconds) for b in batches],
        "threads_2": [ort_throughput(rt2, b, CHUNK_FRAMES, ort_seconds) for b in batches],
    }
    unary_calls = 300 if quick else 1500
    results["unary"] = {"calls": unary_calls, "ort_ms": ort_p50(rt1, 100, unary_calls)}
    feature_dim = rt1.manifest.input.feature_dim
    output_dim = rt1.manifest.output.dim
    request = predict_request(feature_dim, 100)

    log("echo RPC (transport floor)")
    with echo_server() as echo:
        results["unary"]["echo_ms"] = unary_p50(
            echo.target, ECHO_METHOD, echo_payload(request, output_dim, 100), unary_calls, echo=True
        )
    results["unary"]["predict_ms"] = {}
    results["servers"] = {}
    profile_path = WORK / "profile-saturated.folded"
    # All configurations run at once (an idle server costs nothing) and each point is measured for every
    # configuration back to back, so that the other jobs on this shared machine weigh on all of them alike.
    with contextlib.ExitStack() as stack:
        running: dict[str, Server] = {}
        for config in configs:
            log(f"starting server {config.key}: {config.label}")
            running[config.key] = stack.enter_context(lstm_server(args.models, config))
            results["servers"][config.key] = {
                "label": config.label,
                "server_command": ["lstm-serve", "--host", "127.0.0.1", "--port", "P", "--metrics-port", "M",
                                   "--models", str(args.models.relative_to(REPO)) if args.models.is_relative_to(REPO)
                                   else str(args.models), *config.args],
                "sweep": [],
            }
        for key, server in running.items():
            log(f"unary Predict p50, {key}")
            results["unary"]["predict_ms"][key] = unary_p50(server.target, "", request, unary_calls, echo=False)
        for n in streams:
            for key, server in running.items():
                point = run_load(server, n, duration, True, warmup)
                results["servers"][key]["sweep"].append(point)
                log(f"  {key:<10} N={n:<4} {point['frames_per_s']:>8.0f} frames/s  "
                    f"RT {point['realtime_fraction']:.3f}  p99 {point['latency_ms']['p99']} ms  "
                    f"errors {point['error_count']}  batch {point['server']['mean_batch']}  "
                    f"srv {point['server']['server_cpu_cores']} (workers {_per_worker(point['server'])}) "
                    f"others {point['server']['others_cores']} cores")
        for key, server in running.items():
            saturation = run_load(server, SATURATION_STREAMS, duration, False, warmup)
            results["servers"][key]["saturation"] = saturation
            log(f"  {key:<10} saturated: {saturation['frames_per_s']:.0f} frames/s  "
                f"p99 {saturation['latency_ms']['p99']} ms  batch {saturation['server']['mean_batch']}  "
                f"srv {saturation['server']['server_cpu_cores']} (workers {_per_worker(saturation['server'])}) "
                f"cli {saturation['client_cpu_cores']} "
                f"others {saturation['server']['others_cores']} cores")
        if "on" in running and not args.no_profile:
            # a separate run: py-spy's own CPU would otherwise weigh on the saturated figure above
            log("  profiling the saturated server (batching on) with py-spy")
            _, results["profile"] = profile_during_load(
                running["on"], SATURATION_STREAMS, duration, warmup, profile_path
            )

    u = results["unary"]
    u["overhead_ms"] = {
        k: round(p["p50"] - (u["echo_ms"]["p50"] + u["ort_ms"]["p50"]), 4) for k, p in u["predict_ms"].items()
    }
    results["served_vs_ort"] = {}
    for key in ("on", "workers2"):
        sat = results["servers"].get(key, {}).get("saturation")
        if not (sat and sat["server"]["mean_batch"]):
            continue
        batch = max(1, round(sat["server"]["mean_batch"]))
        log(f"(a) onnxruntime at the saturated mean batch size of {key}, B={batch}")
        o1 = ort_throughput(rt1, batch, CHUNK_FRAMES, ort_seconds * 2)
        o2 = ort_throughput(rt2, batch, CHUNK_FRAMES, ort_seconds * 2)
        results["served_vs_ort"][key] = {
            "batch": batch,
            "served_fps": sat["frames_per_s"],
            "ort_fps_1_thread": o1["frames_per_s"],
            "ort_fps_2_threads": o2["frames_per_s"],
            "ratio_1_thread": round(sat["frames_per_s"] / o1["frames_per_s"], 3),
            "ratio_2_threads": round(sat["frames_per_s"] / o2["frames_per_s"], 3),
        }
    results["targets"] = evaluate(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)

    write_docs(results, args.docs)
    log(f"done in {results['elapsed_s']:.0f} s: {args.docs / 'benchmarks.md'}")
    for row in results["targets"]:
        measured = row["measured"].replace("**", "")
        log(f"  {'MET ' if row['met'] else 'MISS'} {row['figure']}: {measured} (target {row['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
