"""The batcher stacks, splits, bounds its queue and fails every waiter of a failed call."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from lstm_serve.batching import Batcher
from lstm_serve.errors import Overloaded
from lstm_serve.manifest import load_manifest
from lstm_serve.metrics import Metrics
from lstm_serve.runtime import ModelRuntime
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM


def _runtime(fixture_models: FixtureModels, name: str) -> ModelRuntime:
    package = fixture_models.root / name / "1"
    return ModelRuntime(load_manifest(package), package, ["CPUExecutionProvider"])


def _batcher(runtime: ModelRuntime, executor: ThreadPoolExecutor, **kw: float) -> tuple[Batcher, Metrics]:
    metrics = Metrics()
    options = {"max_batch_size": 64, "max_delay_s": 0.005, "max_queue": 256} | kw
    return Batcher(runtime, executor, metrics, **options), metrics  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_mixed_lengths_batched_equal_alone(fixture_models: FixtureModels, name: str) -> None:
    runtime = _runtime(fixture_models, name)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1 + i % 4, FEATURE_DIM)).astype(np.float32) for i in range(40)]
    states = [[rng.standard_normal(z.shape).astype(np.float32) for z in runtime.zero_states(1)] for _ in xs]

    async def scenario() -> tuple[list, float]:
        with ThreadPoolExecutor(1) as executor:
            batcher, metrics = _batcher(runtime, executor)
            batcher.start()
            results = await asyncio.gather(*(batcher.submit(x, s) for x, s in zip(xs, states, strict=True)))
            await batcher.close()
        count = metrics.registry.get_sample_value("lstm_serve_batch_size_count", {"model": name, "version": "1"})
        return results, count or 0.0

    results, calls = asyncio.run(scenario())
    assert calls < len(xs)  # steps of equal length shared calls
    for x, s, (out, new_states) in zip(xs, states, results, strict=True):
        want_out, want_states = runtime.run(x[np.newaxis], s)
        np.testing.assert_allclose(out, want_out[0], atol=1e-6)
        for got, want in zip(new_states, want_states, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_failed_call_fails_every_waiter(fixture_models: FixtureModels) -> None:
    runtime = _runtime(fixture_models, "lstm")
    bad_states = [np.zeros((2, 1, 5), np.float32), np.zeros((2, 1, 5), np.float32)]

    good_states = runtime.zero_states(1)

    async def scenario() -> tuple[list[Any], object]:
        with ThreadPoolExecutor(1) as executor:
            batcher, _ = _batcher(runtime, executor, max_delay_s=0.05)
            x = np.zeros((3, FEATURE_DIM), np.float32)
            # Queue good steps with one bad one before the loop starts: they share a call.
            steps = [asyncio.ensure_future(batcher.submit(x, good_states)) for _ in range(4)]
            steps.append(asyncio.ensure_future(batcher.submit(x, bad_states)))
            await asyncio.sleep(0)
            batcher.start()
            results = await asyncio.gather(*steps, return_exceptions=True)
            ok = await batcher.submit(x, good_states)
            await batcher.close()
        return results, ok

    failures, ok = asyncio.run(scenario())
    assert all(isinstance(f, Exception) for f in failures), failures
    assert isinstance(ok, tuple)  # the batcher keeps serving after a failed call


def test_full_queue_is_refused(fixture_models: FixtureModels) -> None:
    runtime = _runtime(fixture_models, "lstm")

    async def scenario() -> list[BaseException | None]:
        with ThreadPoolExecutor(1) as executor:
            batcher, _ = _batcher(runtime, executor, max_queue=4)
            # The loop is not started, so nothing drains the queue.
            x = np.zeros((1, FEATURE_DIM), np.float32)
            tasks = [asyncio.ensure_future(batcher.submit(x, runtime.zero_states(1))) for _ in range(6)]
            await asyncio.sleep(0.01)
            done = [t.exception() if t.done() else None for t in tasks]
            await batcher.close()
            await asyncio.gather(*tasks, return_exceptions=True)
        return done

    done = asyncio.run(scenario())
    assert [type(d) for d in done[4:]] == [Overloaded, Overloaded]
    assert "MAX_QUEUE" in str(done[4])


def test_a_lone_step_runs_from_its_caller_and_steps_arriving_meanwhile_share_the_next_call(
    fixture_models: FixtureModels,
) -> None:
    runtime = _runtime(fixture_models, "lstm")
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((2, FEATURE_DIM)).astype(np.float32) for _ in range(6)]

    async def scenario() -> tuple[list[Any], float, float]:
        with ThreadPoolExecutor(1) as executor:
            batcher, metrics = _batcher(runtime, executor)
            batcher.start()
            lone = asyncio.ensure_future(batcher.submit(xs[0], runtime.zero_states(1)))
            await asyncio.sleep(0)  # the lone step is now on the executor
            rest = [asyncio.ensure_future(batcher.submit(x, runtime.zero_states(1))) for x in xs[1:]]
            results = await asyncio.gather(lone, *rest)
            await batcher.close()
        labels = {"model": "lstm", "version": "1"}
        calls = metrics.registry.get_sample_value("lstm_serve_batch_size_count", labels) or 0.0
        rows = metrics.registry.get_sample_value("lstm_serve_batch_size_sum", labels) or 0.0
        return results, calls, rows

    results, calls, rows = asyncio.run(scenario())
    assert (calls, rows) == (2.0, 6.0), "one lone call, then one call for the five that queued meanwhile"
    for x, (out, states) in zip(xs, results, strict=True):
        want_out, want_states = runtime.run(x[np.newaxis], runtime.zero_states(1))
        np.testing.assert_allclose(out, want_out[0], atol=1e-6)
        for got, want in zip(states, want_states, strict=True):
            np.testing.assert_allclose(got, want, atol=1e-6)
            assert not got.flags.writeable
