"""The lstm-serve benchmark (``make bench``): one run, every configuration side by side.

Absolute figures move with the machine and its other jobs, so everything is measured
in the same run and compared as ratios:

(a) in-process onnxruntime (the server's own ``ModelRuntime``, same thread settings) at
    the batch sizes the server reaches;
(b) the server with batching off (``--no-batching``);
(c) the server with batching on (the defaults);
(d) ``--workers 2`` (batching on), two worker processes sharing the port;
(e) old against new: the same server measurements against a server started from a git
    worktree of ``--base`` (default ``HEAD~1``) and from this working tree, interleaved;
(f) per-message cost: server CPU per chunk split into onnxruntime and the rest, against
    the echo floor (a bare grpc.aio server of the same messages, same load), for the
    reference model paced and saturated and for kws audio streams (``floor``);
(g) scaling: ``--workers 1`` and ``--workers 2`` on a shared Redis store (``scaling``).

For each of (b)-(d) it sweeps N paced streams with ``lstm-client bench`` in its own
process, then one as-fast-as-possible saturation run, reading the batch sizes from the
server's /metrics and its CPU from /proc. It also measures unary Predict against the
transport floor (a bare grpc.aio echo RPC plus in-process onnxruntime) and, with py-spy
installed, profiles the saturated server.

Writes ``docs/bench-results.json``, ``docs/img/*.png`` and the generated block of
``docs/benchmarks.md`` (between its ``bench:begin`` / ``bench:end`` markers; the rest of
that file is written by hand and left alone).

    .venv/bin/python scripts/bench.py                  # the full run (about 10 minutes)
    .venv/bin/python scripts/bench.py --quick          # a smoke run (about 1 minute)
    .venv/bin/python scripts/bench.py --base v0.1 --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lstm_client.launch import ServerProcess

from . import CHUNK_FRAMES, MODEL, REPO, SATURATION_STREAMS, WORK, log, scaling
from . import compare as comparison
from . import floor as per_message
from .measure import (
    echo_payload,
    ensure_model,
    load_runtime,
    machine,
    ort_p50,
    ort_throughput,
    predict_request,
    run_load,
    unary_p50,
)
from .profile import profile_during_load
from .report import evaluate, summary, write_docs
from .servers import ECHO_METHOD, ECHO_ORT_METHOD, SERVER_CONFIGS, echo_server, lstm_server, serve_echo

FULL_STREAMS = [1, 16, 64, 128, 256, 384]
QUICK_STREAMS = [1, 16, 64]
ORT_BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 384]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (``scripts/bench.py --help``)."""
    parser = argparse.ArgumentParser(prog="scripts/bench.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run: fewer points, shorter")
    parser.add_argument("--duration", type=float, help="measured seconds per point (default 6, quick 2)")
    parser.add_argument("--streams", help="comma list of stream counts (default 1,16,64,128,256,384)")
    parser.add_argument("--models", type=Path, default=WORK / "models", help="model repository (default .bench/models)")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where to write (default docs/)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument("--render", type=Path, metavar="RESULTS_JSON",
                        help="measure nothing: rewrite the generated block and plots from a results JSON")
    parser.add_argument("--configs", default=",".join(c.key for c in SERVER_CONFIGS),
                        help="server configurations to sweep, comma list of off,on,workers2 or 'none' "
                             "(default all)")
    parser.add_argument("--base", default="HEAD~1", metavar="REV",
                        help="git revision to compare this working tree against (default HEAD~1)")
    parser.add_argument("--no-compare", action="store_true", help="skip the old-against-new comparison")
    parser.add_argument("--rounds", type=int, help="interleaved rounds of the comparison (default 3, quick 1)")
    parser.add_argument("--compare-duration", type=float,
                        help="measured seconds per comparison point (default 4, quick 1.5)")
    parser.add_argument("--no-floor", action="store_true", help="skip (f), the per-message cost against the echo floor")
    parser.add_argument("--no-scaling", action="store_true",
                        help="skip (g), --workers 1 against --workers 2 on a shared Redis store (needs redis-server)")
    parser.add_argument("--floor-rounds", type=int, help="interleaved rounds of (f) (default 2, quick 1)")
    parser.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port-file", help=argparse.SUPPRESS)
    parser.add_argument("--echo-model", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    known = {c.key for c in SERVER_CONFIGS}
    args.config_keys = [] if args.configs == "none" else [k for k in args.configs.split(",") if k]
    unknown = set(args.config_keys) - known
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {sorted(known)} or 'none'")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the docs."""
    args = parse_args(argv)
    if args.echo_server:
        asyncio.run(serve_echo(args.port_file, args.echo_model))
        return 0
    if args.render is not None:
        rendered: dict[str, Any] = json.loads(args.render.read_text())
        rendered["targets"] = evaluate(rendered)
        path = write_docs(rendered, args.docs)
        log(f"rendered {path}")
        return 0
    results = measure_all(args)
    path = write_docs(results, args.docs)
    log(f"done in {results['elapsed_s']:.0f} s: {path}")
    for row in results["targets"]:
        log(f"  {'MET ' if row['met'] else 'MISS'} {row['figure']}: {row['measured'].replace('**', '')} "
            f"(target {row['target']})")
    if args.json:
        print(json.dumps(summary(results), indent=1))
    return 0


def measure_all(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement of one run, as the results document."""
    started = time.perf_counter()
    quick = args.quick
    duration = args.duration or (2.0 if quick else 6.0)
    warmup = 0.5 if quick else 1.0
    streams = [int(n) for n in args.streams.split(",")] if args.streams else (QUICK_STREAMS if quick else FULL_STREAMS)
    configs = [c for c in SERVER_CONFIGS if c.key in args.config_keys]
    profile = "on" in args.config_keys and not args.no_profile
    rounds = args.rounds or (1 if quick else 3)
    compare_duration = args.compare_duration or (1.5 if quick else 4.0)
    WORK.mkdir(exist_ok=True)
    results: dict[str, Any] = {
        "quick": quick,
        "started_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["scripts/bench.py", *args.argv]),
        "machine": machine(),
        "model": {"name": MODEL, "input_dim": 40, "hidden": 256, "layers": 2, "outputs": 12, "cell": "lstm"},
        "chunk_frames": CHUNK_FRAMES,
        "duration_s": duration,
        "warmup_s": warmup,
        "saturation_streams": SATURATION_STREAMS,
        "docs": str(args.docs / "benchmarks.md"),
    }
    package = ensure_model(args.models)
    floor_rounds = args.floor_rounds or (1 if quick else 2)
    total = (len(configs) * (len(streams) + 1) + int(profile) + (0 if args.no_compare else rounds * 2)
             + (0 if args.no_floor else per_message.progress_points(floor_rounds, quick))
             + (0 if args.no_scaling else scaling.progress_points(quick)))
    with tqdm(total=total, desc="bench", unit="point", file=sys.stderr, disable=None, leave=False) as bar:
        log("(a) in-process onnxruntime")
        ort_seconds = 0.2 if quick else 0.6
        rt1, rt2 = load_runtime(package, 1), load_runtime(package, 2)
        batches = [1, 16, 64] if quick else ORT_BATCHES
        results["ort"] = {
            "threads_1": [ort_throughput(rt1, b, CHUNK_FRAMES, ort_seconds) for b in batches],
            "threads_2": [ort_throughput(rt2, b, CHUNK_FRAMES, ort_seconds) for b in batches],
        }
        unary_calls = 300 if quick else 1500
        results["unary"] = {"calls": unary_calls, "ort_ms": ort_p50(rt1, 100, unary_calls), "predict_ms": {},
                            "executor_ms": per_message.executor_round_trip(unary_calls)}
        request = predict_request(rt1.manifest.input.feature_dim, 100)
        log("echo RPC (transport floor)")
        with echo_server(package) as echo:
            payload = echo_payload(request, rt1.manifest.output.dim, 100)
            results["unary"]["echo_ms"] = unary_p50(echo.target, ECHO_METHOD, payload, unary_calls, echo=True)
            results["unary"]["echo_ort_ms"] = unary_p50(echo.target, ECHO_ORT_METHOD, payload, unary_calls, echo=True)
        results["servers"] = {}
        sweep(args, results, configs, streams, duration, warmup, profile, request, unary_calls, bar)
        if not args.no_floor:
            log(f"(f) per-message cost against the echo floor, {floor_rounds} interleaved round(s)")
            results["per_message"] = per_message.measure_floor(
                args.models, duration, warmup, floor_rounds, quick, step=lambda: bar.update())
        if not args.no_scaling:
            log("(g) --workers 1 and 2 on a shared Redis store")
            results["scaling"] = scaling.measure_scaling(args.models, duration, warmup, quick,
                                                         step=lambda: bar.update())
        if not args.no_compare:
            log(f"(e) this working tree against {args.base}, {rounds} interleaved rounds")
            results["compare"] = comparison.run_comparison(
                args.models, args.base, rounds=rounds, duration=compare_duration, warmup=warmup, runtime=rt1,
                ort_seconds=ort_seconds, request=request, unary_calls=200 if quick else 500, step=lambda: bar.update(),
            )
    u = results["unary"]
    u["overhead_ms"] = {
        k: round(p["p50"] - (u["echo_ms"]["p50"] + u["ort_ms"]["p50"]), 4) for k, p in u["predict_ms"].items()
    }
    per_message.unary_floor(u)
    results["served_vs_ort"] = {}
    for key in ("on", "workers2"):
        sat = results["servers"].get(key, {}).get("saturation")
        if not (sat and sat["server"]["mean_batch"]):
            continue
        batch = max(1, round(sat["server"]["mean_batch"]))
        o1 = ort_throughput(rt1, batch, CHUNK_FRAMES, ort_seconds * 2)
        o2 = ort_throughput(rt2, batch, CHUNK_FRAMES, ort_seconds * 2)
        results["served_vs_ort"][key] = {
            "batch": batch, "served_fps": sat["frames_per_s"],
            "ort_fps_1_thread": o1["frames_per_s"], "ort_fps_2_threads": o2["frames_per_s"],
            "ratio_1_thread": round(sat["frames_per_s"] / o1["frames_per_s"], 3),
            "ratio_2_threads": round(sat["frames_per_s"] / o2["frames_per_s"], 3),
        }
    results["targets"] = evaluate(results)
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    return results


def sweep(
    args: argparse.Namespace, results: dict[str, Any], configs: list[Any], streams: list[int], duration: float,
    warmup: float, profile: bool, request: Any, unary_calls: int, bar: tqdm[Any],
) -> None:
    """(b)-(d): all configurations run at once (an idle server costs nothing) and each point is
    measured for every configuration back to back, so that other jobs weigh on all alike."""
    models = args.models
    shown_models = str(models.relative_to(REPO)) if models.is_relative_to(REPO) else str(models)
    with contextlib.ExitStack() as stack:
        running: dict[str, ServerProcess] = {}
        for config in configs:
            log(f"starting server {config.key}: {config.label}")
            running[config.key] = stack.enter_context(lstm_server(models, config))
            results["servers"][config.key] = {
                "label": config.label,
                "server_command": ["lstm-serve", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                                   "--models", shown_models, *config.args],
                "sweep": [],
            }
        for key, server in running.items():
            results["unary"]["predict_ms"][key] = unary_p50(server.target, "", request, unary_calls, echo=False)
        for n in streams:
            for key, server in running.items():
                point = run_load(server, n, duration, True, warmup)
                results["servers"][key]["sweep"].append(point)
                log(f"  {key:<9} N={n:<4} {point['frames_per_s']:>8.0f} frames/s  RT {point['realtime_fraction']:.3f}"
                    f"  p99 {point['latency_ms']['p99']} ms  errors {point['error_count']}  "
                    f"batch {point['server']['mean_batch']}  CPU {point['server']['cpu_us_per_chunk']} µs/chunk")
                bar.update()
        for key, server in running.items():
            saturation = run_load(server, SATURATION_STREAMS, duration, False, warmup)
            results["servers"][key]["saturation"] = saturation
            log(f"  {key:<9} saturated: {saturation['frames_per_s']:.0f} frames/s  "
                f"batch {saturation['server']['mean_batch']}  CPU {saturation['server']['cpu_us_per_chunk']} µs/chunk")
            bar.update()
        if profile:
            # a separate run: py-spy's own CPU would otherwise weigh on the saturated figure above
            log("  profiling the saturated server (batching on) with py-spy")
            _, results["profile"] = profile_during_load(
                running["on"], SATURATION_STREAMS, duration, warmup, WORK / "profile-saturated.folded"
            )
            bar.update()


if __name__ == "__main__":
    sys.exit(main())
