"""What one batch does on the executor thread, in one hop from the event loop.

For every step: its front-end first, when it has one (audio to log-mel frames); then
the steps are grouped by length (steps of different lengths never share a call, so
no padding ever touches a state), each group is stacked along the batch axis, run in
one onnxruntime call and split back into read-only per-step states; last, each
step's finisher, when it has one (the keyword spotter over its outputs). A step whose
front-end, group or finisher fails gets its own error; the others are unaffected.

Doing all of it here leaves the event loop only the resolution of the waiters: an
audio chunk costs one hop to this thread and back, not three.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstm_serve import stacking
from lstm_serve.metrics import Metrics
from lstm_serve.runtime import ModelRuntime
from lstm_serve.statistics import ModelStats

log = logging.getLogger(__name__)

StepResult = tuple[np.ndarray, list[np.ndarray]]
"""A plain step's outputs and new states, both with the step's rows as batch axis."""

Timing = tuple[float, float, float]
"""Seconds spent stacking, running and splitting one group."""


@dataclass(frozen=True)
class PreparedResult:
    """What a step with a front-end or a finisher gets back."""

    frames: int
    """Frames its front-end produced (0: the model did not run)."""
    outputs: np.ndarray | None
    """``[frames, dim]``, without the batch axis; None when no frame was produced."""
    states: list[np.ndarray]
    """The new states (the old ones when no frame was produced)."""
    finished: Any
    """What its finisher returned (None without one)."""


@dataclass(slots=True)
class Step:
    """One caller's step, waiting in the batcher."""

    x: np.ndarray | None
    """``[rows, time, feature_dim]``, or None until ``prepare`` has run."""
    states: list[np.ndarray]
    """Each ``[layers, rows, hidden]``."""
    future: asyncio.Future[Any]
    enqueued: float
    prepare: Callable[[], np.ndarray] | None = None
    """Produces the step's ``[time, feature_dim]`` frames, on the executor thread."""
    finish: Callable[[np.ndarray | None], Any] | None = None
    """Takes the step's outputs (None for no frames), on the executor thread."""
    prepared: bool = False
    """The caller wants a :class:`PreparedResult`, not a plain ``StepResult``."""

    @property
    def rows(self) -> int:
        return int(self.x.shape[0]) if self.x is not None else 1


class BatchJob:
    """Runs batches of one model version on the executor thread."""

    def __init__(self, runtime: ModelRuntime, metrics: Metrics, stats: ModelStats) -> None:
        self.runtime = runtime
        self._stats = stats
        name, version = runtime.manifest.name, runtime.manifest.version
        self._queue_wait = metrics.queue_wait.labels(name, version)
        self._compute = metrics.compute.labels(name, version)
        self._batch_size = metrics.batch_size.labels(name, version)
        self._frames = metrics.frames.labels(name, version)

    def run(self, steps: list[Step]) -> tuple[list[Any], list[tuple[list[int], Timing]]]:
        """Each step's result or exception, in order, and each group's rows and timing."""
        picked_up = time.perf_counter()
        for step in steps:
            wait = picked_up - step.enqueued
            self._queue_wait.observe(wait)
            self._stats.queue.add(wait)
        outcome: dict[int, Any] = {}
        groups: dict[int, list[int]] = defaultdict(list)
        for i, step in enumerate(steps):
            if step.prepare is not None:
                try:
                    step.x = step.prepare()[np.newaxis]
                except Exception as exc:
                    outcome[i] = exc
                    continue
            assert step.x is not None
            if step.x.shape[1]:
                groups[step.x.shape[1]].append(i)
            else:
                outcome[i] = (None, step.states)
        timings = []
        for members in groups.values():
            group = [steps[i] for i in members]
            try:
                results, timing = self._run_group(group)
            except Exception as exc:
                log.exception("batch of %d failed", len(group))
                outcome.update((i, exc) for i in members)
                continue
            outcome.update(zip(members, results, strict=True))
            timings.append(([s.rows for s in group], timing))
        return [self._finished(step, outcome[i]) for i, step in enumerate(steps)], timings

    @staticmethod
    def _finished(step: Step, result: Any) -> Any:
        if isinstance(result, Exception) or not step.prepared:
            return result
        assert step.x is not None
        outputs, states = result
        rows = outputs[0] if outputs is not None else None
        try:
            finished = step.finish(rows) if step.finish is not None else None
        except Exception as exc:
            return exc
        return PreparedResult(int(step.x.shape[1]), rows, states, finished)

    def _run_group(self, group: list[Step]) -> tuple[list[StepResult], Timing]:
        """Stack, run, split and time one same-length group: each step's outputs and
        its own read-only states."""
        stacking_started = time.perf_counter()
        xs = [s.x for s in group]
        x = xs[0] if len(group) == 1 else np.concatenate(xs)  # type: ignore[arg-type]
        assert x is not None
        states = stacking.stack([s.states for s in group])
        started = time.perf_counter()
        outputs, new_states = self.runtime.run(x, states)
        seconds = time.perf_counter() - started
        splitting = time.perf_counter()
        results: list[StepResult] = []
        offset = 0
        for step, own in zip(group, stacking.split(new_states, [s.rows for s in group]), strict=True):
            end = offset + step.rows
            results.append((outputs[offset:end] if len(group) > 1 else outputs, own))
            offset = end
        self._compute.observe(seconds)
        self._batch_size.observe(x.shape[0])
        self._frames.inc(x.shape[0] * x.shape[1])
        return results, (started - stacking_started, seconds, time.perf_counter() - splitting)
