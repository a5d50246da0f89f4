"""Stacking and unstacking recurrent states along the batch axis: the one module that
knows the layout ``[layers * directions, batch, hidden]``.

Many sessions share one onnxruntime call by stacking their states along
:data:`STATE_BATCH_AXIS`; the results are split back per session. Every state tensor
of a model is handled alike, whatever their number (h and c for an LSTM, h for a GRU).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

STATE_BATCH_AXIS = 1
"""The batch axis of every recurrent state tensor."""

States = list[np.ndarray]
"""A model's recurrent state tensors, in manifest order."""


def zeros(shapes: Sequence[tuple[int, int]], batch: int) -> States:
    """Zero states for ``batch`` sequences; ``shapes`` holds (layers, hidden) per tensor."""
    return [np.zeros((layers, batch, hidden), dtype=np.float32) for layers, hidden in shapes]


def stack(parts: Sequence[States]) -> States:
    """One batch of states from the states of several steps, in order."""
    if len(parts) == 1:
        return list(parts[0])
    return [np.concatenate([p[k] for p in parts], axis=STATE_BATCH_AXIS) for k in range(len(parts[0]))]


def split(states: States, sizes: Sequence[int]) -> list[States]:
    """The inverse of :func:`stack`: each step's rows, as read-only values that share
    nothing with the batch (copies when there are several steps, so that an idle
    session does not keep its whole batch alive). Run on the executor thread, this
    is the only copy a step's states get."""
    if len(sizes) == 1:
        parts = [list(states)]
    else:
        parts, offset = [], 0
        for size in sizes:
            parts.append([s[:, offset : offset + size].copy() for s in states])
            offset += size
    for part in parts:
        for array in part:
            array.flags.writeable = False
    return parts


def take(states: States, rows: np.ndarray) -> States:
    """The states of the batch rows ``rows`` (a copy)."""
    return [s[:, rows] for s in states]


def put(target: States, rows: np.ndarray, values: States) -> None:
    """Write ``values`` into the batch rows ``rows`` of ``target``."""
    for dst, src in zip(target, values, strict=True):
        dst[:, rows] = src
