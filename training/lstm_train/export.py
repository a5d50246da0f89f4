"""Export a :class:`~lstm_train.model.RecurrentNet` to a servable model package.

The package is ``<root>/<name>/<version>/{model.onnx,manifest.json}``. Export uses
torch's TorchScript-based exporter (``dynamo=False``), which emits ONNX's native LSTM
and GRU ops with dynamic batch and time axes. After export it checks the graph's
input shapes, and runs the three parity checks of DESIGN §3.2, failing above
``tolerance``:

- ``ort_vs_torch``: onnxruntime (the server's :class:`~lstm_serve.runtime.ModelRuntime`)
  against PyTorch on whole sequences;
- ``chunked_vs_whole``: the sequence cut into chunks with the state carried, against
  the whole sequence (causal models only);
- ``batch_vs_single``: a batch against each sequence alone.

Each figure is the largest ``|a - b| / max(1, |b|)`` over the output and every state
tensor: the absolute difference for values within [-1, 1] (softmax outputs, ``h``),
relative above (an LSTM cell state ``c`` is unbounded). The figures go into the
manifest's ``provenance.parity``.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from lstm_serve.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    FeatureFrontend,
    InputSpec,
    KeywordPostprocess,
    LogMelFrontend,
    Manifest,
    Normalization,
    OutputSpec,
    Provenance,
    StatePair,
)
from lstm_serve.runtime import ModelRuntime
from lstm_train.model import RecurrentNet

OPSET = 17
DEFAULT_TOLERANCE = 1e-5


class ExportError(RuntimeError):
    """The exported graph failed a shape or parity check."""


def build_manifest(
    net: RecurrentNet,
    *,
    name: str,
    version: str,
    frame_rate_hz: float,
    labels: list[str],
    description: str = "",
    task: str = "classification",
    frontend: LogMelFrontend | None = None,
    postprocess: KeywordPostprocess | None = None,
    provenance: dict[str, Any] | None = None,
) -> Manifest:
    """The manifest describing ``net`` once exported."""
    cfg = net.config
    normalization = (
        Normalization(mean=list(map(float, cfg.mean)), std=list(map(float, cfg.std)))
        if cfg.mean
        else None
    )
    states = [
        StatePair(
            name=state,
            input=f"{state}0",
            output=f"{state}N",
            layers=cfg.state_layers,
            hidden=cfg.hidden,
        )
        for state in cfg.state_names
    ]
    arch = (
        f"{'bi' if cfg.bidirectional else 'uni'}directional {cfg.cell.upper()}, "
        f"{cfg.layers} layer(s), hidden {cfg.hidden}, {cfg.head} head"
        + (" (attention pooling)" if cfg.pooling == "attention" else "")
        + (" (last-state pooling)" if cfg.pooling == "last" and cfg.bidirectional else "")
    )
    return Manifest(
        name=name,
        version=version,
        description=description,
        architecture=arch,
        input=InputSpec(
            feature_dim=cfg.input_dim, frame_rate_hz=frame_rate_hz, normalization=normalization
        ),
        frontend=frontend if frontend is not None else FeatureFrontend(),
        output=OutputSpec(
            head=cfg.head,
            task=task,
            dim=cfg.output_dim,
            labels=labels,
            activation=cfg.activation,
            postprocess=postprocess,
        ),
        states=states,
        causal=not cfg.bidirectional,
        provenance=Provenance(**(provenance or {})),
    )


def _export_onnx(net: RecurrentNet, path: Path) -> None:
    cfg = net.config
    example_x = torch.zeros(2, 5, cfg.input_dim)
    states = net.zero_states(2)
    input_names = ["x", *(f"{s}0" for s in cfg.state_names)]
    output_names = ["y", *(f"{s}N" for s in cfg.state_names)]
    axes: dict[str, dict[int, str]] = {"x": {0: "batch", 1: "time"}}
    axes["y"] = {0: "batch", 1: "time"} if cfg.head == "per_frame" else {0: "batch"}
    for s in cfg.state_names:
        axes[f"{s}0"] = {1: "batch"}
        axes[f"{s}N"] = {1: "batch"}
    # The exporter warns about batch sizes whenever h0/c0 are not graph inputs; ours
    # are, so the warning does not apply.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*batch_size other than 1.*")
        # torch.nn.LSTM's own shape checks trip the tracer; they hold for every input
        # the manifest allows, and the dynamic-axes and parity checks below confirm it.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        # The legacy exporter is chosen on purpose (native LSTM/GRU ops, dynamic axes).
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        torch.onnx.export(
            net,
            (example_x, *states),
            str(path),
            dynamo=False,
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=axes,
            opset_version=OPSET,
        )


def _check_dynamic_axes(path: Path) -> None:
    for arg in onnx.load(str(path), load_external_data=False).graph.input:
        dims = arg.type.tensor_type.shape.dim
        dynamic = [0, 1] if arg.name == "x" else [1]
        for axis in dynamic:
            if dims[axis].HasField("dim_value"):
                raise ExportError(
                    f"input '{arg.name}' axis {axis} is fixed to {dims[axis].dim_value} after "
                    "export; expected a dynamic axis"
                )


def _run(runtime: ModelRuntime, x: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
    """The output followed by the new states, in manifest order."""
    y, new_states = runtime.run(x, states)
    return [y, *new_states]


def _diff(got: np.ndarray, ref: np.ndarray) -> float:
    """Max of ``|got - ref| / max(1, |ref|)``: the absolute difference wherever the
    reference is at most 1 in magnitude (every output and ``h``, bounded by softmax
    and tanh), the relative one above (an LSTM's cell state ``c`` is unbounded, and
    float32 cannot hold ``c = 30`` to 1e-5 absolute)."""
    a = np.asarray(got, np.float64)
    b = np.asarray(ref, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


def parity_checks(
    net: RecurrentNet, runtime: ModelRuntime, seed: int = 0, frames: int = 37
) -> dict[str, float]:
    """Run the three parity checks on random inputs; returns the largest
    difference per check over the output and every state (see :func:`_diff`)."""
    cfg = net.config
    names = cfg.state_names
    if [s.input for s in runtime.manifest.states] != [f"{n}0" for n in names]:
        raise ExportError(f"manifest states {runtime.manifest.states} do not match {names}")
    rng = np.random.default_rng(seed)
    mean = np.asarray(cfg.mean or [0.0] * cfg.input_dim, dtype=np.float32)
    std = np.asarray(cfg.std or [1.0] * cfg.input_dim, dtype=np.float32)
    batch = 4
    x = (rng.standard_normal((batch, frames, cfg.input_dim)) * std + mean).astype(np.float32)
    zeros = [s.numpy() for s in net.zero_states(batch)]
    with torch.no_grad():
        ref = [t.numpy() for t in net(torch.from_numpy(x), *map(torch.from_numpy, zeros))]
    got = _run(runtime, x, zeros)
    figures = {"ort_vs_torch": max(_diff(a, b) for a, b in zip(got, ref, strict=True))}

    singles = [_run(runtime, x[i : i + 1], [z[:, :1] for z in zeros]) for i in range(batch)]
    batch_diff = 0.0
    for i, single in enumerate(singles):
        batch_diff = max(batch_diff, _diff(single[0][0], got[0][i]))
        for k in range(len(names)):
            batch_diff = max(batch_diff, _diff(single[1 + k][:, 0], got[1 + k][:, i]))
    figures["batch_vs_single"] = batch_diff

    if cfg.bidirectional:
        return figures
    cuts = [0, 1, 8, 9, 23, frames]
    states = [z[:, :1] for z in zeros]
    pieces = []
    for start, stop in itertools.pairwise(cuts):
        out = _run(runtime, x[:1, start:stop], states)
        pieces.append(out[0])
        states = out[1:]
    if cfg.head == "per_frame":
        chunked = np.concatenate(pieces, axis=1)
        diff = _diff(chunked, got[0][:1])
    else:
        diff = _diff(pieces[-1], got[0][:1])
    for k in range(len(names)):
        diff = max(diff, _diff(states[k], got[1 + k][:, :1]))
    figures["chunked_vs_whole"] = diff
    return figures


def export_package(
    net: RecurrentNet,
    manifest: Manifest,
    root: Path,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    overwrite: bool = True,
) -> Path:
    """Export ``net`` to ``root/<name>/<version>/`` and return that folder.

    The package is written to a temporary folder first and moved into place only
    after every check passed, so a failed export never leaves a broken package in a
    served repository.
    """
    net = net.eval()
    target = root / manifest.name / manifest.version
    with tempfile.TemporaryDirectory(prefix="lstm-export-") as tmp:
        work = Path(tmp) / manifest.version
        work.mkdir()
        onnx_path = work / MODEL_FILE
        _export_onnx(net, onnx_path)
        _check_dynamic_axes(onnx_path)
        # The graph runs in the server's own runtime, loaded with the manifest as built
        # so far (its tensors are final; only the provenance grows below). Loading it
        # checks the manifest against the graph's inputs and outputs.
        runtime = ModelRuntime(manifest, work, ["CPUExecutionProvider"])
        figures = parity_checks(net, runtime)
        worst = max(figures.values())
        if worst > tolerance:
            raise ExportError(f"parity check failed: {figures} (tolerance {tolerance})")
        provenance = manifest.provenance.model_dump()
        provenance.update(
            exporter=f"torch.onnx.export (dynamo=False), torch {torch.__version__}",
            opset=OPSET,
            parity=figures,
        )
        final = manifest.model_copy(update={"provenance": Provenance(**provenance)})
        (work / MANIFEST_FILE).write_text(
            json.dumps(final.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
        )
        if target.exists():
            if not overwrite:
                raise FileExistsError(f"{target} exists")
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(work), str(target))
    return target


def update_provenance(package: Path, **fields: Any) -> Manifest:
    """Add ``fields`` to the provenance of an exported package's manifest, in place.

    Used to record figures measured on the exported graph itself (test accuracy,
    event F1), which only exist after export. The result is validated again.
    """
    from lstm_serve.manifest import load_manifest

    manifest = load_manifest(package)
    provenance = manifest.provenance.model_dump()
    provenance.update(fields)
    final = manifest.model_copy(update={"provenance": Provenance(**provenance)})
    final = Manifest.model_validate(final.model_dump(mode="json"))
    (package / MANIFEST_FILE).write_text(
        json.dumps(final.model_dump(mode="json", exclude_none=True), indent=2) + "\n"
    )
    return final
