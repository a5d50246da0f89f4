"""Reports written into a model package: report.json, report.md, curves.png, confusion.png.

The server ignores these extra files; they document how the package was made and how
well it does on held-out data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from lstm_train.train import History

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"


def confusion_matrix(true: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """``[n, n]`` counts, rows true class, columns predicted class."""
    cm = np.zeros((n, n), np.int64)
    np.add.at(cm, (np.asarray(true, np.int64), np.asarray(pred, np.int64)), 1)
    return cm


def plot_curves(history: History, path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train and validation, with the selected epoch."""
    epochs = [int(r["epoch"]) for r in history.epochs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(epochs, [r["train_loss"] for r in history.epochs], label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history.epochs], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    ax2.plot(epochs, [r["train_accuracy"] for r in history.epochs], label="train")
    ax2.plot(epochs, [r["val_accuracy"] for r in history.epochs], label="validation")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy")
    ax2.legend()
    for ax in (ax1, ax2):
        if history.best_epoch:
            ax.axvline(history.best_epoch, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (dashed: selected epoch {history.best_epoch})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    """The confusion matrix as an annotated heat map."""
    n = len(labels)
    size = max(4.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=60, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i, j] > top / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value != 0 else f"{value:.4f}"
    return str(value)


def write_reports(
    package: Path,
    *,
    title: str,
    summary: dict[str, Any],
    history: History | None,
    labels: list[str],
    confusion: np.ndarray | None,
    parity: dict[str, float],
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Write the four report files into ``package``; returns the JSON document."""
    doc: dict[str, Any] = {
        "title": title,
        **summary,
        "parity": parity,
        "labels": labels,
        "confusion_matrix": confusion.tolist() if confusion is not None else None,
        "history": history.epochs if history is not None else [],
        "best_epoch": history.best_epoch if history is not None else None,
    }
    (package / REPORT_JSON).write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# {title}", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in summary.items() if not isinstance(v, dict | list)]
    lines += ["", "## Parity (max abs difference, export fails above 1e-5)", ""]
    lines += [f"- {k}: {_fmt(v)}" for k, v in parity.items()]
    for k, v in summary.items():
        if isinstance(v, dict):
            lines += ["", f"## {k}", ""]
            lines += [f"- {kk}: {_fmt(vv)}" for kk, vv in v.items()]
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    if history is not None and history.epochs:
        plot_curves(history, package / CURVES_PNG, title)
        lines += ["", "## Training curves", "", f"![curves]({CURVES_PNG})"]
    if confusion is not None:
        plot_confusion(confusion, labels, package / CONFUSION_PNG, f"{title}: test confusion")
        lines += ["", "## Test confusion matrix (rows: true, columns: predicted)", ""]
        lines += ["| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
        for lab, row in zip(labels, confusion, strict=True):
            lines.append(f"| **{lab}** | " + " | ".join(str(int(c)) for c in row) + " |")
        lines += ["", f"![confusion]({CONFUSION_PNG})"]
    (package / REPORT_MD).write_text("\n".join(lines) + "\n")
    return doc
