"""Cross-session dynamic batching.

Each model version has one :class:`Batcher`. Callers submit *steps*: the frames of
one or more sequences of the same length ``[rows, time, feature_dim]`` plus their
recurrent states (each ``[layers, rows, hidden]``). The batcher collects pending steps
up to ``max_batch_size`` rows, waiting at most
``max_delay`` counted from the first step (but not at all while recent batches held
about one step each: at low load waiting only adds latency), groups them by length (steps of different
lengths never share a call, so no padding ever touches a state), stacks each group
along the batch axis, and runs one onnxruntime call per group on the executor thread.
The executor thread also splits the results back into read-only per-step values, so
the event loop only resolves each waiter's future.

While a batch runs, new steps queue up, so batches grow with load on their own: at
low load a step runs at once, straight from its caller when the batcher is idle (no
hop through the batcher's task), at high load many sessions share each call.

- The queue is bounded: a full queue refuses new steps with :class:`Overloaded`.
- There is no polling: the loop sleeps on the queue and on the delay timer only.
- When a call fails, every waiter of that batch gets the error.
- With batching disabled (``max_batch_size=1``) every step runs alone: the baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from lstm_serve import stacking
from lstm_serve.domain import ModelRef
from lstm_serve.errors import Draining, Overloaded
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry, ModelRepository
from lstm_serve.runtime import ModelRuntime
from lstm_serve.settings import BatchingSettings
from lstm_serve.statistics import ModelStats, StatsBook

log = logging.getLogger(__name__)

StepResult = tuple[np.ndarray, list[np.ndarray]]

LONE_BATCH_THRESHOLD = 1.5
"""While recent batches average fewer steps than this, a step that finds the queue
empty runs at once instead of waiting ``max_delay`` for company that is not coming."""

QUEUE_FULL_PUSHBACK_MS = 50
"""The retry delay a refusal for a full batch queue suggests (about a few batches)."""

BATCH_SIZE_SMOOTHING = 0.2
"""Weight of the newest batch in the moving average of batch sizes."""


@dataclass(slots=True)
class _Step:
    x: np.ndarray
    """``[rows, time, feature_dim]``."""
    states: list[np.ndarray]
    """Each ``[layers, rows, hidden]``."""
    future: asyncio.Future[StepResult]
    enqueued: float

    @property
    def rows(self) -> int:
        return int(self.x.shape[0])


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
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self._executor = executor
        self._queue: deque[_Step] = deque()
        self._wakeup: asyncio.Future[None] | None = None
        """What the loop waits on while the queue is empty: a submit or the delay timer
        resolves it (no task per wait, unlike ``asyncio.wait_for``)."""
        self._task: asyncio.Task[None] | None = None
        self._carry: _Step | None = None
        """A step taken from the queue that did not fit the batch being collected; it
        opens the next one."""
        self._closed = False
        self._busy = False
        """A batch (or a lone step) is being collected or run: a new step queues."""
        self._idle: asyncio.Future[None] | None = None
        """What the loop waits on while a lone step runs (:meth:`_run_alone`)."""
        self._recent_batch = 1.0
        name, version = runtime.manifest.name, runtime.manifest.version
        self._queue_wait = metrics.queue_wait.labels(name, version)
        self._compute = metrics.compute.labels(name, version)
        self._batch_size = metrics.batch_size.labels(name, version)
        self._frames = metrics.frames.labels(name, version)

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
        if self._closed:
            raise Draining("server is shutting down; retry on another replica")
        if x.shape[0] > self.max_batch_size:
            raise ValueError(f"{x.shape[0]} rows exceed max_batch_size {self.max_batch_size}")
        if len(self._queue) >= self.max_queue:
            raise Overloaded(
                f"model '{self.runtime.manifest.name}': batch queue is full ({self.max_queue} "
                "steps waiting; LSTM_SERVE_BATCHING__MAX_QUEUE). Retry with backoff or add "
                "replicas.",
                retry_after_ms=QUEUE_FULL_PUSHBACK_MS,
            )
        loop = asyncio.get_running_loop()
        step = _Step(x, states, loop.create_future(), time.perf_counter())
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

    async def _run_alone(self, loop: asyncio.AbstractEventLoop, step: _Step) -> StepResult:
        """Run a step that finds the batcher idle at low load straight from its caller:
        the batch it would form holds it alone, and this saves the two hops through the
        batcher's task (there and back). Steps that arrive meanwhile queue, and the loop
        collects them once this one is done, as after any batch."""
        self._busy = True
        try:
            results, timing = await loop.run_in_executor(self._executor, self._run_group, [step])
        except Exception:
            log.exception("batch of 1 failed")
            raise
        finally:
            self._busy = False
            _resolve(self._idle)
        self._recent_batch += BATCH_SIZE_SMOOTHING * (step.rows - self._recent_batch)
        self._stats.executed([step.rows], *timing)
        return results[0]

    async def _next_step(self, timeout: float | None) -> _Step | None:
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

    async def _collect(self, first: _Step) -> list[_Step]:
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

    async def _execute(self, batch: list[_Step]) -> None:
        loop = asyncio.get_running_loop()
        groups: dict[int, list[_Step]] = defaultdict(list)
        for step in batch:
            groups[step.x.shape[1]].append(step)
        for group in groups.values():
            try:
                results, timing = await loop.run_in_executor(self._executor, self._run_group, group)
            except Exception as exc:
                log.exception("batch of %d failed", len(group))
                for step in group:
                    if not step.future.done():
                        step.future.set_exception(exc)
                continue
            for step, result in zip(group, results, strict=True):
                if not step.future.done():
                    step.future.set_result(result)
            self._stats.executed([s.rows for s in group], *timing)

    def _run_group(self, group: list[_Step]) -> tuple[list[StepResult], tuple[float, float, float]]:
        """Stack, run, split and time one same-length group, on the executor thread,
        so that the event loop only resolves the waiters: each step's outputs and its
        own read-only states, and the seconds spent stacking, running and splitting."""
        stacking_started = time.perf_counter()
        for step in group:
            wait = stacking_started - step.enqueued
            self._queue_wait.observe(wait)
            self._stats.queue.add(wait)
        x = group[0].x if len(group) == 1 else np.concatenate([s.x for s in group])
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
