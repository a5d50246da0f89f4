"""The training loop shared by every recipe, and onnxruntime inference on packages.

:func:`fit` trains with Adam, evaluates on the validation split after every epoch and
keeps the weights of the best validation epoch (model selection never sees the test
split). :func:`load_runtime` loads an exported package into the server's own
:class:`~lstm_serve.runtime.ModelRuntime`, so the test figures recorded in a manifest
are measured on the served graph, run the way the server runs it.
"""

from __future__ import annotations

import copy
import os
import random
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lstm_serve.manifest import MODEL_FILE, load_manifest
from lstm_serve.runtime import ModelRuntime
from lstm_train.model import RecurrentNet

Batch = tuple[torch.Tensor, ...]
#: ``loss_fn(net, batch) -> (loss, correct, counted)``
LossFn = Callable[[RecurrentNet, Batch], tuple[torch.Tensor, int, int]]
#: ``evaluate(net) -> (val_loss, val_accuracy)``
EvalFn = Callable[[RecurrentNet], tuple[float, float]]


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, and make torch deterministic on CPU."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def set_threads(default: int | None = None) -> None:
    """Set torch's intra-op threads: ``LSTM_TRAIN_THREADS`` if set, else ``default``,
    else the CPUs available (at most 4)."""
    n = int(os.environ.get("LSTM_TRAIN_THREADS", "0")) or default or min(os.cpu_count() or 1, 4)
    torch.set_num_threads(n)


@dataclass
class History:
    """Per-epoch figures and the selected epoch."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    train_seconds: float = 0.0

    @property
    def best(self) -> dict[str, float]:
        """The figures of the selected epoch."""
        return self.epochs[self.best_epoch - 1]


def fit(
    net: RecurrentNet,
    *,
    batches: Callable[[int], Iterable[Batch]],
    loss_fn: LossFn,
    evaluate: EvalFn,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    clip: float = 1.0,
    desc: str = "train",
    quiet: bool = False,
    lr_final_fraction: float = 0.05,
    keep_last: bool = False,
) -> History:
    """Train ``net`` in place; at the end it holds the best validation epoch's weights.

    ``batches(epoch)`` yields the epoch's batches. The learning rate follows a cosine
    schedule down to ``lr * lr_final_fraction``. Selection: highest validation
    accuracy, ties broken by lower validation loss; with ``keep_last``, the last
    epoch's weights (for a validation split too small to select on).
    """
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, T_max=max(epochs, 1), eta_min=lr * lr_final_fraction
    )
    history = History()
    best_key: tuple[float, float] | None = None
    best_state = copy.deepcopy(net.state_dict())
    start = time.perf_counter()
    bar = tqdm(range(1, epochs + 1), desc=desc, file=sys.stderr, disable=quiet, unit="epoch")
    for epoch in bar:
        net.train()
        total_loss, total_correct, total_count, n_batches = 0.0, 0, 0, 0
        for batch in batches(epoch):
            opt.zero_grad()
            loss, correct, count = loss_fn(net, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            opt.step()
            total_loss += float(loss.detach())
            total_correct += correct
            total_count += count
            n_batches += 1
        sched.step()
        net.eval()
        with torch.no_grad():
            val_loss, val_acc = evaluate(net)
        row = {
            "epoch": float(epoch),
            "train_loss": total_loss / max(n_batches, 1),
            "train_accuracy": total_correct / max(total_count, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
        }
        history.epochs.append(row)
        key = (val_acc, -val_loss)
        if keep_last or best_key is None or key > best_key:
            best_key = key
            best_state = copy.deepcopy(net.state_dict())
            history.best_epoch = epoch
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val_acc:.3f}")
    history.train_seconds = time.perf_counter() - start
    net.load_state_dict(best_state)
    net.eval()
    return history


def load_runtime(package_dir: Path) -> ModelRuntime:
    """An exported package loaded into the server's own :class:`ModelRuntime`, on CPU
    with one thread, as ``lstm-serve`` runs it by default."""
    return ModelRuntime(load_manifest(package_dir), package_dir, ["CPUExecutionProvider"])


def run_whole(runtime: ModelRuntime, x: np.ndarray) -> np.ndarray:
    """The outputs for whole sequences ``x`` (``[batch, time, feature_dim]``), each
    from zero states."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return runtime.run(x, runtime.zero_states(x.shape[0]))[0]


@dataclass(frozen=True)
class RunOptions:
    """What the CLI passes to every recipe."""

    out: Path
    version: str = "1"
    seed: int = 0
    quick: bool = False
    quiet: bool = False
    epochs: int | None = None


def package_size_bytes(package: Path) -> int:
    """Bytes of ``model.onnx`` in a package."""
    return (package / MODEL_FILE).stat().st_size
