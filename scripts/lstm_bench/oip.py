"""The Open Inference Protocol row of ``make bench``: server CPU per chunk of the v2
API (``ModelStreamInfer`` with sequences) against the native ``StreamPredict`` at the
same concurrency and chunk size, both driven by our own load generator in the same
run, and perf_analyzer's own figures beside them.

``python scripts/lstm_bench/oip.py [--concurrency 8 32] [--chunks 200] [--json]``
(``make bench-oip``) prints the table and writes it into docs/benchmarks.md between
``<!-- oip:begin -->`` and ``<!-- oip:end -->``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lstm_bench import REPO, log, write_marked
from lstm_bench.measure import process_cpu_s
from lstm_client.launch import ServerProcess, run_server
from lstmserve.kserve_v2 import grpc_service_pb2 as v2
from lstmserve.kserve_v2 import grpc_service_pb2_grpc as v2_grpc

MODEL, FEATURES, FRAMES = "har", 6, 10
BEGIN, END = "<!-- oip:begin -->", "<!-- oip:end -->"


def _chunk(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((FRAMES, FEATURES)).astype(np.float32)


def _native_worker(server: ServerProcess, chunks: int, seed: int) -> None:
    with server.client() as client:
        client.stream(MODEL, [_chunk(seed + n) for n in range(chunks)], timeout=300)


def _v2_request(n: int, chunks: int, seed: int) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, FRAMES, FEATURES])
    request.raw_input_contents.append(_chunk(seed + n).tobytes())
    request.parameters["sequence_id"].int64_param = seed + 1
    request.parameters["sequence_start"].bool_param = n == 0
    request.parameters["sequence_end"].bool_param = n == chunks - 1
    return request


V2_WINDOW = 16
"""Requests of one v2 stream in flight at once, as gRPC flow control bounds a native
stream's chunks (far below LSTM_SERVE_KSERVE_V2__MAX_STREAM_BACKLOG)."""


def _v2_worker(server: ServerProcess, chunks: int, seed: int) -> None:
    window = threading.Semaphore(V2_WINDOW)

    def requests() -> Iterator[v2.ModelInferRequest]:
        for n in range(chunks):
            window.acquire()
            yield _v2_request(n, chunks, seed)

    with grpc.insecure_channel(server.target) as channel:
        for answer in v2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests(), timeout=300):
            window.release()
            if answer.error_message:
                raise RuntimeError(answer.error_message)


def cpu_per_chunk(server: ServerProcess, worker: Callable[[ServerProcess, int, int], None],
                  concurrency: int, chunks: int) -> dict[str, float]:
    """Server CPU microseconds per chunk with ``concurrency`` streams, each sending its
    chunks as fast as flow control lets it (the requests of one v2 sequence run in
    order, as the chunks of one native stream do)."""
    threads = [threading.Thread(target=worker, args=(server, chunks, 10_000 * i)) for i in range(concurrency)]
    cpu, wall = process_cpu_s(server.process.pid), time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu, wall = process_cpu_s(server.process.pid) - cpu, time.perf_counter() - wall
    total = concurrency * chunks
    return {"cpu_us_per_chunk": cpu / total * 1e6, "chunks_per_s": total / wall}


def perf_analyzer(server: ServerProcess, concurrency: int) -> dict[str, float]:
    """perf_analyzer --streaming with sequences: its throughput and p99, and the
    server CPU per inference over its run."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "pa.csv"
        cpu = process_cpu_s(server.process.pid)
        done = subprocess.run(
            [str(REPO / "scripts" / "perf_analyzer.sh"), "-m", MODEL, "-u", server.target, "-i", "grpc",
             "--streaming", "--shape", f"x:{FRAMES},{FEATURES}", "--sequence-length", "20",
             "--concurrency-range", str(concurrency), "--measurement-interval", "3000",
             "--max-trials", "10", "--stability-percentage", "30", "-f", str(report)],
            capture_output=True, text=True, timeout=300, check=False,
        )
        cpu = process_cpu_s(server.process.pid) - cpu
        if done.returncode != 0 or not report.exists():
            log(f"perf_analyzer found no stable measurement at {concurrency} streams:\n{done.stdout[-800:]}")
            return {"infer_per_s": float("nan"), "p50_ms": float("nan"), "p99_ms": float("nan"),
                    "server_cpu_us_per_infer": float("nan")}
        row = next(csv.DictReader(report.open()))
    served = float(row["Inferences/Second"])
    counted = [int(line.split(":")[1]) for line in done.stdout.splitlines() if "Inference count:" in line]
    return {
        "infer_per_s": served,
        "p50_ms": float(row["p50 latency"]) / 1000,
        "p99_ms": float(row["p99 latency"]) / 1000,
        "server_cpu_us_per_infer": cpu / max(1, sum(counted)) * 1e6 if counted else float("nan"),
    }


def measure(concurrencies: list[int], chunks: int) -> dict[str, Any]:
    """Every row, on one server."""
    log_path = Path(tempfile.mkstemp(prefix="lstm-serve-bench-oip-", suffix=".log")[1])
    cmd = [sys.executable, "-m", "lstm_serve.main", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
           "--models", str(REPO / "models")]
    rows = []
    with run_server(cmd, None, None, log_path, cwd=REPO) as server:
        cpu_per_chunk(server, _native_worker, 4, 20)  # warm-up
        cpu_per_chunk(server, _v2_worker, 4, 20)
        for c in concurrencies:
            log(f"concurrency {c}: native, v2, perf_analyzer")
            native = cpu_per_chunk(server, _native_worker, c, chunks)
            kserve = cpu_per_chunk(server, _v2_worker, c, chunks)
            rows.append({
                "concurrency": c, "native": native, "v2": kserve,
                "v2_over_native_cpu": kserve["cpu_us_per_chunk"] / native["cpu_us_per_chunk"],
                "perf_analyzer": perf_analyzer(server, c),
            })
    return {"model": MODEL, "chunk_frames": FRAMES, "chunks_per_stream": chunks, "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    """The table for docs/benchmarks.md."""
    lines = [
        f"`{results['model']}`, {results['chunk_frames']} frames a chunk, {results['chunks_per_stream']} chunks per "
        "stream, each stream sending as fast as flow control allows; one server process, this run. Target: v2 CPU per "
        "chunk within 15% of native (ratio <= 1.15).",
        "",
        "| streams | native CPU us/chunk | v2 CPU us/chunk | v2 / native | native chunks/s | v2 chunks/s "
        "| perf_analyzer infer/s | p50 ms | p99 ms | server CPU us/infer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        pa = r["perf_analyzer"]
        lines.append(
            f"| {r['concurrency']} | {r['native']['cpu_us_per_chunk']:.0f} | {r['v2']['cpu_us_per_chunk']:.0f} "
            f"| {r['v2_over_native_cpu']:.2f} | {r['native']['chunks_per_s']:.0f} | {r['v2']['chunks_per_s']:.0f} "
            f"| {pa['infer_per_s']:.0f} | {pa['p50_ms']:.1f} | {pa['p99_ms']:.1f} "
            f"| {pa['server_cpu_us_per_infer']:.0f} |"
        )
    lines += ["", "Reproduce: `make bench-oip` (or `python scripts/lstm_bench/oip.py --json`)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32], help="streams (default 8 32)")
    parser.add_argument("--chunks", type=int, default=200, help="chunks per stream (default 200)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    results = measure(args.concurrency, args.chunks)
    block = markdown(results)
    if not args.no_docs:
        write_marked(REPO / "docs" / "benchmarks.md", BEGIN, END, block, "Open Inference Protocol (v2) against native")
    print(json.dumps(results, indent=2) if args.json else block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
