"""``make soak``: minutes of mixed traffic on two replicas, with faults mixed in.

1. **Capacity, in the same run.** One replica, the soak's own mix without faults, paced
   streams at 16, 32, 64, ... then bisecting (at most six stream counts, at most
   ``--max-streams``, ``--sweep-seconds`` each): a count holds when at least 99 % of the
   chunks due in its window were answered, p99 chunk latency is at most 100 ms and
   nothing failed; one that does not is tried once more. Capacity is the largest count
   held; the soak runs ``--load-fraction`` (60 %) of it. ``--streams N`` skips the sweep.
2. **The soak**, ``--duration`` seconds (600) on two replicas (A, B) with resume-token
   keys and a short session TTL: 3/4 ``har`` feature streams and 1/4 ``kws`` audio
   streams (100 ms chunks), 2 Predict calls per second, random client disconnects and
   bad chunks (each resumed from its newest token), and halfway a SIGTERM of A: its
   streams get ``draining`` with a token and move to B. A is then restarted on new
   ports (a rolling restart; ``--no-restart`` leaves B alone), and new sessions spread
   over both again.
3. **The report**: errors by status code (0 expected beyond the injected ones, which are
   counted apart), chunk latency p50/p99 per 10 s window, RSS and open file
   descriptors of every server process over time, and the sessions left once every
   stream has ended and the TTL has passed (0 expected). ``docs/soak.md`` (the block
   between ``<!-- soak:begin -->`` and ``<!-- soak:end -->``), ``docs/soak-results.json``
   and the plots under ``docs/img/``, unless ``--no-docs``; ``--json`` prints the
   summary on stdout. Exit 0 when there were no unexpected errors, no leaked sessions
   and RSS grew less than ``--rss-target-pct`` after warm-up on every replica that
   lived long enough to tell.

``python scripts/lstm_bench/soak.py [--duration S] [--streams N] [--json] [--no-docs]``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstm_bench import LATENCY_TARGET_MS, REPO, WORK, log
from lstm_bench.measure import machine, open_fds, process_cpu_s, rss_bytes
from lstm_bench.servers import server_command
from lstm_bench.soak_load import Inputs, Mix, Router, Stats, StreamLoad, percentiles
from lstm_client.launch import ServerProcess, run_server, scrape

SWEEP_START = 16
SWEEP_POINTS = 6
SWEEP_WARMUP_S = 3.0
HELD_FRACTION = 0.99
"""A sweep point holds when at least this fraction of its chunks were answered ..."""


# ---------------------------------------------------------------------------- servers
@dataclass
class Life:
    """One server process: a replica's generation, from start to exit."""

    name: str
    generation: int
    server: ServerProcess
    started_s: float
    fds_start: int
    samples: list[dict[str, float]] = field(default_factory=list)
    terminated_s: float | None = None
    exited_s: float | None = None
    exit_code: int | None = None
    fds_end: int | None = None

    @property
    def label(self) -> str:
        """``A`` or ``A#2`` for a restarted A."""
        return self.name if self.generation == 0 else f"{self.name}#{self.generation + 1}"

    @property
    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.server.process.poll() is None


class Fleet:
    """The replicas' processes; every one is SIGTERMed when the stack closes."""

    def __init__(self, stack: contextlib.ExitStack, models: Path, keys: Path, ttl_s: float, grace_s: float,
                 clock0: float) -> None:
        self.stack, self.models, self.keys = stack, models, keys
        self.env = {"LSTM_SERVE_SESSIONS__TTL_S": f"{ttl_s:g}", "LSTM_SERVE_SESSIONS__REAP_INTERVAL_S": "1"}
        self.grace_s, self.clock0 = grace_s, clock0
        self.lives: list[Life] = []

    def start(self, name: str) -> Life:
        """Start (or restart) replica ``name`` and wait until it serves."""
        generation = sum(1 for life in self.lives if life.name == name)
        args = ("--grace", f"{self.grace_s:g}", "--token-keys", str(self.keys))
        log_path = WORK / "logs" / f"soak-{name}-{generation}.log"
        server = self.stack.enter_context(run_server(
            server_command(self.models, args), None, None, log_path, env=self.env, ready_timeout=120,
        ))
        life = Life(name, generation, server, time.monotonic() - self.clock0, open_fds(server.process.pid))
        self.lives.append(life)
        log(f"replica {life.label} serving on {server.target} (pid {server.process.pid}, {life.fds_start} fds)")
        return life

    def current(self, name: str) -> Life:
        """The newest life of ``name``."""
        return [life for life in self.lives if life.name == name][-1]


def metric_total(samples: dict[str, float], name: str) -> float:
    """The sum of every sample of ``name``."""
    return sum(v for k, v in samples.items() if k.partition("{")[0] == name)


def session_metrics(life: Life) -> dict[str, Any]:
    """The server's own session counters, read now."""
    samples = scrape(life.server.metrics_url)
    ended: dict[str, float] = {}
    errors: dict[str, int] = {}
    for key, value in samples.items():
        if key.startswith("lstm_serve_sessions_ended_total{"):
            reason = label(key, "reason")
            ended[reason] = ended.get(reason, 0.0) + value
        elif key.startswith("lstm_serve_errors_total{") and value:
            errors[f"{label(key, 'method')}:{label(key, 'code')}"] = int(value)
    return {
        "stored": metric_total(samples, "lstm_serve_sessions_stored"),
        "active": metric_total(samples, "lstm_serve_sessions_active"),
        "created": metric_total(samples, "lstm_serve_sessions_created_total"),
        "ended": {k: int(v) for k, v in sorted(ended.items())},
        "draining_handoffs": metric_total(samples, "lstm_serve_draining_handoffs_total"),
        "errors_total": dict(sorted(errors.items())),
    }


def label(key: str, name: str) -> str:
    """The value of label ``name`` in a ``scrape`` key."""
    return key.split(f'{name}="', 1)[1].split('"', 1)[0] if f'{name}="' in key else ""


def by_code(stats: Stats) -> dict[str, dict[str, int]]:
    """Every failed call or refused message the clients saw, by gRPC status code: unexpected,
    injected (a client's own cancel counts as CANCELLED), and caused by the SIGTERM."""
    out: dict[str, dict[str, int]] = {"unexpected": {}, "injected": {}, "sigterm": {}}

    def add(part: str, code: str, n: int) -> None:
        out[part][code] = out[part].get(code, 0) + n

    for key, n in stats.errors.items():
        add("unexpected", key.rsplit(":", 1)[1], n)
    for key, n in stats.injected.items():
        if key == "disconnect":
            add("injected", "CANCELLED", n)
        elif ":" in key:
            add("injected", key.rsplit(":", 1)[1], n)
    for key, n in stats.drain.items():
        if ":" in key:
            add("sigterm", key.rsplit(":", 1)[1], n)
    return {part: dict(sorted(codes.items())) for part, codes in out.items()}


async def sample_lives(fleet: Fleet, stop: asyncio.Event, every_s: float, limit: int) -> None:
    """RSS, fds, CPU and session gauges of every live server, every ``every_s`` (at most ``limit`` rounds)."""
    for _ in range(limit):
        now = time.monotonic() - fleet.clock0
        for life in list(fleet.lives):
            if not life.alive:
                continue
            pid = life.server.process.pid
            try:
                row = {"t": round(now, 2), "rss_mb": round(rss_bytes(pid) / 2**20, 2), "fds": open_fds(pid),
                       "cpu_s": round(process_cpu_s(pid), 2)}
                gauges = await asyncio.to_thread(session_metrics, life)
            except (OSError, ValueError):
                continue  # it exited between the check and the read
            row.update(stored=gauges["stored"], active=gauges["active"])
            life.samples.append(row)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        if stop.is_set():
            return


# ---------------------------------------------------------------------------- runs
async def run_load(router: Router, mix: Mix, inputs: Inputs, seconds: float, warmup_s: float, window_s: float,
                   seed: int, extra: list[Any] | None = None, library_streams: int = 0) -> tuple[Stats, float]:
    """Drive ``mix`` for ``warmup_s + seconds``; the stats' windows start after the warm-up.
    ``extra`` coroutines run beside the load (they must end by themselves); ``library_streams``
    more ``har`` streams go through the client library's auto-resume, each in its own thread."""
    start = time.monotonic() + 0.1
    stats = Stats(start + warmup_s, window_s)
    load = StreamLoad(router, stats, mix, inputs, start, start + warmup_s + seconds, seed)
    pace = load.pace
    slots = [("har", i) for i in range(mix.har_streams)]
    slots += [("kws", mix.har_streams + i) for i in range(mix.kws_streams)]
    stop = asyncio.Event()
    bound_s = warmup_s + seconds + 240
    watcher = asyncio.get_running_loop().create_task(router.watch_health(stop, bound_s))
    jobs = [load.stream_slot(i, kind, start + pace * n / max(1, len(slots))) for n, (kind, i) in enumerate(slots)]
    jobs.append(load.predict_driver(mix.predict_per_s))
    target = "ipv4:" + ",".join(r.target for _, r in sorted(router.replicas.items()))
    pool = ThreadPoolExecutor(max(1, library_streams), thread_name_prefix="soak-library")
    loop = asyncio.get_running_loop()
    library = [loop.run_in_executor(pool, load.library_slot, i, target, start + pace * i / max(1, library_streams))
               for i in range(library_streams)]
    cpu0 = _cpu()
    try:
        await asyncio.wait_for(asyncio.gather(*jobs, *(extra or [])), bound_s)
        for counts in await asyncio.wait_for(asyncio.gather(*library), 120.0):
            for key, n in counts.items():
                if key.startswith("error:"):
                    stats.errors[key.removeprefix("error:")] += n
                else:
                    stats.counts[key] += n
    finally:
        stop.set()
        await watcher
        pool.shutdown(wait=False, cancel_futures=True)
    return stats, _cpu() - cpu0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def sweep_point(stats: Stats, streams: int) -> dict[str, Any]:
    """One capacity point: answered fraction, latency and errors of the measured window."""
    window = stats.latencies.get(0, {})
    lat = [x for samples in window.values() for x in samples]
    due = stats.due.get(0, 0)
    pct = percentiles(lat)
    fraction = len(lat) / due if due else 0.0
    errors = sum(stats.errors.values())
    held = fraction >= HELD_FRACTION and pct["p99"] is not None and pct["p99"] <= LATENCY_TARGET_MS and not errors
    return {"streams": streams, "answered_fraction": round(fraction, 4), "latency_ms": pct, "errors": errors,
            "held": held}


async def capacity(router: Router, base: Mix, inputs: Inputs, seconds: float, max_streams: int,
                   seed: int) -> dict[str, Any]:
    """The bounded sweep (one replica, the mix without faults): doubling from
    ``SWEEP_START``, then bisecting, at most ``SWEEP_POINTS`` stream counts. A count that
    does not hold is tried once more (the machine is shared: one stall of another job
    should not halve the soak); it holds if either try does."""
    points: list[dict[str, Any]] = []
    tried: set[int] = set()
    low, high = 0, 0
    n = min(SWEEP_START, max_streams)
    for _ in range(SWEEP_POINTS):
        if n in tried or n < 1:
            break
        tried.add(n)
        mix = Mix(n, base.kws_fraction, base.predict_per_s, faults=False, session_s=(seconds + 30, seconds + 30))
        for attempt in (1, 2):
            stats, cpu = await run_load(router, mix, inputs, seconds, SWEEP_WARMUP_S, seconds, seed)
            point = sweep_point(stats, n) | {"try": attempt,
                                             "client_cpu_cores": round(cpu / (seconds + SWEEP_WARMUP_S), 2)}
            points.append(point)
            log(f"capacity: {n} streams (try {attempt}) -> answered {point['answered_fraction']:.3f}, p99 "
                f"{point['latency_ms']['p99']} ms, errors {point['errors']}: {'held' if point['held'] else 'not held'}")
            if point["held"]:
                break
        if point["held"]:
            low = n
            n = n * 2 if not high else (low + high) // 2
            if n > max_streams:
                n = max_streams if low < max_streams else 0
        else:
            high = n
            n = (low + high) // 2 if low else n // 2
        if high and low and high - low <= max(2, low // 8):
            break
    return {"points": points, "streams_held": low, "criterion": (
        f">= {HELD_FRACTION:.0%} of due chunks answered, p99 <= {LATENCY_TARGET_MS:g} ms, no errors; "
        f"{seconds:g} s per point after {SWEEP_WARMUP_S:g} s warm-up; a count that does not hold is tried "
        "once more")}


async def drain_one(fleet: Fleet, router: Router, at: float, restart: bool, timeline: dict[str, Any]) -> None:
    """At monotonic ``at``: SIGTERM replica A, wait for it to exit, restart it (or not)."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    life = fleet.current("A")
    router.terminated("A")
    life.terminated_s = timeline["sigterm_s"] = round(time.monotonic() - fleet.clock0, 2)
    life.fds_end = open_fds(life.server.process.pid)
    log(f"SIGTERM to replica {life.label} (pid {life.server.process.pid})")
    life.server.process.send_signal(signal.SIGTERM)
    try:
        life.exit_code = await asyncio.to_thread(life.server.process.wait, 120)
    except subprocess.TimeoutExpired:
        life.server.process.kill()
        life.exit_code = await asyncio.to_thread(life.server.process.wait, 30)
    life.exited_s = timeline["exited_s"] = round(time.monotonic() - fleet.clock0, 2)
    log(f"replica {life.label} exited with {life.exit_code} after {life.exited_s - life.terminated_s:.1f} s")
    if restart:
        try:
            new = await asyncio.to_thread(fleet.start, "A")
        except RuntimeError as exc:  # reported; B carries the rest of the soak
            timeline["restart_error"] = str(exc)[-2000:]
            log(f"replica A did not come back: {exc}")
            return
        router.add("A", new.server.target)
        timeline["restarted_s"] = round(new.started_s, 2)


async def leak_check(fleet: Fleet, ttl_s: float) -> dict[str, Any]:
    """Once the load is over: poll every live server until no session is stored or
    active, for at most the TTL plus 15 s."""
    lives = [life for life in fleet.lives if life.alive]
    first = {life.label: await asyncio.to_thread(session_metrics, life) for life in lives}
    began = time.monotonic()
    last = first
    for _ in range(int((ttl_s + 15) / 0.5) + 1):
        last = {life.label: await asyncio.to_thread(session_metrics, life) for life in lives}
        if all(m["stored"] == 0 and m["active"] == 0 for m in last.values()):
            break
        await asyncio.sleep(0.5)
    leaked = int(sum(m["stored"] + m["active"] for m in last.values()))
    return {"at_load_end": first, "final": last, "leaked": leaked,
            "zero_after_s": round(time.monotonic() - began, 1) if not leaked else None}


# ---------------------------------------------------------------------------- report
def rss_growth(life: Life, load_start_s: float, load_end_s: float, warmup_s: float, span_s: float) -> dict[str, Any]:
    """RSS after warm-up against RSS at the end of the life's part of the load (medians
    of ``span_s`` of samples each)."""
    begin = max(load_start_s, life.started_s) + warmup_s
    end = min(load_end_s, life.terminated_s if life.terminated_s is not None else load_end_s)
    rss = [s["rss_mb"] for s in life.samples]
    out: dict[str, Any] = {"start_mb": rss[0] if rss else None, "max_mb": max(rss) if rss else None}
    base = [s["rss_mb"] for s in life.samples if begin <= s["t"] < begin + span_s]
    final = [s["rss_mb"] for s in life.samples if end - span_s <= s["t"] <= end]
    if end - begin < 2 * span_s or not base or not final:
        lived = max(0.0, end - begin)
        return out | {"growth_pct": None, "note": f"lived {lived:.0f} s past warm-up: too short to tell"}
    b, f = float(np.median(base)), float(np.median(final))
    return out | {"after_warmup_mb": round(b, 2), "end_mb": round(f, 2), "growth_pct": round(100 * (f / b - 1), 2),
                  "window_s": [round(begin, 1), round(end, 1)]}


def chunk_accounting(counts: dict[str, int]) -> dict[str, int]:
    """Chunks first sent, answered (a first result), resent after a resume, and first
    sent but never answered (expected 0: a resume resends whatever the token does not cover)."""
    first = counts.get("chunks_sent", 0) - counts.get("chunks_resent", 0)
    answered = counts.get("har_chunks_answered", 0) + counts.get("kws_chunks_answered", 0)
    return {"first_sent": first, "answered": answered, "resent": counts.get("chunks_resent", 0),
            "unanswered": first - answered}


def cpu_cores(life: Life) -> float | None:
    """The process's mean CPU use over its samples, in cores."""
    if len(life.samples) < 2:
        return None
    first, last = life.samples[0], life.samples[-1]
    return round((last["cpu_s"] - first["cpu_s"]) / (last["t"] - first["t"]), 3) if last["t"] > first["t"] else None


def latency_windows(stats: Stats, clock0: float) -> list[dict[str, Any]]:
    """p50/p99 per window, per stream kind and all together."""
    rows = []
    for index in sorted(stats.latencies):
        kinds = stats.latencies[index]
        every = [x for samples in kinds.values() for x in samples]
        rows.append({
            "t_s": round(stats.t0 - clock0 + index * stats.window_s, 1),
            "all": percentiles(every), **{k: percentiles(v) for k, v in sorted(kinds.items())},
        })
    return rows


def build_report(args: argparse.Namespace, *, fleet: Fleet, stats: Stats, mix: Mix, cap: dict[str, Any],
                 timeline: dict[str, Any], sessions: dict[str, Any], client_cpu_s: float, load_s: tuple[float, float],
                 started_utc: str, machine_info: dict[str, Any]) -> dict[str, Any]:
    """The JSON document (``--json``, ``docs/soak-results.json``)."""
    load_start, load_end = load_s
    warmup = max(10.0, 0.2 * args.duration)
    span = max(5.0, 0.1 * args.duration)
    servers: list[dict[str, Any]] = []
    for life in fleet.lives:
        growth = rss_growth(life, load_start, load_end, warmup, span)
        servers.append({
            "replica": life.label, "pid": life.server.process.pid, "started_s": round(life.started_s, 2),
            "terminated_s": life.terminated_s, "exited_s": life.exited_s, "exit_code": life.exit_code,
            "fds": {"start": life.fds_start, "end": life.fds_end}, "rss": growth, "cpu_cores": cpu_cores(life),
            "samples": life.samples,
        })
    judged = [s for s in servers if s["rss"].get("growth_pct") is not None]
    rss_ok = bool(judged) and all(s["rss"]["growth_pct"] < args.rss_target_pct for s in judged)
    every = [x for kinds in stats.latencies.values() for samples in kinds.values() for x in samples]
    unexpected = sum(stats.errors.values())
    chunks = chunk_accounting(stats.counts)
    verdict = {
        "unexpected_errors": unexpected, "leaked_sessions": sessions["leaked"],
        "chunks_unanswered": chunks["unanswered"],
        "rss_growth_pct": {s["replica"]: s["rss"]["growth_pct"] for s in servers},
        "rss_target_pct": args.rss_target_pct, "rss_ok": rss_ok,
        "passed": (unexpected == 0 and sessions["leaked"] == 0 and chunks["unanswered"] == 0 and rss_ok
                   and "restart_error" not in timeline),
    }
    return {
        "started_utc": started_utc, "machine": machine_info,
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["python scripts/lstm_bench/soak.py", *sys.argv[1:]]),
        "duration_s": args.duration, "window_s": args.window, "session_ttl_s": args.session_ttl,
        "grace_s": args.grace, "restart": not args.no_restart, "capacity": cap,
        "load_fraction": args.load_fraction, "mix": mix.describe() | {"library_streams": args.library_streams},
        "timeline": timeline,
        "verdict": verdict,
        "errors_by_code": by_code(stats),
        "errors": dict(sorted(stats.errors.items())), "injected": dict(sorted(stats.injected.items())),
        "drain": dict(sorted(stats.drain.items())), "counts": dict(sorted(stats.counts.items())),
        "chunks": chunks, "resent_max_abs_diff": stats.mismatch_max,
        "latency_ms": {"overall": percentiles(every), "recovery": percentiles(stats.recovery),
                       "windows": latency_windows(stats, fleet.clock0)},
        "resume_gap_ms": {cause: percentiles(v) for cause, v in sorted(stats.resume_gaps.items())},
        "sessions": sessions,
        "client": {"cpu_s": round(client_cpu_s, 2), "cpu_cores": round(client_cpu_s / (load_end - load_start), 2)},
        "servers": servers,
    }


# ---------------------------------------------------------------------------- main
async def soak(args: argparse.Namespace) -> dict[str, Any]:
    """Capacity, then the soak, then the leak check; the report."""
    started_utc = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine_info = machine()
    inputs = Inputs(REPO / "demo")
    clock0 = time.monotonic()
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="lstm-soak-") as tmp:
        keys = Path(tmp) / "keys.json"
        subprocess.run([sys.executable, "-m", "lstm_serve.main", "keygen", str(keys)], check=True,
                       stdout=subprocess.DEVNULL)
        fleet = Fleet(stack, args.models, keys, args.session_ttl, args.grace, clock0)
        a, b = await asyncio.gather(asyncio.to_thread(fleet.start, "A"), asyncio.to_thread(fleet.start, "B"))
        router = Router()
        base = Mix(args.streams or 1, args.kws_fraction, args.predict_rate, args.disconnect_rate, args.bad_chunk_rate)
        if args.streams:
            cap: dict[str, Any] = {"skipped": True, "streams_given": args.streams}
            streams = args.streams
        else:
            router.add("A", a.server.target)
            try:
                cap = await capacity(router, base, inputs, args.sweep_seconds, args.max_streams, args.seed)
            finally:
                await router.close()
            streams = max(4, round(args.load_fraction * cap["streams_held"]))
            log(f"capacity {cap['streams_held']} streams on one replica; soaking at {streams}")
            router = Router()
        mix = Mix(streams, args.kws_fraction, args.predict_rate, args.disconnect_rate, args.bad_chunk_rate)
        router.add("A", fleet.current("A").server.target)
        router.add("B", b.server.target)
        if not args.streams:
            await asyncio.sleep(1.0)  # let A close the sweep's connections
            for life in fleet.lives:
                life.fds_start = open_fds(life.server.process.pid)
        timeline: dict[str, Any] = {}
        load_start = time.monotonic()
        for life in fleet.lives:  # every time in the report counts from the soak's start
            life.started_s -= load_start - clock0
        fleet.clock0 = load_start
        stop_sampling = asyncio.Event()
        sampler = asyncio.get_running_loop().create_task(
            sample_lives(fleet, stop_sampling, args.sample_every, int((args.duration + 600) / args.sample_every)))
        log(f"soak: {mix.har_streams} har + {mix.kws_streams} kws streams, {mix.predict_per_s:g} Predict/s, "
            f"{args.duration:g} s; SIGTERM of A at {args.duration / 2:g} s")
        drain = drain_one(fleet, router, load_start + 0.1 + args.duration / 2, not args.no_restart, timeline)
        try:
            stats, client_cpu = await run_load(router, mix, inputs, args.duration, 0.0, args.window, args.seed,
                                               extra=[drain], library_streams=args.library_streams)
        finally:
            await router.close()
        load_end_s = time.monotonic() - load_start
        log(f"load over: {sum(stats.errors.values())} unexpected errors; checking for leaked sessions")
        sessions = await leak_check(fleet, args.session_ttl)
        await asyncio.sleep(1.0)  # let the servers close the soak's connections
        for life in fleet.lives:
            if life.alive:
                life.fds_end = open_fds(life.server.process.pid)
        stop_sampling.set()
        await sampler
        return build_report(
            args, fleet=fleet, stats=stats, mix=mix, cap=cap, timeline=timeline, sessions=sessions,
            client_cpu_s=client_cpu, load_s=(0.0, load_end_s), started_utc=started_utc,
            machine_info=machine_info,
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(prog="soak", description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--duration", type=float, default=600.0, help="soak seconds (default 600)")
    p.add_argument("--streams", type=int, default=0, help="streams to soak with; skips the capacity sweep")
    p.add_argument("--load-fraction", type=float, default=0.6, help="of the measured capacity (default 0.6)")
    p.add_argument("--sweep-seconds", type=float, default=8.0, help="measured seconds per sweep point (default 8)")
    p.add_argument("--max-streams", type=int, default=256, help="the sweep's highest point (default 256)")
    p.add_argument("--kws-fraction", type=float, default=0.25, help="share of kws audio streams (default 0.25)")
    p.add_argument("--library-streams", type=int, default=2,
                   help="more har streams through LstmClient.stream(auto_resume=True), not scaled (default 2)")
    p.add_argument("--predict-rate", type=float, default=2.0, help="Predict calls per second (default 2)")
    p.add_argument("--disconnect-rate", type=float, default=1.0, help="disconnects per stream-minute (default 1)")
    p.add_argument("--bad-chunk-rate", type=float, default=0.5, help="bad chunks per stream-minute (default 0.5)")
    p.add_argument("--session-ttl", type=float, default=10.0, help="servers' idle session TTL, s (default 10)")
    p.add_argument("--grace", type=float, default=5.0, help="servers' drain grace, s (default 5)")
    p.add_argument("--no-restart", action="store_true", help="leave replica A down after its SIGTERM")
    p.add_argument("--window", type=float, default=10.0, help="latency window, s (default 10)")
    p.add_argument("--sample-every", type=float, default=2.0, help="RSS/fd sampling period, s (default 2)")
    p.add_argument("--rss-target-pct", type=float, default=5.0, help="RSS growth after warm-up that passes (5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--no-docs", action="store_true", help="write nothing under docs/")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document on stdout")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak; exit 0 when it passed."""
    args = parse_args(argv)
    report = asyncio.run(soak(args))
    if not args.no_docs:
        from lstm_bench.soak_report import write_docs

        write_docs(report, args.docs)
    if args.json:
        print(json.dumps(report))
    verdict = report["verdict"]
    log(f"soak {'passed' if verdict['passed'] else 'FAILED'}: {verdict['unexpected_errors']} unexpected errors, "
        f"{verdict['leaked_sessions']} leaked sessions, RSS growth {verdict['rss_growth_pct']} %")
    return 0 if verdict["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
