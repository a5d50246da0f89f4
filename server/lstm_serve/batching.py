"""Cross-session dynamic batching.

Each model version has one :class:`Batcher`. Callers submit *steps*: the frames of
one or more sequences of the same length ``[rows, time, feature_dim]`` plus their
recurrent states (each ``[layers, rows, hidden]``), or, for a stream with a front-end,
the function that makes its frames and the one that takes its outputs. The batcher
collects pending steps up to ``max_batch_size`` rows, waiting at most ``max_delay``
counted from the first step (but not at all while recent batches held about one step
each: at low load waiting only adds latency), and hands the batch to the executor
thread in one hop (:mod:`lstm_serve.batch_job`): front-ends, one onnxruntime call per
group of equal length, read-only per-step states, spotters. The event loop only
resolves each waiter's future.

While a batch runs, new steps queue up, so batches grow with load on their own: at
low load a step runs at once, straight from its caller when the batcher is idle (no
hop through the batcher's task), at high load many sessions share each call.

- The queue is bounded: a full queue refuses new steps with :class:`Overloaded`.
- There is no polling: the loop sleeps on the queue and on the delay timer only.
- When a call fails, every waiter of that group gets the error.
- With batching disabled (``max_batch_size=1``) every step runs alone: the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

import numpy as np

from lstm_serve.batch_job import BatchJob, PreparedResult, Step, StepResult, Timing
from lstm_serve.domain import ModelRef
from lstm_serve.errors import Draining, Overloaded
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry, ModelRepository
from lstm_serve.runtime import ModelRuntime
from lstm_serve.settings import BatchingSettings
from lstm_serve.statistics import ModelStats, StatsBook

log = logging.getLogger(__name__)

LONE_BATCH_THRESHOLD = 1.5
"""While recent batches average fewer steps than this, a step that finds the queue
empty runs at once instead of waiting ``max_delay`` for company that is not coming."""

QUEUE_FULL_PUSHBACK_MS = 50
"""The retry delay a refusal for a full batch queue suggests (about a few batches)."""

BATCH_SIZE_SMOOTHING = 0.2
"""Weight of the newest batch in the moving average of batch sizes."""


class Batcher:
    """Batches the steps of many sessions of one model version."""

    def __init__(
        self,
        runtime: ModelRuntime,
        executor: Executor,
        metrics: Metrics,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        stats: ModelStats | None = None,
    ) -> None:
        self.runtime = runtime
        self._stats = stats if stats is not None else ModelStats()
        self._job = BatchJob(runtime, metrics, self._stats)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._executor = executor
        self._queue: deque[Step] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        """What the loop waits on while the queue is empty: a submit or the delay timer
        resolves it (no task per wait, unlike ``asyncio.wait_for``)."""
        self._task: asyncio.Task[None] | None = None
        self._carry: Step | None = None
        """A step taken from the queue that did not fit the batch being collected; it
        opens the next one."""
        self._closed = False
        self._busy = False
        """A batch (or a lone step) is being collected or run: a new step queues."""
        self._idle: asyncio.Future[None] | None = None
        """What the loop waits on while a lone step runs (:meth:`_run_alone`)."""
        self._recent_batch = 1.0

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name=f"batcher-{self.runtime.manifest.name}"
            )

    async def close(self) -> None:
        """Stop the loop and fail every step still waiting."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        waiting = [self._carry] if self._carry is not None else []
        self._carry = None
        waiting.extend(self._queue)
        self._queue.clear()
        for step in waiting:
            if not step.future.done():
                step.future.set_exception(Draining("server is shutting down"))

    async def submit(self, x: np.ndarray, states: list[np.ndarray]) -> StepResult:
        """Run one sequence: ``x`` is ``[time, feature_dim]``; states are ``[layers, 1, hidden]``.

        Returns the step's outputs (without the batch axis) and its new states (with a
        batch axis of 1).
        """
        outputs, new_states = await self.submit_rows(x[np.newaxis], states)
        return outputs[0], new_states

    async def submit_rows(self, x: np.ndarray, states: list[np.ndarray]) -> StepResult:
        """Run same-length sequences together: ``x`` is ``[rows, time, feature_dim]``
        with ``rows <= max_batch_size``; states are ``[layers, rows, hidden]``.

        Returns the outputs and the new states, both with the ``rows`` batch axis.
        """
        if x.shape[0] > self.max_batch_size:
            raise ValueError(f"{x.shape[0]} rows exceed max_batch_size {self.max_batch_size}")
        result: StepResult = await self._submit(x, states, None, None)
        return result

    async def submit_prepared(
        self,
        prepare: Callable[[], np.ndarray] | None,
        features: np.ndarray | None,
        states: list[np.ndarray],
        finish: Callable[[np.ndarray | None], Any] | None,
    ) -> PreparedResult:
        """Run one sequence whose frames ``prepare`` produces (a front-end; else
        ``features``, ``[time, feature_dim]``) and whose outputs ``finish`` takes (a
        spotter), both on the executor thread with the model call, in one hop."""
        x = features[np.newaxis] if prepare is None and features is not None else None
        result: PreparedResult = await self._submit(x, states, prepare, finish, prepared=True)
        return result

    async def _submit(
        self, x: np.ndarray | None, states: list[np.ndarray], prepare: Callable[[], np.ndarray] | None,
        finish: Callable[[np.ndarray | None], Any] | None, *, prepared: bool = False,
    ) -> Any:
        if self._closed:
            raise Draining("server is shutting down; retry on another replica")
        if len(self._queue) >= self.max_queue:
            raise Overloaded(
                f"model '{self.runtime.manifest.name}': batch queue is full ({self.max_queue} "
                "steps waiting; LSTM_SERVE_BATCHING__MAX_QUEUE). Retry with backoff or add "
                "replicas.",
                retry_after_ms=QUEUE_FULL_PUSHBACK_MS,
            )
        loop = asyncio.get_running_loop()
        step = Step(x, states, loop.create_future(), time.perf_counter(), prepare, finish, prepared)
        if self._lone_runs_now():
            return await self._run_alone(loop, step)
        self._queue.append(step)
        _resolve(self._wakeup)
        return await step.future

    def _lone_runs_now(self) -> bool:
        return (
            self._task is not None and not self._busy and not self._queue and self._carry is None
            and self._recent_batch < LONE_BATCH_THRESHOLD
        )

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, step: Step) -> Any:
        """Run a step that finds the batcher idle at low load straight from its caller:
        the batch it would form holds it alone, and this saves the two hops through the
        batcher's task (there and back). Steps that arrive meanwhile queue, and the loop
        collects them once this one is done, as after any batch."""
        self._busy = True
        try:
            (result,), timings = await loop.run_in_executor(self._executor, self._job.run, [step])
        finally:
            self._busy = False
            _resolve(self._idle)
        self._recent_batch += BATCH_SIZE_SMOOTHING * (step.rows - self._recent_batch)
        self._record(timings)
        if isinstance(result, Exception):
            raise result
        return result

    async def _next_step(self, timeout: float | None) -> Step | None:
        """The carried-over step, else the next queued one, waiting at most ``timeout``
        (None: forever; 0: only what is already there)."""
        if self._carry is not None:
            step, self._carry = self._carry, None
            return step
        if self._queue:
            return self._queue.popleft()
        if timeout is not None and timeout <= 0:
            return None
        loop = asyncio.get_running_loop()
        self._wakeup = wakeup = loop.create_future()
        timer = loop.call_later(timeout, _resolve, wakeup) if timeout is not None else None
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()
        return self._queue.popleft() if self._queue else None

    async def _collect(self, first: Step) -> list[Step]:
        batch, rows = [first], first.rows
        deadline = first.enqueued + self.max_delay_s
        while rows < self.max_batch_size:
            waiting = self._carry is not None or bool(self._queue)
            if not waiting and self._recent_batch < LONE_BATCH_THRESHOLD:
                break
            step = await self._next_step(deadline - time.perf_counter() if not waiting else 0)
            if step is None:
                break
            if rows + step.rows > self.max_batch_size:
                self._carry = step
                break
            batch.append(step)
            rows += step.rows
        return batch

    async def _loop(self) -> None:
        while True:
            first = await self._next_step(None)
            assert first is not None
            collected = [first]
            try:
                while self._busy:
                    self._idle = asyncio.get_running_loop().create_future()
                    try:
                        await self._idle
                    finally:
                        self._idle = None
                self._busy = True
                collected = await self._collect(first)
                rows = sum(s.rows for s in collected)
                self._recent_batch += BATCH_SIZE_SMOOTHING * (rows - self._recent_batch)
                await self._execute([s for s in collected if not s.future.done()])
            except asyncio.CancelledError:
                for step in collected:
                    if not step.future.done():
                        step.future.set_exception(Draining("server is shutting down"))
                raise
            finally:
                self._busy = False

    async def _execute(self, batch: list[Step]) -> None:
        loop = asyncio.get_running_loop()
        try:
            results, timings = await loop.run_in_executor(self._executor, self._job.run, batch)
        except Exception as exc:
            log.exception("batch of %d failed", len(batch))
            results, timings = [exc] * len(batch), []
        for step, result in zip(batch, results, strict=True):
            if step.future.done():
                continue
            if isinstance(result, Exception):
                step.future.set_exception(result)
            else:
                step.future.set_result(result)
        self._record(timings)

    def _record(self, timings: list[tuple[list[int], Timing]]) -> None:
        for rows, timing in timings:
            self._stats.executed(rows, *timing)


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


def build_batcher(
    entry: ModelEntry, executor: Executor, metrics: Metrics, settings: BatchingSettings, stats: StatsBook
) -> Batcher:
    """The (unstarted) batcher of one ready model version."""
    enabled = settings.enabled and entry.name not in settings.disabled_models
    return Batcher(
        entry.require_runtime(),
        executor,
        metrics,
        max_batch_size=settings.max_batch_size if enabled else 1,
        max_delay_s=settings.max_delay_ms / 1000 if enabled else 0.0,
        max_queue=settings.max_queue,
        stats=stats.of(ModelRef(entry.name, entry.version)),
    )


def build_batchers(
    repository: ModelRepository, executor: Executor, metrics: Metrics, settings: BatchingSettings, stats: StatsBook
) -> dict[ModelRef, Batcher]:
    """One batcher per ready model version (unstarted; the service starts them)."""
    return {
        ModelRef(entry.name, entry.version): build_batcher(entry, executor, metrics, settings, stats)
        for entry in repository
        if entry.runtime is not None
    }
