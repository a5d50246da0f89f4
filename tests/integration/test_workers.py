"""``--workers 2``: processes share the port, streams stay exact, metrics aggregate,
and the drain is clean."""

from __future__ import annotations

import signal
import threading

import numpy as np

from lstm_client import LstmClient
from tests.conftest import FixtureModels
from tests.harness import ATOL, frames, metric_sum, scrape, start_server


def test_two_workers_serve_exactly_and_aggregate_metrics(fixture_models: FixtureModels) -> None:
    inputs = [frames(500 + i, 30) for i in range(16)]
    with start_server(fixture_models.root, args=["--workers", "2"]) as handle:
        with handle.client() as client:
            want = [client.predict("lstm", x).outputs[0] for x in inputs]
        before = metric_sum(scrape(handle.metrics_url), "lstm_serve_frames_total", model="lstm")
        got: dict[int, np.ndarray] = {}

        def run(i: int) -> None:
            # One channel each: separate connections, which the kernel spreads over workers.
            with LstmClient(handle.target) as own:
                got[i] = own.stream("lstm", [inputs[i][k : k + 7] for k in range(0, 30, 7)]).outputs

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for i, x in enumerate(want):
            np.testing.assert_allclose(got[i], x, atol=ATOL)
        after = scrape(handle.metrics_url)
        assert metric_sum(after, "lstm_serve_frames_total", model="lstm") - before == 16 * 30
        assert metric_sum(after, "lstm_serve_model_ready", model="lstm") == 1
        assert metric_sum(after, "lstm_serve_sessions_active") == 0
        handle.process.send_signal(signal.SIGTERM)
        assert handle.process.wait(timeout=30) == 0
    assert "started 2 workers" in handle.log() and "stopped" in handle.log()
