"""Sensor-sequence recipes (``har``, ``har-gru``, ``vowels``) and ``reference``.

Data come from the UEA archive sets bundled in the sktime wheel (no network):

- BasicMotions: 6 channels (3-axis accelerometer and gyroscope) x 100 steps,
  4 activities, 40 train / 40 test;
- JapaneseVowels: 12 LPC cepstra per frame, 9 speakers, 7-29 frames,
  270 train / 370 test.

The official test split is held out: the validation split is carved from the
training split (stratified), selects the epoch, and the test split is evaluated once,
with onnxruntime on the exported graph.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lstm_train.export import build_manifest, export_package, update_provenance
from lstm_train.model import NetConfig, RecurrentNet
from lstm_train.report import confusion_matrix, write_reports
from lstm_train.train import (
    Batch,
    History,
    RunOptions,
    fit,
    load_runtime,
    package_size_bytes,
    run_whole,
    seed_everything,
    set_threads,
)

FLOORS = {"har": 0.975, "har-gru": 0.975, "vowels": 0.97}


@dataclass
class SequenceData:
    """Sequences ``[T_i, F]`` with integer labels."""

    x: list[np.ndarray]
    y: np.ndarray
    labels: list[str]


def _nested_to_list(frame: Any) -> list[np.ndarray]:
    rows = []
    for i in range(len(frame)):
        cols = [np.asarray(frame.iloc[i, j], dtype=np.float32) for j in range(frame.shape[1])]
        rows.append(np.stack(cols, axis=1))
    return rows


def load_dataset(name: str, split: str) -> SequenceData:
    """``basic_motions`` or ``japanese_vowels``, ``train`` or ``test``, from sktime."""
    from sktime.datasets import load_basic_motions, load_japanese_vowels

    loader = {"basic_motions": load_basic_motions, "japanese_vowels": load_japanese_vowels}[name]
    frame, target = loader(split=split, return_type="nested_univ")
    x = _nested_to_list(frame)
    labels = sorted({str(t) for t in target}, key=lambda s: (len(s), s))
    index = {lab: i for i, lab in enumerate(labels)}
    y = np.array([index[str(t)] for t in target], dtype=np.int64)
    return SequenceData(x, y, labels)


def stratified_split(
    y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, val)`` with ``fraction`` of each class in val (at least one)."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = max(1, round(len(idx) * fraction))
        val_idx += idx[:n_val].tolist()
        train_idx += idx[n_val:].tolist()
    return np.array(sorted(train_idx)), np.array(sorted(val_idx))


def _subset(data: SequenceData, idx: np.ndarray) -> SequenceData:
    return SequenceData([data.x[i] for i in idx], data.y[idx], data.labels)


def _stats(data: SequenceData) -> tuple[list[float], list[float]]:
    flat = np.concatenate(data.x)
    return flat.mean(0).tolist(), np.maximum(flat.std(0), 1e-3).tolist()


def _by_length(data: SequenceData) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, seq in enumerate(data.x):
        groups.setdefault(seq.shape[0], []).append(i)
    return groups


def _batches(
    data: SequenceData, batch: int, seed: int, noise: float, crop: float = 0.0
) -> Callable[[int], Iterable[Batch]]:
    """Batches of equal-length sequences (no padding reaches the recurrent net).

    ``noise`` adds Gaussian noise scaled by each channel's spread; ``crop`` drops a
    random head of up to that fraction of every sequence in a batch, so that a
    streaming model does not depend on where the sequence starts."""
    groups = _by_length(data)

    def gen(epoch: int) -> Iterable[Batch]:
        rng = np.random.default_rng(seed * 1000 + epoch)
        chunks = []
        for idx in groups.values():
            order = rng.permutation(idx)
            chunks += [order[i : i + batch] for i in range(0, len(order), batch)]
        for k in rng.permutation(len(chunks)):
            idx = chunks[k]
            x = np.stack([data.x[i] for i in idx])
            if crop:
                x = x[:, int(rng.integers(0, int(x.shape[1] * crop) + 1)) :]
            if noise:
                x = x + rng.standard_normal(x.shape).astype(np.float32) * noise * x.std(
                    axis=(0, 1), keepdims=True
                )
            yield torch.from_numpy(x.astype(np.float32)), torch.from_numpy(data.y[idx])

    return gen


def _sequence_logits(net: RecurrentNet, x: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` logits: the sequence head, or the last frame of a per-frame head."""
    out = net.logits(x, *net.zero_states(x.shape[0]))[0]
    return out[:, -1] if net.config.head == "per_frame" else out


def _loss_fn(frame_weight: float) -> Callable[[RecurrentNet, Batch], tuple[torch.Tensor, int, int]]:
    def loss_fn(net: RecurrentNet, batch: Batch) -> tuple[torch.Tensor, int, int]:
        x, y = batch
        out = net.logits(x, *net.zero_states(x.shape[0]))[0]
        if net.config.head == "per_frame":
            last = out[:, -1]
            loss = F.cross_entropy(last, y)
            if frame_weight:
                # every frame from a quarter in also learns the label, so the streamed
                # per-frame outputs are meaningful before the sequence ends
                t0 = out.shape[1] // 4
                frames = out[:, t0:].reshape(-1, out.shape[-1])
                loss = loss + frame_weight * F.cross_entropy(
                    frames, y.repeat_interleave(out.shape[1] - t0)
                )
        else:
            last = out
            loss = F.cross_entropy(out, y)
        return loss, int((last.argmax(-1) == y).sum()), len(y)

    return loss_fn


def _evaluator(data: SequenceData) -> Callable[[RecurrentNet], tuple[float, float]]:
    groups = _by_length(data)

    def evaluate(net: RecurrentNet) -> tuple[float, float]:
        loss, correct = 0.0, 0
        for idx in groups.values():
            x = torch.from_numpy(np.stack([data.x[i] for i in idx]))
            y = torch.from_numpy(data.y[idx])
            logits = _sequence_logits(net, x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
        return loss / len(data.y), correct / len(data.y)

    return evaluate


def predict_package(package_dir: Path, data: SequenceData) -> np.ndarray:
    """Predicted class per sequence, one sequence at a time through onnxruntime
    (``Predict``'s path); a per-frame head's sequence label is its last frame."""
    runtime = load_runtime(package_dir)
    preds = []
    for seq in data.x:
        y = run_whole(runtime, seq[None])
        last = y[0, -1] if runtime.manifest.output.head == "per_frame" else y[0]
        preds.append(int(np.argmax(last)))
    return np.array(preds)


@dataclass(frozen=True)
class SensorRecipe:
    """One sensor recipe's data, architecture and schedule."""

    name: str
    dataset: str
    description: str
    cell: str
    bidirectional: bool
    hidden: int
    layers: int
    epochs: int
    lr: float
    batch: int
    val_fraction: float
    noise: float
    frame_rate_hz: float
    frame_weight: float
    crop: float = 0.0
    dropout: float = 0.0
    weight_decay: float = 1e-4
    pooling: str = "mean"
    #: keep the last epoch instead of the best validation epoch
    keep_last: bool = False


SENSOR_RECIPES = {
    "har": SensorRecipe(
        name="har", dataset="basic_motions",
        description="Activity recognition (standing, walking, running, badminton) from a "
        "smartwatch's accelerometer and gyroscope (UEA BasicMotions, 10 Hz); per-frame "
        "outputs, the last frame's is the sequence label.",
        cell="lstm", bidirectional=False, hidden=64, layers=1, epochs=80, lr=5e-3, batch=8,
        val_fraction=0.2, noise=0.1, frame_rate_hz=10.0, frame_weight=0.5, weight_decay=1e-2,
    ),
    "har-gru": SensorRecipe(
        name="har-gru", dataset="basic_motions",
        description="The har task with a GRU: one recurrent state (h) instead of two.",
        cell="gru", bidirectional=False, hidden=64, layers=1, epochs=80, lr=5e-3, batch=8,
        val_fraction=0.2, noise=0.1, frame_rate_hz=10.0, frame_weight=0.5, weight_decay=1e-2,
    ),
    "vowels": SensorRecipe(
        name="vowels", dataset="japanese_vowels",
        description="Speaker identification (9 speakers) from 12 LPC cepstra per frame "
        "(UEA JapaneseVowels); bidirectional LSTM over the whole utterance with attention "
        "pooling (a learned weighted sum over time), Predict only.",
        cell="lstm", bidirectional=True, hidden=128, layers=1, epochs=120, lr=3e-3, batch=16,
        val_fraction=0.15, noise=0.2, frame_rate_hz=100.0, frame_weight=0.0, dropout=0.0,
        weight_decay=1e-3, pooling="attention", keep_last=True,
    ),
}

DATASET_TITLES = {
    "basic_motions": "UEA BasicMotions (sktime bundled data): 40 train / 40 test",
    "japanese_vowels": "UEA JapaneseVowels (sktime bundled data): 270 train / 370 test",
}


def run_sensor(recipe: SensorRecipe, opts: RunOptions) -> dict[str, Any]:
    """Train, export and evaluate one sensor recipe; returns the figures."""
    seed_everything(opts.seed)
    set_threads(1)  # small nets: one thread is fastest and keeps runs reproducible
    full = load_dataset(recipe.dataset, "train")
    train_idx, val_idx = stratified_split(full.y, recipe.val_fraction, opts.seed)
    train, val = _subset(full, train_idx), _subset(full, val_idx)
    mean, std = _stats(train)
    cfg = NetConfig(
        input_dim=train.x[0].shape[1], output_dim=len(full.labels),
        hidden=8 if opts.quick else recipe.hidden, layers=recipe.layers,
        cell=recipe.cell,  # type: ignore[arg-type]
        bidirectional=recipe.bidirectional,
        head="sequence" if recipe.bidirectional else "per_frame", dropout=recipe.dropout,
        pooling=recipe.pooling,  # type: ignore[arg-type]
        mean=mean, std=std,
    )
    net = RecurrentNet(cfg)
    epochs = opts.epochs or (2 if opts.quick else recipe.epochs)
    history = fit(
        net, batches=_batches(train, recipe.batch, opts.seed, recipe.noise, recipe.crop),
        loss_fn=_loss_fn(recipe.frame_weight), evaluate=_evaluator(val), epochs=epochs,
        lr=recipe.lr, weight_decay=recipe.weight_decay, desc=recipe.name, quiet=opts.quiet,
        keep_last=recipe.keep_last,
    )
    manifest = build_manifest(
        net, name=recipe.name, version=opts.version, frame_rate_hz=recipe.frame_rate_hz,
        labels=full.labels, description=recipe.description,
        provenance={
            "dataset": DATASET_TITLES[recipe.dataset],
            "seed": opts.seed,
            "quick": opts.quick,
            "split": f"validation: {len(val_idx)} of the {len(full.y)} training sequences "
            "(stratified); test: the official test split, evaluated once",
            "val_accuracy": history.best["val_accuracy"],
            "train_seconds": round(history.train_seconds, 1),
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
        },
    )
    package = export_package(net, manifest, opts.out)
    test = load_dataset(recipe.dataset, "test")
    preds = predict_package(package, test)  # the one look at the test split
    acc = float(np.mean(preds == test.y))
    final = update_provenance(package, test_accuracy=round(acc, 6))
    cm = confusion_matrix(test.y, preds, len(test.labels))
    summary: dict[str, Any] = {
        "model": recipe.name,
        "version": opts.version,
        "architecture": final.architecture,
        "test_accuracy": acc,
        "test_sequences": len(test.y),
        "floor": FLOORS[recipe.name],
        "val_accuracy": history.best["val_accuracy"],
        "best_epoch": history.best_epoch,
        "train_seconds": round(history.train_seconds, 1),
        "model_bytes": package_size_bytes(package),
        "seed": opts.seed,
        "quick": opts.quick,
    }
    write_reports(
        package, title=f"{recipe.name} v{opts.version}", summary=summary, history=history,
        labels=test.labels, confusion=cm, parity=final.provenance.parity,
        notes=[recipe.description, DATASET_TITLES[recipe.dataset]],
    )
    return {**summary, "package": str(package), "parity": final.provenance.parity}


def run_reference(opts: RunOptions) -> dict[str, Any]:
    """Export the random-weight benchmark model (I=40, H=256, 2 layers, 12 outputs)."""
    seed_everything(opts.seed)
    set_threads()
    start = time.perf_counter()
    cfg = NetConfig(input_dim=40, output_dim=12, hidden=256, layers=2, head="per_frame")
    net = RecurrentNet(cfg)
    labels = [f"class_{i}" for i in range(12)]
    manifest = build_manifest(
        net, name="reference", version=opts.version, frame_rate_hz=100.0, labels=labels,
        description="Random weights, for benchmarks only: the size of a typical streaming "
        "acoustic LSTM.",
        provenance={"dataset": "none (random weights)", "seed": opts.seed},
    )
    package = export_package(net, manifest, opts.out)
    final = update_provenance(package)
    summary: dict[str, Any] = {
        "model": "reference",
        "version": opts.version,
        "architecture": final.architecture,
        "export_seconds": round(time.perf_counter() - start, 1),
        "model_bytes": package_size_bytes(package),
        "seed": opts.seed,
    }
    write_reports(
        package, title=f"reference v{opts.version}", summary=summary, history=History(),
        labels=labels, confusion=None, parity=final.provenance.parity,
        notes=["Random weights; no training data and no accuracy."],
    )
    return {**summary, "package": str(package), "parity": final.provenance.parity}


def _sensor(recipe: SensorRecipe) -> Callable[[RunOptions], dict[str, Any]]:
    def run(opts: RunOptions) -> dict[str, Any]:
        return run_sensor(recipe, opts)

    return run


RECIPES: dict[str, Callable[[RunOptions], dict[str, Any]]] = {
    **{name: _sensor(recipe) for name, recipe in SENSOR_RECIPES.items()},
    "reference": run_reference,
}
