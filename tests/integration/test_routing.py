"""deploy/routing/grpc-service-config.json on a real channel: the client-side ring_hash
policy hashes the x-session-id header the client sends, so with per-process
(in-memory) sessions every call of a session still reaches the replica that holds it.
Affinity is only an optimisation with a shared store; this shows that it holds.

gRPC honours ``requestHashHeader`` without xDS (gRFC A76) only behind the environment
variable ``GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY=true`` (checked in grpcio
1.85); without it every call fails with INTERNAL "hash attribute not present"."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstm_client import LstmClient
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, REPO, metric_sum, scrape, start_server

SERVICE_CONFIG = REPO / "deploy" / "routing" / "grpc-service-config.json"


RING_HASH_ENV = "GRPC_EXPERIMENTAL_RING_HASH_SET_REQUEST_HASH_KEY"


def test_ring_hash_on_x_session_id_keeps_each_session_on_one_replica(
    fixture_models: FixtureModels, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RING_HASH_ENV, "true")
    config = json.dumps(json.loads(SERVICE_CONFIG.read_text()))
    x = np.random.default_rng(12).standard_normal((8, FEATURE_DIM)).astype(np.float32)
    with start_server(fixture_models.root) as a, start_server(fixture_models.root) as b:
        target = f"ipv4:127.0.0.1:{a.port},127.0.0.1:{b.port}"
        with LstmClient(target, options=[("grpc.service_config", config)]) as client:
            for call in range(3):
                for i in range(16):
                    # in memory, a call stating frame_offset > 0 on the wrong replica is NOT_FOUND
                    out = client.predict("lstm", x, session_id=f"ring-{i}", frame_offset=8 * call)
                    assert out.frame_offset == 8 * call
        created = [metric_sum(scrape(s.metrics_url), "lstm_serve_sessions_created_total") for s in (a, b)]
    assert sum(created) == 16 and min(created) > 0, f"sessions per replica: {created}"
