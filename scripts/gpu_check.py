"""GPU check: on a CUDA machine, CUDA (or TensorRT) is chosen and matches the CPU.

Run with ``make gpu-check``. It exports a small LSTM with the project's export code
unless ``--model DIR`` names a package, lets the provider policy pick providers,
runs the same inputs on the chosen GPU provider and on the CPU, and asserts that the
outputs and states agree within 1e-4. Without a GPU it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from lstm_serve.manifest import load_manifest
from lstm_serve.providers import choose_providers
from lstm_serve.runtime import ModelRuntime

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
TOLERANCE = 1e-4


def _fixture_package(root: Path) -> Path:
    import torch

    from lstm_train.export import build_manifest, export_package
    from lstm_train.model import NetConfig, RecurrentNet

    torch.manual_seed(0)
    net = RecurrentNet(NetConfig(input_dim=40, output_dim=12, hidden=256, layers=2))
    labels = [str(i) for i in range(12)]
    manifest = build_manifest(net, name="gpucheck", version="1", frame_rate_hz=100.0, labels=labels)
    return export_package(net, manifest, root)


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a model package folder (default: export a reference LSTM)")
    parser.add_argument("--json", action="store_true", help="print the findings as one JSON document")
    args = parser.parse_args(argv)
    available = ort.get_available_providers()
    chosen = choose_providers(["auto"], available)
    report: dict[str, object] = {"available": available, "chosen": chosen, "device": ort.get_device()}
    if not any(p in chosen for p in GPU_PROVIDERS):
        report["result"] = "skipped: no CUDA/TensorRT provider in this onnxruntime build or machine"
        print(json.dumps(report) if args.json else f"gpu-check: {report['result']} (available: {available})")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        package = args.model or _fixture_package(Path(tmp))
        manifest = load_manifest(package)
        gpu = ModelRuntime(manifest, package, chosen)
        cpu = ModelRuntime(manifest, package, ["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        worst = 0.0
        for batch, frames in ((1, 1), (1, 100), (32, 10), (64, 50)):
            x = rng.standard_normal((batch, frames, manifest.input.feature_dim)).astype(np.float32)
            y_gpu, s_gpu = gpu.run(x, gpu.zero_states(batch))
            y_cpu, s_cpu = cpu.run(x, cpu.zero_states(batch))
            worst = max(worst, float(np.abs(y_gpu - y_cpu).max()))
            worst = max(worst, *(float(np.abs(a - b).max()) for a, b in zip(s_gpu, s_cpu, strict=True)))
        report.update(session_providers=gpu.providers, max_abs_diff=worst, tolerance=TOLERANCE)
        ok = worst <= TOLERANCE and gpu.providers[0] in GPU_PROVIDERS
        report["result"] = "pass" if ok else "FAIL"
    print(json.dumps(report) if args.json else "\n".join(f"{k}: {v}" for k, v in report.items()))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
