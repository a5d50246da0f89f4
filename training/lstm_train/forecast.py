"""``forecast``: a streaming forecaster with a regression head (manifest ``task: regression``).

Data: the UEA BasicMotions recordings bundled in the sktime wheel (real smartwatch
sensors, no network): 3-axis accelerometer and 3-axis gyroscope at 10 Hz, 100 steps per
recording, 40 train / 40 test recordings of standing, walking, running and badminton.

Task: at every step ``t`` of a stream, predict the next ``k`` = 5 steps (0.5 s) of all
6 channels from the stream so far. The output frame ``y[t]`` has ``k * 6`` values,
step-major: ``y[t].reshape(k, 6)[j]`` is the forecast of ``x[t + 1 + j]`` (labels
``"t+1:acc_x"`` ... ``"t+5:gyr_z"`` name them in order). The net is a unidirectional
LSTM whose head adds a learned increment to the last frame (a residual forecast), in
input units, inside the graph.

Splits: validation is a stratified 20 % of the official train recordings and selects
the epoch (lowest validation MAE in channel-normalized units) and the baselines'
settings; the official test recordings are held out and evaluated once, through
onnxruntime, streamed in chunks with the state carried (``StreamPredict``'s path) and
checked against the whole-sequence run (``Predict``'s path).

Figures (on every test step ``t`` from :data:`WARMUP` - 1, once 10 frames were seen,
to ``T - k - 1``, all 5 horizons and 6 channels):

- ``mae`` / ``rmse`` in raw sensor units (the accelerometer and gyroscope mixed);
- ``zmae``: MAE in units of each channel's training standard deviation (every channel
  weighs the same); the recipe's target is to beat both baselines on ``mae``;
- baselines on the same steps: persistence (the last value for every horizon) and a
  linear autoregressive model (ridge least squares on the last ``p`` frames of all
  channels, predicting the increments; ``p`` and the ridge weight chosen on validation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lstm_train.export import build_manifest, export_package, update_provenance
from lstm_train.model import NetConfig, RecurrentNet
from lstm_train.recipes import DATASET_TITLES, load_dataset, stratified_split
from lstm_train.report import REPORT_JSON, REPORT_MD, write_reports
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

NAME = "forecast"
HORIZON = 5
WARMUP = 10
CHANNELS = ["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"]
STREAM_CHUNK = 7  # frames per chunk in the streamed evaluation (uneven on purpose)
FORECAST_PNG = "forecast.png"
CURVES_PNG = "curves.png"
AR_LAGS = (2, 5, 10)
AR_RIDGE = (1.0, 10.0, 100.0)
DESCRIPTION = (
    "Forecasts the next 5 steps (0.5 s) of a smartwatch's 3-axis accelerometer and "
    "gyroscope (UEA BasicMotions, 10 Hz) at every step of a stream; regression head, "
    "output y[t] = the 5 x 6 future frames, step-major. Streams."
)


def output_labels(k: int = HORIZON) -> list[str]:
    """``"t+1:acc_x"`` ... in output order (step-major)."""
    return [f"t+{j + 1}:{c}" for j in range(k) for c in CHANNELS]


def targets(x: np.ndarray, k: int = HORIZON) -> np.ndarray:
    """``[N, T, k, C]`` future frames; NaN past the end of each sequence."""
    n, t, c = x.shape
    y = np.full((n, t, k, c), np.nan, np.float32)
    for j in range(1, k + 1):
        y[:, : t - j, j - 1] = x[:, j:]
    return y


def score(pred: np.ndarray, x: np.ndarray, std: np.ndarray, k: int = HORIZON) -> dict[str, float]:
    """MAE, RMSE (raw units) and channel-normalized MAE of ``pred`` ``[N, T, k, C]``
    on steps ``WARMUP - 1 .. T - k - 1`` of ``x``."""
    err = (pred - targets(x, k))[:, WARMUP - 1 : x.shape[1] - k]
    return {
        "mae": float(np.abs(err).mean()),
        "rmse": float(np.sqrt((err.astype(np.float64) ** 2).mean())),
        "zmae": float(np.abs(err / std).mean()),
    }


def persistence(x: np.ndarray, k: int = HORIZON) -> np.ndarray:
    """The last value for every horizon."""
    return np.repeat(x[:, :, None, :], k, axis=2)


class LinearAR:
    """Ridge least squares from the last ``p`` normalized frames (zero-order hold before
    the start) to the next ``k`` increments over the last frame."""

    def __init__(self, p: int, ridge: float, mean: np.ndarray, std: np.ndarray,
                 k: int = HORIZON) -> None:
        self.p, self.ridge, self.mean, self.std, self.k = p, ridge, mean, std, k
        self.weights = np.zeros((0, 0))

    def _features(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        n, t, c = z.shape
        feats = np.ones((n, t, self.p * c + 1), np.float64)
        for lag in range(self.p):
            feats[:, lag:, lag * c : (lag + 1) * c] = z[:, : t - lag]
            feats[:, :lag, lag * c : (lag + 1) * c] = z[:, :1]
        return feats

    def fit(self, x: np.ndarray) -> LinearAR:
        z = (x - self.mean) / self.std
        inc = ((targets(x, self.k) - self.mean) / self.std - z[:, :, None, :])
        inc = inc.reshape(*inc.shape[:2], -1)
        mask = ~np.isnan(inc).any(-1)
        mask[:, : self.p - 1] = False
        a, b = self._features(x)[mask], inc[mask]
        self.weights = np.linalg.solve(a.T @ a + self.ridge * np.eye(a.shape[1]), a.T @ b)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = (x - self.mean) / self.std
        inc = (self._features(x) @ self.weights).reshape(*x.shape[:2], self.k, x.shape[2])
        return ((inc + z[:, :, None, :]) * self.std + self.mean).astype(np.float32)


def choose_ar(train: np.ndarray, val: np.ndarray, mean: np.ndarray, std: np.ndarray,
              k: int = HORIZON) -> tuple[LinearAR, dict[str, float]]:
    """The (p, ridge) with the lowest validation MAE; refit on ``train``."""
    best: tuple[float, LinearAR] | None = None
    for p in AR_LAGS:
        for ridge in AR_RIDGE:
            model = LinearAR(p, ridge, mean, std, k).fit(train)
            mae = score(model.predict(val), val, std, k)["mae"]
            if best is None or mae < best[0]:
                best = (mae, model)
    assert best is not None
    return best[1], {"p": best[1].p, "ridge": best[1].ridge, "val_mae": best[0]}


def stream_package(package: Path, x: np.ndarray, chunk: int = STREAM_CHUNK
                   ) -> tuple[np.ndarray, float]:
    """Forecasts ``[N, T, k, C]`` streamed in chunks with the state carried, one
    sequence at a time, and the largest difference from the whole-sequence run."""
    runtime = load_runtime(package)
    k = runtime.manifest.output.dim // x.shape[2]
    preds, worst = [], 0.0
    for seq in np.asarray(x, np.float32):
        whole = run_whole(runtime, seq[None])
        states = runtime.zero_states(1)
        pieces = []
        for start in range(0, seq.shape[0], chunk):
            out, states = runtime.run(np.ascontiguousarray(seq[None, start : start + chunk]), states)
            pieces.append(out)
        streamed = np.concatenate(pieces, axis=1)
        worst = max(worst, float(np.max(np.abs(streamed - whole) / np.maximum(1.0, np.abs(whole)))))
        preds.append(streamed[0].reshape(seq.shape[0], k, x.shape[2]))
    return np.stack(preds), worst


def evaluate_package(package: Path, x: np.ndarray, std: np.ndarray) -> dict[str, Any]:
    """The package's figures on ``x``, streamed (see :func:`stream_package`)."""
    pred, stream_diff = stream_package(package, x)
    figures: dict[str, Any] = score(pred, x, std)
    figures["stream_vs_whole"] = stream_diff
    figures["pred"] = pred
    return figures


def _batches(z: np.ndarray, y: np.ndarray, batch: int, seed: int, noise: float
             ) -> Callable[[int], Iterable[Batch]]:
    def gen(epoch: int) -> Iterable[Batch]:
        rng = np.random.default_rng(seed * 1000 + epoch)
        for idx in np.array_split(rng.permutation(len(z)), max(1, len(z) // batch)):
            xb = z[idx] + rng.standard_normal(z[idx].shape).astype(np.float32) * noise
            yield torch.from_numpy(xb), torch.from_numpy(y[idx])

    return gen


def _loss_fn(std: np.ndarray, k: int) -> Callable[[RecurrentNet, Batch], tuple[torch.Tensor, int, int]]:
    inv = torch.from_numpy((1.0 / std).astype(np.float32))

    def loss_fn(net: RecurrentNet, batch: Batch) -> tuple[torch.Tensor, int, int]:
        x, y = batch
        out = net.logits(x, *net.zero_states(x.shape[0]))[0]
        out = out.unflatten(-1, (k, x.shape[-1]))
        mask = ~torch.isnan(y)
        mask[:, : WARMUP - 1] = False
        err = (out - torch.nan_to_num(y)) * inv  # L1 in channel-normalized units
        return err.abs()[mask].mean(), 0, 1

    return loss_fn


def plot_forecast(x: np.ndarray, pred: np.ndarray, ar: np.ndarray, path: Path,
                  title: str) -> None:
    """One held-out recording: truth against the 1-step and 5-step forecasts."""
    import matplotlib.pyplot as plt

    t = np.arange(x.shape[0])
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    for ax, ch in zip(axes, (0, 3), strict=True):
        ax.plot(t, x[:, ch], color="black", lw=1.4, label="truth")
        k = pred.shape[1]
        ax.plot(t[1:], pred[:-1, 0, ch], lw=1, label="LSTM, 1 step ahead")
        ax.plot(t[k:], pred[:-k, k - 1, ch], lw=1, label=f"LSTM, {k} steps ahead")
        ax.plot(t[k:], ar[:-k, k - 1, ch], lw=1, ls=":", label=f"linear AR, {k} steps ahead")
        ax.set_ylabel(CHANNELS[ch])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, ncol=2)
    axes[1].set_xlabel("step (10 Hz)")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(history: History, path: Path, title: str) -> None:
    """Training L1 and validation MAE (normalized units) per epoch."""
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in history.epochs]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot(epochs, [r["train_loss"] for r in history.epochs], label="train L1 (noisy input)")
    ax.plot(epochs, [r["val_loss"] for r in history.epochs], label="validation MAE")
    if history.best_epoch:
        ax.axvline(history.best_epoch, color="grey", ls="--", lw=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (channel std units)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{title} (dashed: selected epoch {history.best_epoch})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(opts: RunOptions) -> dict[str, Any]:
    """Train, export and evaluate the forecaster; returns the figures."""
    seed_everything(opts.seed)
    set_threads(1)
    k = HORIZON
    full = load_dataset("basic_motions", "train")
    train_idx, val_idx = stratified_split(full.y, 0.2, opts.seed)
    x_all = np.stack(full.x).astype(np.float32)
    train, val = x_all[train_idx], x_all[val_idx]
    mean = train.reshape(-1, train.shape[2]).mean(0)
    std = np.maximum(train.reshape(-1, train.shape[2]).std(0), 1e-3)
    cfg = NetConfig(
        input_dim=train.shape[2], output_dim=k * train.shape[2],
        hidden=8 if opts.quick else 64, layers=1, cell="lstm", head="per_frame",
        activation="none", forecast_steps=k, mean=mean.tolist(), std=std.tolist(),
    )
    net = RecurrentNet(cfg)
    noise = 0.05  # input noise in std units, training only
    val_t = torch.from_numpy(val)

    def evaluate(model: RecurrentNet) -> tuple[float, float]:
        out = model.logits(val_t, *model.zero_states(len(val)))[0].numpy()
        zmae = score(out.reshape(*val.shape[:2], k, -1), val, std)["zmae"]
        return zmae, -zmae  # fit() keeps the highest second figure: the lowest MAE

    epochs = opts.epochs or (2 if opts.quick else 80)
    history = fit(
        net, batches=_batches(train, targets(train), 8, opts.seed, noise),
        loss_fn=_loss_fn(std, k), evaluate=evaluate, epochs=epochs, lr=3e-3,
        weight_decay=1e-3, desc=NAME, quiet=opts.quiet, lr_final_fraction=0.03,
    )
    # fit's "accuracy" columns hold -MAE here; keep only the meaningful figures
    for row in history.epochs:
        row.pop("train_accuracy", None)
        row["val_mae_norm"] = row.pop("val_accuracy") * -1
    ar, ar_choice = choose_ar(train, val, mean, std)
    val_figs = evaluate_for(net, val, std)
    manifest = build_manifest(
        net, name=NAME, version=opts.version, frame_rate_hz=10.0, labels=output_labels(k),
        description=DESCRIPTION, task="regression",
        provenance={
            "dataset": DATASET_TITLES["basic_motions"],
            "seed": opts.seed,
            "quick": opts.quick,
            "split": f"validation: {len(val_idx)} of the {len(full.y)} training recordings "
            "(stratified); test: the 40 official test recordings, evaluated once",
            "horizon_steps": k,
            "output_layout": f"y[t] = [{k}, {len(CHANNELS)}] step-major: x[t+1..t+{k}]",
            "warmup_steps": WARMUP,
            "val_mae": val_figs["mae"],
            "train_seconds": round(history.train_seconds, 1),
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
        },
    )
    package = export_package(net, manifest, opts.out)
    test = np.stack(load_dataset("basic_motions", "test").x).astype(np.float32)
    figures = evaluate_package(package, test, std)  # the one look at the test split
    pred = figures.pop("pred")
    base_persist = score(persistence(test), test, std)
    ar_pred = ar.predict(test)
    base_ar = score(ar_pred, test, std)
    final = update_provenance(
        package,
        test_mae=round(figures["mae"], 6), test_rmse=round(figures["rmse"], 6),
        test_zmae=round(figures["zmae"], 6),
        test_stream_vs_whole=figures["stream_vs_whole"],
        baseline_persistence_mae=round(base_persist["mae"], 6),
        baseline_linear_ar_mae=round(base_ar["mae"], 6),
    )
    summary: dict[str, Any] = {
        "model": NAME,
        "version": opts.version,
        "architecture": final.architecture,
        "task": "regression",
        "horizon_steps": k,
        "test_mae": figures["mae"],
        "test_rmse": figures["rmse"],
        "test_zmae": figures["zmae"],
        "persistence_mae": base_persist["mae"],
        "persistence_rmse": base_persist["rmse"],
        "persistence_zmae": base_persist["zmae"],
        "linear_ar_mae": base_ar["mae"],
        "linear_ar_rmse": base_ar["rmse"],
        "linear_ar_zmae": base_ar["zmae"],
        "beats_both_baselines_on_mae": bool(figures["mae"] < min(base_persist["mae"],
                                                                  base_ar["mae"])),
        "test_recordings": len(test),
        "stream_vs_whole": figures["stream_vs_whole"],
        "val_mae": val_figs["mae"],
        "best_epoch": history.best_epoch,
        "train_seconds": round(history.train_seconds, 1),
        "model_bytes": package_size_bytes(package),
        "seed": opts.seed,
        "quick": opts.quick,
        "linear_ar_choice": ar_choice,
        "per_horizon_test_mae": {
            f"t+{j + 1}": float(np.abs((pred - targets(test))[:, WARMUP - 1 : test.shape[1] - k, j]
                                       ).mean())
            for j in range(k)
        },
    }
    title = f"{NAME} v{opts.version}"
    write_reports(
        package, title=title, summary=summary, history=None, labels=output_labels(k),
        confusion=None, parity=final.provenance.parity,
        notes=[DESCRIPTION, DATASET_TITLES["basic_motions"],
               f"Scored on test steps {WARMUP - 1}..{test.shape[1] - k - 1} of each recording "
               "(after 10 frames), all horizons and channels; streamed in chunks of "
               f"{STREAM_CHUNK} frames through onnxruntime with the state carried.",
               "zmae: MAE in units of each channel's training standard deviation."],
    )
    test_set = load_dataset("basic_motions", "test")
    walking = int(np.flatnonzero(test_set.y == test_set.labels.index("walking"))[0])
    plot_forecast(test[walking], pred[walking], ar_pred[walking], package / FORECAST_PNG,
                  f"{title}: held-out test recording {walking}")
    plot_curves(history, package / CURVES_PNG, title)
    doc = json.loads((package / REPORT_JSON).read_text())
    doc["history"] = history.epochs
    doc["best_epoch"] = history.best_epoch
    (package / REPORT_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    with (package / REPORT_MD).open("a") as fh:
        fh.write(f"\n## Forecast against truth (held-out recording)\n\n![forecast]({FORECAST_PNG})\n"
                 f"\n## Training curves\n\n![curves]({CURVES_PNG})\n")
    return {**summary, "package": str(package), "parity": final.provenance.parity}


def evaluate_for(net: RecurrentNet, x: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """Figures of the torch net on ``x`` (validation)."""
    with torch.no_grad():
        out = net(torch.from_numpy(x), *net.zero_states(len(x)))[0].numpy()
    return score(out.reshape(*x.shape[:2], HORIZON, -1), x, std)
