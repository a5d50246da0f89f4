"""The session rows of ``make bench``: what portable sessions and the shared store
cost, measured in one run on this machine.

- resume tokens: seal and open microseconds per bundled model (in process), and the
  server's CPU per chunk with a token every chunk, every 10 chunks, and never;
- the Redis store: Predict with ``session_id`` alternating between two replicas that
  share a real redis-server, against one replica with the in-memory store (added p50
  and p99 per call); streams with write-back every 10 chunks (and every chunk) against
  the memory store (server CPU per chunk); store operation p50/p99 from the servers'
  own histograms.

``python scripts/lstm_bench/sessions_bench.py [--json] [--no-docs]`` (``make bench-sessions``)
prints the tables and writes them into docs/benchmarks.md between
``<!-- sessions:begin -->`` and ``<!-- sessions:end -->``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstm_bench import REPO, log, write_marked
from lstm_bench.measure import percentiles_ms, process_cpu_s
from lstm_client.launch import ServerProcess, free_port, run_server, scrape
from lstm_serve import snapshot
from lstm_serve.repository import ModelRepository
from lstm_serve.state import SessionState, now_ms
from lstm_serve.tokens import TokenSealer, load_keys, write_key_file

BEGIN, END = "<!-- sessions:begin -->", "<!-- sessions:end -->"
MODEL, FEATURES, FRAMES = "har", 6, 10


def _chunk(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((FRAMES, FEATURES)).astype(np.float32)


def token_costs(keys: Path, rounds: int = 2000) -> list[dict[str, Any]]:
    """Seal and open microseconds of a fresh session's token, per bundled model."""
    repository = ModelRepository.load(REPO / "models", ["CPUExecutionProvider"])
    sealer = TokenSealer(load_keys(keys), 1 << 20)
    rows = []
    for entry in repository:
        if not entry.ready or entry.runtime is None or not entry.runtime.manifest.causal:
            continue
        manifest, runtime = entry.runtime.manifest, entry.runtime
        state = SessionState(
            session_id="bench", model=entry_ref(entry), model_hash=runtime.content_hash,
            states=tuple(runtime.zero_states(1)),
        )
        started = time.perf_counter()
        for _ in range(rounds):
            token = sealer.seal(snapshot.encode(state, manifest, now_ms() + 60_000))
        sealed = time.perf_counter()
        for _ in range(rounds):
            snapshot.decode(sealer.open(token, "resume_token"), manifest, runtime.content_hash, "resume_token")
        opened = time.perf_counter()
        rows.append({
            "model": entry.name, "token_bytes": len(token),
            "seal_us": (sealed - started) / rounds * 1e6, "open_us": (opened - sealed) / rounds * 1e6,
        })
    return rows


def entry_ref(entry: Any) -> Any:
    from lstm_serve.domain import ModelRef

    return ModelRef(entry.name, entry.version)


@contextlib.contextmanager
def server(env: dict[str, str] | None = None, args: list[str] | None = None) -> Iterator[ServerProcess]:
    log_path = Path(tempfile.mkstemp(prefix="lstm-serve-bench-sessions-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "lstm_serve.main", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
           "--models", str(REPO / "models"), *(args or [])]
    with run_server(cmd, None, None, log_path, env=env, cwd=REPO) as running:
        yield running


@contextlib.contextmanager
def redis() -> Iterator[tuple[int, int]]:
    """A throwaway redis-server on loopback, ready: its port and pid."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True,
                             check=False).stdout.strip() != "PONG":
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def stream_cpu(target: ServerProcess, streams: int, chunks: int, token_every: int = 0) -> float:
    """Server CPU microseconds per chunk of ``streams`` concurrent har streams."""
    def one(seed: int) -> None:
        with target.client() as client:
            client.stream(MODEL, [_chunk(seed + n) for n in range(chunks)], token_every=token_every, timeout=300)

    threads = [threading.Thread(target=one, args=(1000 * i,)) for i in range(streams)]
    cpu = process_cpu_s(target.process.pid)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (process_cpu_s(target.process.pid) - cpu) / (streams * chunks) * 1e6


def predict_latency(replicas: list[ServerProcess], calls: int, session: str) -> dict[str, float]:
    """Per-call latency of Predict continuing one session, alternating replicas."""
    clients = [r.client() for r in replicas]
    samples = []
    try:
        for n in range(calls):
            client = clients[n % len(clients)]
            started = time.perf_counter()
            client.predict(MODEL, _chunk(n), session_id=session, frame_offset=n * FRAMES)
            samples.append(time.perf_counter() - started)
    finally:
        for client in clients:
            client.close()
    return percentiles_ms(samples)


def store_ops(replicas: list[ServerProcess]) -> dict[str, dict[str, float]]:
    """p50/p99 milliseconds of each store op, from the servers' histograms."""
    buckets: dict[str, dict[float, float]] = {}
    for replica in replicas:
        for key, value in scrape(replica.metrics_url).items():
            if not key.startswith("lstm_serve_store_op_seconds_bucket{"):
                continue
            labels = dict(part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(","))
            op, le = labels["op"].strip('"'), float(labels["le"].strip('"'))
            buckets.setdefault(op, {})[le] = buckets.setdefault(op, {}).get(le, 0.0) + value
    result = {}
    for op, counts in buckets.items():
        edges = sorted(counts)
        total = counts[edges[-1]]
        if total == 0:
            continue

        def quantile(q: float, edges: list[float] = edges, counts: dict[float, float] = counts,
                     total: float = total) -> float:
            lower, below = 0.0, 0.0
            for edge in edges:
                if counts[edge] >= q * total:
                    if edge == float("inf"):
                        return lower * 1000
                    share = (q * total - below) / max(counts[edge] - below, 1e-12)
                    return (lower + share * (edge - lower)) * 1000
                lower, below = edge, counts[edge]
            return lower * 1000

        result[op] = {"count": total, "p50_ms": quantile(0.5), "p99_ms": quantile(0.99)}
    return result


def measure(streams: int, chunks: int, calls: int) -> dict[str, Any]:
    results: dict[str, Any] = {"streams": streams, "chunks": chunks, "calls": calls}
    with tempfile.TemporaryDirectory() as tmp:
        keys = Path(tmp) / "keys.json"
        write_key_file(keys)
        log("resume tokens: seal/open per model")
        results["tokens"] = token_costs(keys)
        with server(args=["--token-keys", str(keys)]) as one:
            stream_cpu(one, 2, 50)  # warm-up
            results["token_every"] = {
                str(every): stream_cpu(one, streams, chunks, token_every=every) for every in (0, 10, 1)
            }
    log("in-memory store: Predict latency and stream CPU")
    with server() as memory:
        predict_latency([memory], 20, "warm-up")
        results["predict_memory"] = predict_latency([memory], calls, "measured")
        stream_cpu(memory, 2, 50)
        results["stream_memory_us"] = stream_cpu(memory, streams, chunks)
    log("Redis store: two replicas")
    with redis() as (port, _):
        url = {"LSTM_SERVE_SESSIONS__STORE_URL": f"redis://127.0.0.1:{port}/0"}
        with server(env=url) as a, server(env=url) as b:
            predict_latency([a, b], 20, "warm-up")
            results["predict_redis"] = predict_latency([a, b], calls, "measured")
            stream_cpu(a, 2, 50)
            results["stream_redis_wb10_us"] = stream_cpu(a, streams, chunks)
            results["store_ops"] = store_ops([a, b])
        with server(env={**url, "LSTM_SERVE_SESSIONS__WRITE_BACK_CHUNKS": "1"}) as every:
            stream_cpu(every, 2, 50)
            results["stream_redis_wb1_us"] = stream_cpu(every, streams, chunks)
    return results


def markdown(r: dict[str, Any]) -> str:
    mem, red = r["predict_memory"], r["predict_redis"]
    lines = [
        f"One run on this machine; `{MODEL}`, {FRAMES} frames a chunk or call; {r['streams']} streams x "
        f"{r['chunks']} chunks for CPU per chunk, {r['calls']} sequential Predict calls for latency.",
        "",
        "| resume token, fresh session | bytes | seal us | open us |",
        "|---|---|---|---|",
        *(f"| `{t['model']}` | {t['token_bytes']} | {t['seal_us']:.1f} | {t['open_us']:.1f} |" for t in r["tokens"]),
        "",
        "| stream, tokens | server CPU us/chunk | vs never |",
        "|---|---|---|",
    ]
    never = r["token_every"]["0"]
    for every, label in (("0", "never"), ("10", "every 10 chunks"), ("1", "every chunk")):
        lines.append(f"| {label} | {r['token_every'][every]:.0f} | {r['token_every'][every] / never:.2f} |")
    lines += [
        "",
        "| Predict with session_id | p50 ms | p99 ms |",
        "|---|---|---|",
        f"| one replica, in-memory store | {mem['p50']:.2f} | {mem['p99']:.2f} |",
        f"| two replicas alternating, Redis | {red['p50']:.2f} | {red['p99']:.2f} |",
        f"| added by Redis | {red['p50'] - mem['p50']:+.2f} | {red['p99'] - mem['p99']:+.2f} |",
        "",
        "| stream store | server CPU us/chunk | vs memory (target <= 1.05 at write-back 10) |",
        "|---|---|---|",
        f"| in-memory | {r['stream_memory_us']:.0f} | 1.00 |",
        f"| Redis, write-back every 10 chunks | {r['stream_redis_wb10_us']:.0f} | "
        f"{r['stream_redis_wb10_us'] / r['stream_memory_us']:.2f} |",
        f"| Redis, write-back every chunk | {r['stream_redis_wb1_us']:.0f} | "
        f"{r['stream_redis_wb1_us'] / r['stream_memory_us']:.2f} |",
        "",
        "| store op | count | p50 ms | p99 ms |",
        "|---|---|---|---|",
        *(f"| `{op}` | {v['count']:.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} |"
          for op, v in sorted(r["store_ops"].items())),
        "",
        "Reproduce: `make bench-sessions` (or `python scripts/lstm_bench/sessions_bench.py --json`).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams (default 8)")
    parser.add_argument("--chunks", type=int, default=300, help="chunks per stream (default 300)")
    parser.add_argument("--calls", type=int, default=400, help="Predict calls (default 400)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = measure(args.streams, args.chunks, args.calls)
    block = markdown(results)
    if not args.no_docs:
        write_marked(REPO / "docs" / "benchmarks.md", BEGIN, END, block, "Sessions: resume tokens and the Redis store")
    print(json.dumps(results, indent=2) if args.json else block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
