"""The PNG figures of one run (written under ``docs/img/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import LATENCY_TARGET_MS, SATURATION_STREAMS


def plot(results: dict[str, Any], img: Path) -> list[str]:
    """PNG plots; returns their paths relative to docs/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    servers = results["servers"]
    cores = results["machine"].get("nproc") or results["machine"].get("cpu_count")
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
    ax.set_title(f"Chunk latency vs streams (reference LSTM, {cores} cores)")
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
