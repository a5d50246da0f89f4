"""The same server measurements against an older commit (``--base``, a git worktree)
and this checkout, in one run, interleaved (old, new, old, new, ...) so that drift and
the other jobs on the machine weigh on both alike.

Per round and side: a saturated run (as fast as possible) with in-process onnxruntime
at the mean batch size the server reached, measured right after it (served / ORT); a
paced run; unary Predict p50. Per side the medians over the rounds, then new / old.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import CHUNK_FRAMES, SATURATION_STREAMS, log
from .measure import ort_throughput, run_load, unary_p50
from .servers import ServerConfig, base_worktree, current_code, lstm_server

PACED_STREAMS = 64
TOLERANCE = 0.05
CONFIG = ServerConfig("compare", "batching on (defaults)", ())

# figure -> (path into one round's sample, higher is better)
FIGURES: dict[str, tuple[tuple[str, ...], bool]] = {
    "served_vs_ort": (("served_vs_ort",), True),
    "saturated_frames_per_s": (("saturated", "frames_per_s"), True),
    "saturated_cpu_us_per_chunk": (("saturated", "cpu_us_per_chunk"), False),
    "paced_cpu_us_per_chunk": (("paced", "cpu_us_per_chunk"), False),
    "paced_event_loop_us_per_chunk": (("paced", "threads_us_per_chunk", "event_loop"), False),
    "predict_p50_ms": (("predict_ms", "p50"), False),
}
HEADLINE = ("served_vs_ort", "saturated_cpu_us_per_chunk", "paced_cpu_us_per_chunk")


def steps_per_round() -> int:
    """Progress steps one round takes (one per side)."""
    return 2


def _dig(sample: dict[str, Any], path: tuple[str, ...]) -> float | None:
    value: Any = sample
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return float(value)


def _round_sample(
    server: Any, runtime: Any, duration: float, warmup: float, ort_seconds: float, request: Any, unary_calls: int,
) -> dict[str, Any]:
    saturated = run_load(server, SATURATION_STREAMS, duration, False, warmup)
    batch = max(1, round(saturated["server"]["mean_batch"] or 1))
    ort = ort_throughput(runtime, batch, CHUNK_FRAMES, ort_seconds)
    paced = run_load(server, PACED_STREAMS, duration, True, warmup)
    predict = unary_p50(server.target, "", request, unary_calls, echo=False)

    def brief(point: dict[str, Any]) -> dict[str, Any]:
        view = point["server"]
        return {
            "frames_per_s": point["frames_per_s"], "realtime_fraction": point["realtime_fraction"],
            "p99_ms": point["latency_ms"]["p99"], "errors": point["error_count"],
            "mean_batch": view["mean_batch"], "steps": view["steps"], "server_cpu_s": view["server_cpu_s"],
            "server_cpu_cores": view["server_cpu_cores"], "cpu_us_per_chunk": view["cpu_us_per_chunk"],
            "compute_us_per_chunk": view["compute_us_per_chunk"],
            "threads_us_per_chunk": view["threads_us_per_chunk"], "others_cores": view["others_cores"],
        }

    return {
        "saturated": brief(saturated),
        "paced": brief(paced),
        "ort_batch": batch,
        "ort_frames_per_s": ort["frames_per_s"],
        "served_vs_ort": round(saturated["frames_per_s"] / ort["frames_per_s"], 4),
        "predict_ms": predict,
    }


def run_comparison(
    models_dir: Path, base_rev: str, *, rounds: int, duration: float, warmup: float, runtime: Any,
    ort_seconds: float, request: Any, unary_calls: int, step: Callable[[], object] = lambda: None,
) -> dict[str, Any]:
    """Old (``base_rev``) against new (this working tree), ``rounds`` interleaved rounds."""
    with base_worktree(base_rev) as old, contextlib.ExitStack() as stack:
        sides = [old, current_code()]
        servers = {}
        for code in sides:
            log(f"compare: starting {code.describe}")
            servers[code.key] = stack.enter_context(lstm_server(models_dir, CONFIG, code))
        samples: dict[str, list[dict[str, Any]]] = {code.key: [] for code in sides}
        for index in range(rounds):
            for code in sides:
                sample = _round_sample(servers[code.key], runtime, duration, warmup, ort_seconds, request,
                                       unary_calls)
                samples[code.key].append(sample)
                log(f"  compare round {index + 1}/{rounds} {code.key}: served/ORT {sample['served_vs_ort']:.3f}  "
                    f"CPU/chunk saturated {sample['saturated']['cpu_us_per_chunk']} µs, "
                    f"paced {sample['paced']['cpu_us_per_chunk']} µs  Predict p50 {sample['predict_ms']['p50']} ms")
                step()
        return summarize(
            {code.key: {"commit": code.commit, "describe": code.describe} for code in sides}, samples,
            {"base": base_rev, "rounds": rounds, "duration_s": duration, "warmup_s": warmup,
             "saturation_streams": SATURATION_STREAMS, "paced_streams": PACED_STREAMS,
             "chunk_frames": CHUNK_FRAMES, "server_args": list(CONFIG.args), "tolerance": TOLERANCE},
        )


def summarize(
    sides: dict[str, dict[str, Any]], samples: dict[str, list[dict[str, Any]]], settings: dict[str, Any],
) -> dict[str, Any]:
    """Medians per side, new / old per figure, and whether new is within the tolerance of old."""
    medians: dict[str, dict[str, float | None]] = {}
    spread: dict[str, dict[str, list[float]]] = {}
    for key, rows in samples.items():
        medians[key], spread[key] = {}, {}
        for name, (path, _) in FIGURES.items():
            values = [v for v in (_dig(r, path) for r in rows) if v is not None]
            medians[key][name] = round(statistics.median(values), 4) if values else None
            spread[key][name] = [round(min(values), 4), round(max(values), 4)] if values else []
    ratios: dict[str, dict[str, Any]] = {}
    for name, (_, higher_better) in FIGURES.items():
        old, new = medians.get("old", {}).get(name), medians.get("new", {}).get(name)
        if old is None or new is None or old == 0:
            continue
        ratio = new / old
        ok = ratio >= 1 - TOLERANCE if higher_better else ratio <= 1 + TOLERANCE
        # each round's new / old (the two measured back to back), their median: less sensitive to drift
        path = FIGURES[name][0]
        paired = [n / o for o, n in zip((_dig(r, path) for r in samples["old"]),
                                        (_dig(r, path) for r in samples["new"]), strict=False)
                  if o and n is not None]
        ratios[name] = {"old": old, "new": new, "new_over_old": round(ratio, 4),
                        "paired_median": round(statistics.median(paired), 4) if paired else None,
                        "paired_range": [round(min(paired), 4), round(max(paired), 4)] if paired else [],
                        "higher_is_better": higher_better, "within_tolerance": ok}
    return {
        "settings": settings,
        "sides": sides,
        "median": medians,
        "range": spread,
        "ratios": ratios,
        "no_loss": all(ratios[n]["within_tolerance"] for n in HEADLINE if n in ratios),
        "samples": samples,
    }
