"""Scaling with cores: ``--workers 1`` against ``--workers 2``, both on a shared Redis
session store (what makes several workers serve one session population), in one run.

For each worker count: paced streams of the ``reference`` model (10-frame chunks at
100 Hz) at a few counts and one saturation run, with server CPU per chunk (every worker
process, from /proc), the onnxruntime threads' share, and redis-server's CPU per chunk
over the same run. Flat CPU per chunk from one worker to two means the second core is
used at the same cost per message; the real-time streams held say what it buys. On
the same redis-server it then measures what a session and a message weigh
(:mod:`footprint`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import LATENCY_TARGET_MS, REALTIME_HELD, REPO, SATURATION_STREAMS, log
from .floor import PREDICT_CALLERS, cost_row, table_head
from .footprint import measure_footprint
from .measure import process_cpu_s, run_load
from .servers import ServerCode, ServerConfig, current_code, lstm_server
from .sessions_bench import redis

WORKERS = (1, 2)
STREAMS = [64, 128, 256]
QUICK_STREAMS = [64]


def progress_points(quick: bool) -> int:
    """The progress-bar points :func:`measure_scaling` steps through."""
    return len(WORKERS) * (len(QUICK_STREAMS if quick else STREAMS) + 2)


def _held(point: dict[str, Any]) -> bool:
    return (point["p99_ms"] is not None and point["p99_ms"] <= LATENCY_TARGET_MS and not point["errors"]
            and (point["realtime_fraction"] or 0) >= REALTIME_HELD)


def measure_scaling(
    models: Path, duration: float, warmup: float, quick: bool, step: Callable[[], object],
) -> dict[str, Any]:
    """Both worker counts on one redis-server, the points interleaved."""
    streams = QUICK_STREAMS if quick else STREAMS
    out: dict[str, Any] = {"streams": streams, "duration_s": duration, "by_workers": {}}
    with redis() as (port, redis_pid), contextlib.ExitStack() as stack:
        here = current_code()
        code = ServerCode(here.key, here.root, here.commit,
                          {"LSTM_SERVE_SESSIONS__STORE_URL": f"redis://127.0.0.1:{port}/0"})
        servers = {
            n: stack.enter_context(lstm_server(models, ServerConfig(f"redis-workers{n}", f"--workers {n}, Redis",
                                                                    ("--workers", str(n))), code))
            for n in WORKERS
        }
        points: dict[int, list[dict[str, Any]]] = {n: [] for n in WORKERS}
        loads = [(n, True) for n in streams] + [(SATURATION_STREAMS, False)]
        for count, realtime in loads:
            for workers, server in servers.items():
                redis0 = process_cpu_s(redis_pid)
                point = cost_row(run_load(server, count, duration, realtime, warmup))
                chunks = point["frames_per_s"] * duration / 10 if point["frames_per_s"] else 0
                point["redis_us_per_chunk"] = (round(1e6 * (process_cpu_s(redis_pid) - redis0) / chunks, 1)
                                               if chunks else None)
                point["held"] = realtime and _held(point)
                points[workers].append(point)
                log(f"  --workers {workers} + Redis, N={count}{'' if realtime else ' (as fast as possible)'}: "
                    f"RT {point['realtime_fraction']} p99 {point['p99_ms']} ms, CPU {point['cpu_us_per_chunk']} "
                    f"µs/chunk, Redis {point['redis_us_per_chunk']} µs/chunk")
                step()
        predict = {}
        for workers, server in servers.items():
            redis0 = process_cpu_s(redis_pid)
            point = cost_row(run_load(server, PREDICT_CALLERS, duration, False, warmup,
                                      extra=("--mode", "predict", "--session")))
            calls = point["frames_per_s"] * duration / 10 if point["frames_per_s"] else 0
            point["redis_us_per_chunk"] = (round(1e6 * (process_cpu_s(redis_pid) - redis0) / calls, 1)
                                           if calls else None)
            predict[str(workers)] = point
            log(f"  --workers {workers} + Redis, stateful Predict x{PREDICT_CALLERS}: "
                f"{point['frames_per_s'] / 10:.0f} calls/s, CPU {point['cpu_us_per_chunk']} µs/call, "
                f"{point['store_ops_per_chunk']} store ops/call")
            step()
        out["stateful_predict"] = predict
        out["footprint"] = measure_footprint(models / "reference" / "1", port)
    for workers, rows in points.items():
        held = [p["streams"] for p in rows if p["held"]]
        out["by_workers"][str(workers)] = {"points": rows, "streams_held": max(held) if held else 0}
    out["server_command"] = (f"LSTM_SERVE_SESSIONS__STORE_URL=redis://127.0.0.1:PORT/0 lstm-serve --models "
                             f"{models.relative_to(REPO) if models.is_relative_to(REPO) else models} --workers N")
    return out


def lines(results: dict[str, Any]) -> list[str]:
    """The scaling section of the generated block."""
    scaling = results.get("scaling")
    if not scaling:
        return []
    out = [
        "## Scaling with cores: --workers 1 and 2 on a shared Redis store", "",
        f"`{scaling['server_command']}`; the reference model, 10-frame chunks, {scaling['duration_s']:g} s a point, "
        "interleaved. *CPU µs/chunk* counts every server process; *Redis* is redis-server's CPU over the same "
        "run (warm-up included) per chunk answered in the window.", "",
        *table_head("workers", "N", "RT", "p99 ms", "errors", "CPU µs/chunk", "ORT threads", "rest",
                    "Redis µs/chunk", "store ops/chunk", "srv cores", "held"),
    ]
    for workers, data in scaling["by_workers"].items():
        for p in data["points"]:
            name = f"{p['streams']}" + ("" if p["realtime"] else " (as fast as possible)")
            out.append(
                f"| {workers} | {name} | {p['realtime_fraction']} | {p['p99_ms']} | {p['errors']} | "
                f"{p['cpu_us_per_chunk']} | {p['ort_thread_us_per_chunk']} | {p['non_ort_us_per_chunk']} | "
                f"{p['redis_us_per_chunk']} | {p['store_ops_per_chunk']} | {p['server_cpu_cores']} | "
                f"{'yes' if p['held'] else '-'} |"
            )
    held = "; ".join(f"{w} worker(s): {d['streams_held']}" for w, d in scaling["by_workers"].items())
    out += ["", f"Real-time streams held: {held}."]
    for workers, p in scaling.get("stateful_predict", {}).items():
        out.append(f"Stateful Predict, {workers} worker(s) + Redis ({PREDICT_CALLERS} callers, 10 frames a call, as "
                   f"fast as possible): {p['frames_per_s'] / 10:.0f} calls/s, CPU {p['cpu_us_per_chunk']} µs/call, "
                   f"{p['store_ops_per_chunk']} store ops/call, Redis {p['redis_us_per_chunk']} µs/call.")
    fp = scaling.get("footprint")
    if fp:
        out += ["", "| per session or message | reference | kws |", "|---|---|---|",
                f"| snapshot bytes (between two chunks) | {fp['snapshot_bytes']['reference']} | "
                f"{fp['snapshot_bytes']['kws']} |"]
        if "redis_bytes_per_session" in fp:
            r = fp["redis_bytes_per_session"]
            out.append(f"| Redis used_memory per session (state, lease, index; {fp['redis_sessions']} sessions) | "
                       f"{r['reference']:.0f} | {r['kws']:.0f} |")
        w = fp["wire_bytes"]
        out.append(f"| StreamPredict chunk / result bytes | {w['reference']['request']} / {w['reference']['response']} "
                   f"| {w['kws']['request']} / {w['kws']['response']} |")
    return [*out, ""]
