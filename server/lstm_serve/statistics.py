"""Per-model inference statistics in the shape of Triton's statistics extension:
cumulative counts and nanoseconds since the server started.

Prometheus histograms (:mod:`lstm_serve.metrics`) are for dashboards; these are the
totals the Open Inference Protocol's ``ModelStatistics`` reports, which perf_analyzer
reads to split a request's time into queue, compute input, infer and output.

- ``success`` and ``fail``: every inference request of any API, whole duration.
- ``queue``: time a step waited in the batcher before its onnxruntime call.
- ``compute_input``, ``compute_infer``, ``compute_output``: for each step, stacking
  the inputs and states of its batch, the onnxruntime call, and splitting the results
  back (a step shares its batch's times, as a request does in Triton). The three
  counts are always equal, as perf_analyzer requires.
- ``inference_count``: sequences (batch rows) inferred; ``execution_count``:
  onnxruntime calls, so their ratio is the batching gain.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from lstm_serve.domain import ModelRef


@dataclass
class Duration:
    """How many times something happened and the nanoseconds it took in all."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        """Count ``count`` occurrences that took ``seconds`` in all."""
        self.count += count
        self.ns += int(seconds * 1e9)


@dataclass
class BatchDuration:
    """The onnxruntime calls of one batch size."""

    compute_infer: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """The totals of one model version."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchDuration] = field(default_factory=dict)

    def executed(self, steps: list[int], stacking_s: float, infer_s: float, splitting_s: float) -> None:
        """One onnxruntime call ran the steps of ``steps`` rows each."""
        self.execution_count += 1
        self.inference_count += sum(steps)
        count = len(steps)
        self.compute_input.add(stacking_s * count, count)
        self.compute_infer.add(infer_s * count, count)
        self.compute_output.add(splitting_s * count, count)
        self.batches.setdefault(sum(steps), BatchDuration()).compute_infer.add(infer_s)
        self.last_inference_ms = int(time.time() * 1000)


class StatsBook:
    """The statistics of every model version, created on first use."""

    def __init__(self) -> None:
        self._models: dict[ModelRef, ModelStats] = {}

    def of(self, ref: ModelRef) -> ModelStats:
        """The totals of ``ref`` (a resolved name and version)."""
        stats = self._models.get(ref)
        if stats is None:
            stats = self._models[ref] = ModelStats()
        return stats

    def __iter__(self) -> Iterator[tuple[ModelRef, ModelStats]]:
        return iter(sorted(self._models.items(), key=lambda item: (item[0].name, item[0].version)))
