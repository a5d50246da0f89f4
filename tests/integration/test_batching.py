"""Batching changes no stream's outputs: batching on equals batching off within 1e-5
for 1, 8 and 64 interleaved streams with mixed chunk sizes, for LSTM and GRU."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from lstm_client import LstmClient
from tests.conftest import FixtureModels
from tests.harness import ServerHandle, frames, metric_sum, scrape, start_server


@pytest.fixture(scope="module")
def servers(fixture_models: FixtureModels) -> Iterator[tuple[ServerHandle, ServerHandle]]:
    """A batching server (with a delay that makes batches form) and a --no-batching one."""
    with (
        start_server(fixture_models.root, args=["--max-delay-ms", "5"]) as batched,
        start_server(fixture_models.root, args=["--no-batching"]) as alone,
    ):
        yield batched, alone


def run_streams(client: LstmClient, model: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Stream every input concurrently, each with its own chunk sizes."""
    got: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(inputs))

    def run(i: int) -> None:
        try:
            sizes = [1 + (i * 7 + k * 3) % 11 for k in range(64)]
            chunks, start = [], 0
            for size in sizes:
                if start >= len(inputs[i]):
                    break
                chunks.append(inputs[i][start : start + size])
                start += size
            barrier.wait()
            got[i] = client.stream(model, chunks).outputs
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[:3]
    return [got[i] for i in range(len(inputs))]


@pytest.mark.parametrize("model", ["lstm", "gru"])
@pytest.mark.parametrize("streams", [1, 8, 64])
def test_batching_on_equals_off(servers: tuple[ServerHandle, ServerHandle], model: str, streams: int) -> None:
    batched, alone = servers
    inputs = [frames(1000 + i, 25 + (i * 13) % 40) for i in range(streams)]
    before = scrape(batched.metrics_url)
    with batched.client() as a, alone.client() as b:
        on = run_streams(a, model, inputs)
        off = run_streams(b, model, inputs)
    for x, y in zip(on, off, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    if streams == 64:
        after = scrape(batched.metrics_url)
        calls = metric_sum(after, "lstm_serve_batch_size_count", model=model) - metric_sum(
            before, "lstm_serve_batch_size_count", model=model
        )
        steps = metric_sum(after, "lstm_serve_batch_size_sum", model=model) - metric_sum(
            before, "lstm_serve_batch_size_sum", model=model
        )
        assert steps / calls > 1.5, f"no batching happened: {steps} steps in {calls} calls"
    off_batches = scrape(alone.metrics_url)
    assert metric_sum(off_batches, "lstm_serve_batch_size_sum", model=model) == metric_sum(
        off_batches, "lstm_serve_batch_size_count", model=model
    )


def test_unary_batch_shares_calls(servers: tuple[ServerHandle, ServerHandle]) -> None:
    batched, alone = servers
    seqs = [frames(i, 20) for i in range(32)]
    before = scrape(batched.metrics_url)
    with batched.client() as a, alone.client() as b:
        on = a.predict("gru", seqs).outputs
        off = b.predict("gru", seqs).outputs
    after = scrape(batched.metrics_url)
    for x, y in zip(on, off, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    calls = metric_sum(after, "lstm_serve_batch_size_count", model="gru") - metric_sum(
        before, "lstm_serve_batch_size_count", model="gru"
    )
    assert calls <= 4
