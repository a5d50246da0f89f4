"""What the benchmark reads: CPU time from /proc, in-process onnxruntime, load runs
against a server (with the server's own view of them from /metrics), unary latency.

CPU time per message is the robust figure on a shared machine; wall-clock throughput
is kept beside it. ``run_load`` records, per point, the server's CPU (the process
started and every descendant) and, for the process started, its CPU split by thread
(``thread_split``): the event loop (the main thread), threads whose OS name starts with
``onnxruntime`` (the executor, once the server names it) and the rest.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from lstm_client.launch import ServerProcess, scrape

from . import BIN, CHUNK_FRAMES, MODEL, REPO, log

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ /proc CPU
def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc ``stat`` file after the command name (field 3 onwards), or None when gone."""
    try:
        return path.read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc/PID/stat."""
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    if fields is None:
        raise OSError(f"no process {pid}")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS in /proc/PID/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    """How many file descriptors a process holds open (entries of /proc/PID/fd)."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_cpu_s(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of each live thread of ``pid`` with its OS name (comm), by thread id."""
    out: dict[int, tuple[str, float]] = {}
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, IndexError):
                text = (task / "stat").read_text()
                name = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                out[int(task.name)] = (name, (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


def thread_role(pid: int, tid: int, name: str) -> str:
    """``event_loop`` for the main thread, ``onnxruntime`` for a thread so named, else ``other``."""
    if tid == pid:
        return "event_loop"
    if name.startswith("onnxruntime"):
        return "onnxruntime"
    return "other"


def thread_split(
    pid: int, before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]],
) -> dict[str, float]:
    """CPU seconds between two ``thread_cpu_s`` readings, summed by ``thread_role``."""
    split: dict[str, float] = defaultdict(float)
    for tid, (name, cpu) in after.items():
        split[thread_role(pid, tid, name)] += cpu - before.get(tid, (name, 0.0))[1]
    return {role: round(split.get(role, 0.0), 4) for role in ("event_loop", "onnxruntime", "other")}


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren, ...), from /proc/*/stat ppid."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry / "stat")
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
    server, so deltas between two readings are exact for them."""
    out = {}
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError):
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
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    """p50/p95/p99 of seconds, in ms."""
    p50, p95, p99 = np.percentile(np.asarray(samples) * 1000.0, [50, 95, 99])
    return {"p50": round(float(p50), 4), "p95": round(float(p95), 4), "p99": round(float(p99), 4)}


# ------------------------------------------------------------------------------- machine
def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """The checked-out commit and whether the working tree differs from it."""
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    return {
        "commit": commit or None,
        "short": commit[:7] or None,
        "subject": git("log", "-1", "--format=%s") or None,
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def machine() -> dict[str, Any]:
    """What this run ran on, read now (nothing here is assumed)."""
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
        "cpu_count": os.cpu_count(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": git_commit(),
        **versions,
    }


# -------------------------------------------------------------------------------- model
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


# --------------------------------------------------------------------------- in-process
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


# ----------------------------------------------------------------------- server's view
def metric_delta(before: dict[str, float], after: dict[str, float], name: str) -> dict[str, float]:
    """Per-``le`` increase of every sample of ``name`` (summed over the other labels)."""
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


STEPS_METRIC = "lstm_serve_batch_size_sum"
"""The sequences lstm-serve ran: one per stream chunk or Predict call."""


def server_view(
    before: dict[str, float], after: dict[str, float], cpu_s: float, wall_s: float, busy_s: float,
    process_cpu: list[dict[str, Any]] | None = None, threads: dict[str, float] | None = None,
    steps_metric: str = STEPS_METRIC, ort_thread_s: float | None = None,
) -> dict[str, Any]:
    """Batch-size distribution, compute and queue time, and CPU of one measured point.

    ``steps`` is the number of messages the server answered (``steps_metric``); CPU per
    chunk is server CPU over steps, and ``non_ort_us_per_chunk`` the same without
    ``ort_thread_s``, the CPU of the threads named ``onnxruntime`` in every server
    process (the executor: stacking, the onnxruntime call, its metrics)."""
    buckets = metric_delta(before, after, "lstm_serve_batch_size_bucket")
    count = metric_delta(before, after, "lstm_serve_batch_size_count").get("", 0.0)
    steps = metric_delta(before, after, steps_metric).get("", 0.0)
    frames = metric_delta(before, after, "lstm_serve_frames_total").get("", 0.0)
    compute_s = metric_delta(before, after, "lstm_serve_compute_seconds_sum").get("", 0.0)
    queue_n = metric_delta(before, after, "lstm_serve_queue_wait_seconds_count").get("", 0.0)
    queue_s = metric_delta(before, after, "lstm_serve_queue_wait_seconds_sum").get("", 0.0)
    store_ops = metric_delta(before, after, "lstm_serve_store_op_seconds_count").get("", 0.0)
    edges = sorted((float(le), n) for le, n in buckets.items() if le and le != "+Inf")
    histogram, previous = {}, 0.0
    for edge, cumulative in edges:
        histogram[f"<={edge:g}"] = round(cumulative - previous)
        previous = cumulative

    def per_step(seconds: float) -> float | None:
        return round(1e6 * seconds / steps, 2) if steps else None

    return {
        "batches": int(count),
        "steps": int(steps),
        "frames": int(frames),
        "mean_batch": round(steps / count, 2) if count else None,
        "batch_histogram": histogram,
        "compute_s": round(compute_s, 3),
        "compute_busy_fraction": round(compute_s / wall_s, 3) if wall_s else None,
        "mean_compute_ms": round(1000 * compute_s / count, 3) if count else None,
        "mean_queue_wait_ms": round(1000 * queue_s / queue_n, 3) if queue_n else None,
        "server_cpu_s": round(cpu_s, 3),
        "server_cpu_cores": round(cpu_s / wall_s, 3) if wall_s else None,
        "cpu_us_per_chunk": per_step(cpu_s),
        "store_ops": int(store_ops),
        "store_ops_per_chunk": round(store_ops / steps, 4) if steps else None,
        "ort_thread_us_per_chunk": per_step(ort_thread_s) if ort_thread_s is not None else None,
        "non_ort_us_per_chunk": per_step(cpu_s - ort_thread_s) if ort_thread_s is not None else None,
        "compute_us_per_chunk": per_step(compute_s),
        # the process started, by thread role (event loop, onnxruntime-named threads, the rest)
        "threads_cpu_s": threads or {},
        "threads_us_per_chunk": {k: per_step(v) for k, v in (threads or {}).items()},
        # each server process: the one started first, then its descendants (the workers)
        "processes": process_cpu or [],
        "machine_busy_cores": round(busy_s / wall_s, 3) if wall_s else None,
    }


def run_load(
    server: ServerProcess, streams: int, duration: float, realtime: bool, warmup: float,
    chunk_frames: int = CHUNK_FRAMES, model: str = MODEL, extra: tuple[str, ...] = (),
    steps_metric: str = STEPS_METRIC,
) -> dict[str, Any]:
    """One ``lstm-client bench`` run in its own process, with the server's view of it
    (``extra``: more ``bench`` flags, e.g. ``--audio``; ``steps_metric``: what counts the
    server's answered messages)."""
    cmd = [
        str(BIN / "lstm-client"), "--target", server.target, "bench", model, "--streams", str(streams),
        "--duration", str(duration), "--chunk-frames", str(chunk_frames), "--warmup", str(warmup), "--json",
        *extra,
    ]
    if realtime:
        cmd.append("--realtime")
    root = server.process.pid
    timeout = duration + warmup + 120
    client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the window opens once the server sees traffic plus the warm-up, so that neither the
        # client's start-up (an idle server) nor its warm-up weighs on the CPU per chunk
        wait_for_traffic(server, client, time.monotonic() + timeout, steps_metric)
        time.sleep(warmup)
        before = scrape(server.metrics_url)
        threads0 = thread_cpu_s(root)
        cpu0, busy0, wall0 = tree_cpu_s(root), machine_busy_s(), time.perf_counter()
        ort0 = {p: thread_cpu_s(p) for p in cpu0}
        stdout, stderr = client.communicate(timeout=timeout)
        cpu1, busy1, wall1 = tree_cpu_s(root), machine_busy_s(), time.perf_counter()
        ort1 = {p: thread_cpu_s(p) for p in cpu1}
        threads1 = thread_cpu_s(root)
        after = scrape(server.metrics_url)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    done = subprocess.CompletedProcess(cmd, client.returncode, stdout, stderr)
    if not done.stdout.strip():
        raise RuntimeError(f"lstm-client bench failed ({done.returncode}): {done.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(done.stdout)
    report.pop("config", None)
    wall = wall1 - wall0
    per_process = {p: cpu1[p] - cpu0.get(p, 0.0) for p in cpu1}
    processes = [
        {"pid": p, "role": process_role(p, root), "cpu_cores": round(c / wall, 3)} for p, c in per_process.items()
    ]
    view = server_view(before, after, sum(per_process.values()), wall, busy1 - busy0, processes,
                       thread_split(root, threads0, threads1), steps_metric,
                       sum(thread_split(p, ort0.get(p, {}), ort1[p])["onnxruntime"] for p in ort1))
    # what neither the server nor the load generator used: other jobs on the machine (and the CLI's start-up)
    client_share = report["client_cpu_s"] / wall
    view["others_cores"] = round(max(0.0, view["machine_busy_cores"] - view["server_cpu_cores"] - client_share), 3)
    report["server"] = view
    report["command"] = " ".join(["lstm-client", *cmd[1:]]).replace(server.target, "HOST:PORT")
    return report


def wait_for_traffic(
    server: ServerProcess, client: subprocess.Popen[str], deadline: float, steps_metric: str = STEPS_METRIC,
) -> None:
    """Return once the server has answered a message (``steps_metric`` grew), the client
    exited, or ``deadline`` passed."""
    def steps() -> float:
        return metric_delta({}, scrape(server.metrics_url), steps_metric).get("", 0.0)

    start = steps()
    while client.poll() is None and time.monotonic() < deadline and steps() == start:
        time.sleep(0.02)


# -------------------------------------------------------------------------------- unary
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
