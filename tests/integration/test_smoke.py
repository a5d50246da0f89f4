"""End to end: metadata, Predict and StreamPredict against a real server."""

from __future__ import annotations

import numpy as np
import torch

from lstm_train.model import RecurrentNet
from tests.conftest import FEATURE_DIM, FixtureModels
from tests.harness import ServerHandle


def reference(net: RecurrentNet, x: np.ndarray) -> np.ndarray:
    """PyTorch output for one [T, F] sequence from the zero state."""
    with torch.no_grad():
        xt = torch.from_numpy(x[np.newaxis])
        out = net(xt, *net.zero_states(1))[0]
    return out[0].numpy()


def test_stream_equals_predict_equals_torch(server: ServerHandle, fixture_models: FixtureModels) -> None:
    x = np.random.default_rng(0).standard_normal((120, FEATURE_DIM)).astype(np.float32)
    with server.client() as client:
        for name in ("lstm", "gru"):
            want = reference(fixture_models.nets[name], x)
            whole = client.predict(name, x).outputs[0]
            np.testing.assert_allclose(whole, want, atol=1e-5)
            for step in (1, 7, 50):
                chunks = [x[i : i + step] for i in range(0, len(x), step)]
                streamed = client.stream(name, chunks).outputs
                np.testing.assert_allclose(streamed, want, atol=1e-5)
