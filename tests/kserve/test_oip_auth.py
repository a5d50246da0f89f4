"""The model allow-list on the Open Inference Protocol: tritonclient with an API key
may use its models only; without one it is UNAUTHENTICATED."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lstm_client import Security
from tests.certs import write_keys_file
from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, start_server
from tests.kserve.conftest import Oip, encode

KEY = "oip-key-0123456789"


def test_v2_per_model_rpcs_honour_the_allow_list(fixture_models: FixtureModels, tmp_path: Path, oip: Oip) -> None:
    keys = write_keys_file(tmp_path / "keys.json", [{"key": KEY, "subject": "svc-v2", "models": ["lstm"]}])
    bearer = {"authorization": f"Bearer {KEY}"}
    x = np.zeros((1, 4, FEATURE_DIM), np.float32)
    with start_server(fixture_models.root, args=["--auth-keys", str(keys)], security=Security(token=KEY)) as server:
        allowed = oip(server, "model_calls", model="lstm", headers=bearer)
        assert allowed["ready"] == "True" and "error" not in allowed["metadata"]
        denied = oip(server, "model_calls", model="gru", headers=bearer)
        for name in ("ready", "metadata", "config"):
            assert denied[name]["status"] == "StatusCode.PERMISSION_DENIED", name
        anonymous = oip(server, "model_calls", model="lstm")
        assert all(anonymous[n]["status"] == "StatusCode.UNAUTHENTICATED" for n in ("ready", "metadata", "config"))
        step = {"inputs": {"x": encode(x)}, "sequence_id": 1, "sequence_start": True, "sequence_end": True}
        answers = oip(server, "infer", headers=bearer, requests=[{"model": "lstm", **step}, {"model": "gru", **step}])
        assert "outputs" in answers[0] and answers[1]["status"] == "StatusCode.PERMISSION_DENIED"
