"""Per-message cost against the transport floor, in one run.

lstm-serve's CPU per 100 ms chunk (from /proc) is split into the threads named
``onnxruntime`` (the executor: stacking, the onnxruntime call) and everything else
(the event loop, gRPC's threads, the audio front-end's worker threads). The rest is
set against the *echo floor*: the same load generator driving a bare grpc.aio server
that parses and answers StreamPredict's messages with no model behind them
(``servers._echo_stream_handlers``), at the same message sizes and the same load.
The two are measured in interleaved rounds, so that other jobs on the machine weigh
on both alike; figures are medians over the rounds.

Loads: ``PACED_STREAMS`` real-time streams of the ``reference`` model (10 frames at
100 Hz a chunk), the saturation run (``SATURATION_STREAMS`` as fast as possible), and
``kws`` audio streams of 100 ms PCM16 chunks at 16 kHz, paced (the audio path: front-end
off the loop, the spotter, events), with a sweep of its stream counts.

Unary Predict's floor is the echo RPC plus in-process onnxruntime plus a bare executor
round trip (onnxruntime must stay off the event loop): :func:`executor_round_trip`.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from . import LATENCY_TARGET_MS, REALTIME_HELD, REPO, SATURATION_STREAMS, log
from .measure import percentiles_ms, run_load
from .servers import AUDIO_MODEL, ECHO_MESSAGES, ServerConfig, echo_server, lstm_server

PACED_STREAMS = 64
BUNDLED_FEATURE_MODELS = ("har", "har-gru", "forecast")
"""The bundled sensor models (10 Hz): 10-frame chunks are 1 s of signal."""
BUNDLED_STREAMS = 256
PREDICT_CALLERS = 16
"""Callers of the stateful Predict load, each continuing its own session, 10 frames a call."""
AUDIO_STREAMS = [16, 64, 128, 256]
QUICK_AUDIO_STREAMS = [16, 64]
AUDIO_WAV = REPO / "demo" / "demo1.wav"
BUNDLED_MODELS = REPO / "models"
RATIO_TARGET = 1.5
PREDICT_FLOOR_TARGET = 1.1


def executor_round_trip(calls: int) -> dict[str, float]:
    """Latency of one ``run_in_executor`` hop of a no-op on a one-thread pool, from a
    fresh event loop (what a model call costs beyond onnxruntime, at the least)."""
    async def measure() -> list[float]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1) as pool:
            for _ in range(50):
                await loop.run_in_executor(pool, int)
            samples = []
            for _ in range(calls):
                started = time.perf_counter()
                await loop.run_in_executor(pool, int)
                samples.append(time.perf_counter() - started)
        return samples

    return percentiles_ms(asyncio.run(measure()))


def cost_row(point: dict[str, Any]) -> dict[str, Any]:
    """The figures of one ``run_load`` point this section and ``scaling`` report."""
    s = point["server"]
    return {
        "streams": point["streams"], "realtime": point["realtime"], "frames_per_s": point["frames_per_s"],
        "realtime_fraction": point["realtime_fraction"], "p99_ms": point["latency_ms"]["p99"],
        "errors": point["error_count"], "cpu_us_per_chunk": s["cpu_us_per_chunk"],
        "ort_thread_us_per_chunk": s["ort_thread_us_per_chunk"], "non_ort_us_per_chunk": s["non_ort_us_per_chunk"],
        "event_loop_us_per_chunk": s["threads_us_per_chunk"].get("event_loop"),
        "other_threads_us_per_chunk": s["threads_us_per_chunk"].get("other"),
        "server_cpu_cores": s["server_cpu_cores"], "others_cores": s["others_cores"],
        "mean_batch": s["mean_batch"], "store_ops_per_chunk": s.get("store_ops_per_chunk"),
    }


def _median(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Field by field median of the rounds' points (numbers only), with the rounds kept."""
    out: dict[str, Any] = {}
    for key, value in points[0].items():
        values = [p[key] for p in points if p[key] is not None]
        if isinstance(value, bool) or not isinstance(value, int | float) or not values:
            out[key] = value
        elif all(isinstance(v, int) for v in values) and len(set(values)) == 1:
            out[key] = value  # a setting of the load (its stream count), the same every round
        else:
            out[key] = round(statistics.median(values), 3)
    out["rounds"] = points
    return out


def measure_floor(
    models: Path, duration: float, warmup: float, rounds: int, quick: bool, step: Callable[[], object],
) -> dict[str, Any]:
    """Every figure of the per-message section (servers started here, stopped after)."""
    loads: dict[str, tuple[int, bool, str, tuple[str, ...]]] = {
        f"paced {PACED_STREAMS}": (PACED_STREAMS, True, "reference", ()),
        f"saturated {SATURATION_STREAMS}": (SATURATION_STREAMS, False, "reference", ()),
        f"kws audio, paced {PACED_STREAMS}": (PACED_STREAMS, True, AUDIO_MODEL, ("--wav", str(AUDIO_WAV))),
    }
    lstm_points: dict[str, list[dict[str, Any]]] = {k: [] for k in loads}
    echo_points: dict[str, list[dict[str, Any]]] = {k: [] for k in loads}
    defaults = ServerConfig("on", "defaults", ())
    audio_config = ServerConfig("audio", "bundled models, defaults", ())
    with contextlib.ExitStack() as stack:
        lstm = stack.enter_context(lstm_server(models, defaults))
        audio = stack.enter_context(lstm_server(BUNDLED_MODELS, audio_config))
        echo = stack.enter_context(echo_server())
        for r in range(rounds):
            for name, (n, realtime, model, extra) in loads.items():
                server = audio if model == AUDIO_MODEL else lstm
                lstm_points[name].append(cost_row(run_load(server, n, duration, realtime, warmup, model=model,
                                                        extra=extra)))
                echo_points[name].append(cost_row(run_load(echo, n, duration, realtime, warmup, model=model,
                                                        extra=extra, steps_metric=ECHO_MESSAGES)))
                log(f"  round {r + 1} {name}: lstm-serve non-ORT {lstm_points[name][-1]['non_ort_us_per_chunk']} "
                    f"µs/chunk (ORT {lstm_points[name][-1]['ort_thread_us_per_chunk']}), echo "
                    f"{echo_points[name][-1]['cpu_us_per_chunk']} µs/message")
                step()
        predict = cost_row(run_load(lstm, PREDICT_CALLERS, duration, False, warmup,
                                    extra=("--mode", "predict", "--session")))
        log(f"  stateful Predict, {PREDICT_CALLERS} callers: {predict['frames_per_s'] / 10:.0f} calls/s, CPU "
            f"{predict['cpu_us_per_chunk']} µs/call")
        step()
        bundled = {}
        for name in BUNDLED_FEATURE_MODELS:
            bundled[name] = cost_row(run_load(audio, BUNDLED_STREAMS, duration, True, warmup, model=name))
            log(f"  {name}: {BUNDLED_STREAMS} paced streams, CPU {bundled[name]['cpu_us_per_chunk']} µs/chunk")
            step()
        sweep = []
        for n in QUICK_AUDIO_STREAMS if quick else AUDIO_STREAMS:
            point = cost_row(run_load(audio, n, duration, True, warmup, model=AUDIO_MODEL,
                                   extra=("--wav", str(AUDIO_WAV))))
            sweep.append(point)
            log(f"  kws audio N={n}: RT {point['realtime_fraction']} p99 {point['p99_ms']} ms, CPU "
                f"{point['cpu_us_per_chunk']} µs/chunk (loop {point['event_loop_us_per_chunk']})")
            step()
    rows = {}
    for name in loads:
        ours, floor = _median(lstm_points[name]), _median(echo_points[name])
        rows[name] = {
            "lstm_serve": ours, "echo": floor,
            "ratio": round(ours["non_ort_us_per_chunk"] / floor["cpu_us_per_chunk"], 3)
            if ours["non_ort_us_per_chunk"] and floor["cpu_us_per_chunk"] else None,
        }
    return {"rounds": rounds, "duration_s": duration, "loads": rows, "audio_sweep": sweep, "stateful_predict": predict,
            "bundled": bundled,
            "audio_wav": str(AUDIO_WAV.relative_to(REPO))}


def progress_points(rounds: int, quick: bool) -> int:
    """The progress-bar points :func:`measure_floor` steps through."""
    return 3 * rounds + 1 + len(BUNDLED_FEATURE_MODELS) + len(QUICK_AUDIO_STREAMS if quick else AUDIO_STREAMS)


def unary_floor(unary: dict[str, Any]) -> None:
    """Predict p50 against its floor, per configuration, two ways: the sum of the echo
    RPC, in-process ORT and an executor round trip, each measured alone in a tight loop
    (``floor_ms``), and the same three composed in one bare server, the echo RPC awaiting
    the ORT call on an executor thread (``composed_floor_ms``). The composed floor also
    pays what a sum of hot loops hides: the threads wake from idle around every call."""
    if "executor_ms" not in unary:
        return
    floor = unary["echo_ms"]["p50"] + unary["ort_ms"]["p50"] + unary["executor_ms"]["p50"]
    unary["floor_ms"] = round(floor, 4)
    unary["over_floor"] = {k: round(p["p50"] / floor, 3) for k, p in unary["predict_ms"].items()}
    if "echo_ort_ms" in unary:
        composed = unary["echo_ort_ms"]["p50"]
        unary["composed_floor_ms"] = round(composed, 4)
        unary["over_composed_floor"] = {k: round(p["p50"] / composed, 3) for k, p in unary["predict_ms"].items()}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-message targets against what was measured."""
    rows = []
    floor = results.get("per_message")
    if floor:
        ratios = {k: v["ratio"] for k, v in floor["loads"].items() if v["ratio"] is not None}
        rows.append({
            "figure": "non-onnxruntime server CPU per chunk ÷ echo floor CPU per message (same load, same run)",
            "target": f"<= {RATIO_TARGET:g}",
            "measured": "; ".join(f"{k}: **{v:.2f}**" for k, v in ratios.items()),
            "met": bool(ratios) and max(ratios.values()) <= RATIO_TARGET,
        })
    unary = results.get("unary", {})
    for key, how in (("over_floor", "the sum of the three, each measured alone"),
                     ("over_composed_floor", "the three composed in one bare server")):
        over = unary.get(key)
        if over:
            rows.append({
                "figure": f"Predict p50 ÷ floor (echo RPC + in-process ORT + executor round trip: {how}), B=1, T=100",
                "target": f"<= {PREDICT_FLOOR_TARGET:g}",
                "measured": ", ".join(f"**{v:.2f}** ({k})" for k, v in over.items()),
                "met": min(over.values()) <= PREDICT_FLOOR_TARGET,
            })
    return rows


PLANNED_UTILIZATION = 0.6
"""Share of a core planned for, as the soak's load point: headroom for bursts and a lost replica."""


def capacity_lines(floor: dict[str, Any]) -> list[str]:
    """Streams per core for each model measured, from its CPU per chunk."""
    rows: list[tuple[str, float, dict[str, Any]]] = [
        ("reference (features)", 0.1, floor["loads"][f"paced {PACED_STREAMS}"]["lstm_serve"]),
        ("kws (16 kHz audio)", 0.1, floor["loads"][f"kws audio, paced {PACED_STREAMS}"]["lstm_serve"]),
        *((name, 1.0, point) for name, point in floor.get("bundled", {}).items()),
    ]
    out = ["", "### Capacity planning: streams per core", "",
           f"Streams per core = 1,000,000 µs ÷ (CPU µs per chunk x chunks per second a stream sends) x "
           f"{PLANNED_UTILIZATION:g} (planned utilization). The sensor models run at 10 Hz, so a 10-frame chunk is "
           "1 s of signal. One worker process tops out near one core of event loop: add `--workers`, one per core.",
           "", *table_head("model", "chunk", "measured at", "CPU µs/chunk", "of which executor thread",
                           "streams per core at 100 %", f"streams per core at {PLANNED_UTILIZATION:.0%}")]
    for name, chunk_s, point in rows:
        cpu = point["cpu_us_per_chunk"]
        if not cpu:
            continue
        full = 1e6 / cpu * chunk_s
        out.append(f"| {name} | {chunk_s * 1000:g} ms | {point['streams']} paced streams | {cpu:.0f} | "
                   f"{_us(point['ort_thread_us_per_chunk'])} | {full:.0f} | **{full * PLANNED_UTILIZATION:.0f}** |")
    return out


def table_head(*columns: str) -> list[str]:
    """A markdown table's header and rule."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def lines(results: dict[str, Any]) -> list[str]:
    """The per-message section of the generated block."""
    floor = results.get("per_message")
    if not floor:
        return []
    out = [
        "## CPU per chunk against the echo floor", "",
        f"Server CPU per message from /proc, medians of {floor['rounds']} interleaved round(s) of "
        f"{floor['duration_s']:g} s. *ORT threads*: the threads named `onnxruntime` (the executor: stacking, the "
        "onnxruntime call, and for audio the front-end and the spotter, which run there in the same hop); *rest*: "
        "everything else (the event loop, gRPC's threads). "
        "*Echo*: a bare grpc.aio server parsing and answering the same StreamPredict messages with no model, "
        "driven by the same `lstm-client bench` load. The ratio is rest ÷ echo.", "",
        *table_head("load", "lstm-serve CPU µs/chunk", "ORT threads", "rest", "of which event loop",
                    "echo µs/message", "rest ÷ echo", "batch", "RT (lstm-serve / echo)"),
    ]
    for name, row in floor["loads"].items():
        ours, echo = row["lstm_serve"], row["echo"]
        ratio = "-" if row["ratio"] is None else f"**{row['ratio']:.2f}**"
        out.append(
            f"| {name} | {_us(ours['cpu_us_per_chunk'])} | {_us(ours['ort_thread_us_per_chunk'])} | "
            f"{_us(ours['non_ort_us_per_chunk'])} | {_us(ours['event_loop_us_per_chunk'])} | "
            f"{_us(echo['cpu_us_per_chunk'])} | {ratio} | {ours['mean_batch']} | "
            f"{ours['realtime_fraction']} / {echo['realtime_fraction']} |"
        )
    out += capacity_lines(floor)
    predict = floor.get("stateful_predict")
    if predict:
        out += ["", f"Stateful Predict ({PREDICT_CALLERS} callers as fast as possible, each continuing its own "
                f"session, 10 frames a call, in-memory store): {predict['frames_per_s'] / 10:.0f} calls/s, server CPU "
                f"**{_us(predict['cpu_us_per_chunk'])} µs per call** (executor thread "
                f"{_us(predict['ort_thread_us_per_chunk'])}, rest {_us(predict['non_ort_us_per_chunk'])}), mean batch "
                f"{predict['mean_batch']}."]
    out += [
        "", f"### kws audio streams (100 ms PCM16 chunks at 16 kHz from `{floor['audio_wav']}`, looped, paced)", "",
        "Held: p99 <= " f"{LATENCY_TARGET_MS:g} ms, no errors, >= {REALTIME_HELD:.0%} of real time.", "",
        *table_head("N", "RT", "p99 ms", "errors", "CPU µs/chunk", "ORT threads", "rest", "event loop",
                    "other threads", "srv cores", "held"),
    ]
    for p in floor["audio_sweep"]:
        held = (p["p99_ms"] is not None and p["p99_ms"] <= LATENCY_TARGET_MS and not p["errors"]
                and (p["realtime_fraction"] or 0) >= REALTIME_HELD)
        out.append(
            f"| {p['streams']} | {p['realtime_fraction']} | {p['p99_ms']} | {p['errors']} | "
            f"{_us(p['cpu_us_per_chunk'])} | {_us(p['ort_thread_us_per_chunk'])} | {_us(p['non_ort_us_per_chunk'])} "
            f"| {_us(p['event_loop_us_per_chunk'])} | {_us(p['other_threads_us_per_chunk'])} | "
            f"{p['server_cpu_cores']} | {'yes' if held else 'no'} |"
        )
    return [*out, ""]
