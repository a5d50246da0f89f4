"""A py-spy profile of the saturated server, summarized by part of the server."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from lstm_client.launch import ServerProcess

from . import BIN, REPO, log
from .measure import run_load

# the innermost frame that matches decides a sample's part (first match in this order)
PROFILE_BUCKETS = [
    ("onnxruntime call (executor thread)", ("runtime.py:", "_run_group")),
    ("batcher loop (collect, split, resolve futures)", ("batching.py:", "lanes.py:", "stacking.py:")),
    ("protobuf <-> domain conversion", ("convert.py:", "tensors.py:")),
    ("session step and stream logic", ("step.py:", "streaming.py:", "service.py:", "facade.py:", "state.py:",
                                       "sessions.py:", "session_store.py:", "session_registry.py:", "inbox.py:",
                                       "domain.py:", "predict.py:")),
    ("servicer / interceptor", ("servicer.py:", "interceptor.py:", "status.py:")),
    ("grpc.aio machinery (cygrpc, polling)", ("grpc/", "cygrpc", "_poll_wrapper", "aio/")),
    ("asyncio loop + grpc.aio Cython callbacks (native, shown as Handle._run)", ("asyncio/",)),
    ("metrics (prometheus_client)", ("prometheus_client",)),
]


def py_spy() -> str | None:
    """The py-spy executable, when installed."""
    return shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")


def profile_during_load(
    server: ServerProcess, streams: int, duration: float, warmup: float, out: Path,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A saturation run with py-spy sampling the server (when py-spy is installed)."""
    exe = py_spy()
    if exe is None:
        log("py-spy not installed: no profile (pip install py-spy into .venv)")
        return run_load(server, streams, duration, False, warmup), None
    cmd = [exe, "record", "--pid", str(server.process.pid), "--duration", str(max(1, int(duration))),
           "--rate", "200", "--nonblocking", "--format", "raw", "--output", str(out)]
    spies: list[subprocess.Popen[bytes]] = []
    timer = threading.Timer(warmup + 0.5, lambda: spies.append(
        subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    timer.start()
    report = run_load(server, streams, duration, False, warmup)
    timer.join()
    if not spies:
        return report, None
    spy = spies[0]
    _, err = spy.communicate(timeout=60)
    if spy.returncode != 0 or not out.is_file():
        log(f"py-spy failed: {err.decode(errors='replace')[-500:]}")
        return report, None
    return report, summarize_profile(out)


def summarize_profile(folded: Path) -> dict[str, Any]:
    """Self and inclusive shares of the sampled stacks (py-spy raw, non-idle samples)."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        for frame in set(frames):
            inclusive[frame] += count
        leaf[frames[-1]] += count
        for frame in reversed(frames):
            hit = next((name for name, keys in PROFILE_BUCKETS if any(k in frame for k in keys)), None)
            if hit is not None:
                buckets[hit] += count
                break
        else:
            buckets["other"] += count
    if not total:
        return {"samples": 0, "by_part": {}, "top_self": [], "top_inclusive": [], "folded": _shown(folded)}
    return {
        "samples": total,
        "by_part": {k: round(v / total, 3) for k, v in buckets.most_common()},
        "top_self": [(f, round(c / total, 3)) for f, c in leaf.most_common(12)],
        "top_inclusive": [
            (f, round(c / total, 3)) for f, c in inclusive.most_common(40) if not f.startswith(("process ", "thread "))
        ][:20],
        "folded": _shown(folded),
    }


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
