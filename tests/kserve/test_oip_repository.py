"""The model repository extension: load a new version while old sequences keep theirs,
unload (no new work; open sequences finish), polling, and refusals when model
control is off."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FixtureModels
from tests.harness import FEATURE_DIM, ServerHandle, metric_sum, scrape, start_server, wait_until
from tests.kserve.conftest import Oip, decode, encode

ATOL = 1e-5


def _x(seed: int, frames: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((frames, FEATURE_DIM)).astype(np.float32)


def _step(seq: str, x: np.ndarray, first: bool = False, last: bool = False) -> dict[str, object]:
    return {"model": "lstm", "inputs": {"x": encode(x[np.newaxis])}, "sequence_id": seq,
            "sequence_start": first, "sequence_end": last}


def _copy_as(source: Path, target: Path, name: str, version: str) -> None:
    """A model package under another name and version (a new version with other weights)."""
    staging = target.parent / f".staging-{version}"
    shutil.copytree(source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["name"], manifest["version"] = name, version
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(target)


@pytest.fixture
def repo(fixture_models: FixtureModels, tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(fixture_models.root / "lstm", root / "lstm")
    return root


@pytest.fixture
def explicit(repo: Path) -> Iterator[ServerHandle]:
    with start_server(repo, args=["--model-control", "explicit"]) as server:
        yield server


def _states(index: dict[str, list[dict[str, str]]]) -> dict[tuple[str, str], str]:
    return {(m["name"], m["version"]): m["state"] for m in index.get("models", [])}


def test_load_new_version_old_sequences_keep_theirs_then_unload(
    explicit: ServerHandle, repo: Path, fixture_models: FixtureModels, oip: Oip
) -> None:
    chunks = [_x(i) for i in range(3)]
    first = oip(explicit, "infer", requests=[_step("old", chunks[0], first=True)])[0]
    assert first["model_version"] == "1"
    _copy_as(fixture_models.root / "gru" / "1", repo / "lstm" / "2", "lstm", "2")
    index = oip(explicit, "repository", action="load", model="lstm")
    assert _states(index) == {("lstm", "1"): "READY", ("lstm", "2"): "READY"}
    with explicit.client() as client:
        assert client.metadata("lstm")["version"] == "2"
        assert client.health("models/lstm/2") == "SERVING"
        native_v1 = client.stream("lstm", chunks, version="1").outputs
    rest = oip(explicit, "infer", requests=[_step("old", chunks[1]), _step("new", chunks[0], first=True)])
    assert rest[0]["model_version"] == "1" and rest[1]["model_version"] == "2"

    unloaded = oip(explicit, "repository", action="unload", model="lstm")
    assert set(_states(unloaded).values()) == {"UNLOADED"}
    refused = oip(explicit, "infer", requests=[_step("newer", chunks[0], first=True)])[0]
    assert refused["status"] == "StatusCode.FAILED_PRECONDITION" and "unloaded" in refused["error"]
    assert oip(explicit, "describe", models=[])["ready"] is not False  # the server itself stays ready
    last = oip(explicit, "infer", requests=[_step("old", chunks[2], last=True)])[0]
    got = np.concatenate([decode(a["outputs"]["y"])[0] for a in (first, rest[0], last)])
    np.testing.assert_allclose(got, native_v1, atol=ATOL)
    with explicit.client() as client:
        assert client.health("models/lstm") == "NOT_SERVING"
        assert not any(m["ready"] for m in client.list_models())

    again = oip(explicit, "repository", action="load", model="lstm")
    assert set(_states(again).values()) == {"READY"}


def test_load_of_a_missing_model_is_refused(explicit: ServerHandle, oip: Oip) -> None:
    answer = oip(explicit, "repository", action="load", model="nope")
    assert answer["status"] == "StatusCode.NOT_FOUND" and "failed to load 'nope'" in answer["error"]


def test_poll_picks_up_new_models(repo: Path, fixture_models: FixtureModels, oip: Oip) -> None:
    with start_server(repo, args=["--model-control", "poll", "--poll-interval", "0.2"]) as server:
        _copy_as(fixture_models.root / "gru" / "1", repo / "gru2" / "1", "gru2", "1")
        with server.client() as client:
            assert wait_until(lambda: any(m["name"] == "gru2" and m["ready"] for m in client.list_models()), 20)
            assert client.health("models/gru2") == "SERVING"
        refused = oip(server, "repository", action="load", model="gru2")
        assert "not allowed if polling is enabled" in refused["error"]
        shutil.rmtree(repo / "gru2")
        with server.client() as client:
            assert wait_until(lambda: client.health("models/gru2") == "NOT_SERVING", 20)


def test_model_control_none_refuses_load(bundled_server: ServerHandle, oip: Oip) -> None:
    answer = oip(bundled_server, "repository", action="unload", model="har")
    assert answer["status"] == "StatusCode.FAILED_PRECONDITION" and "--model-control explicit" in answer["error"]


def test_an_expired_sequence_says_so(fixture_models: FixtureModels, oip: Oip) -> None:
    env = {"LSTM_SERVE_SESSIONS__TTL_S": "0.3", "LSTM_SERVE_SESSIONS__REAP_INTERVAL_S": "0.1"}
    with start_server(fixture_models.root, env=env) as server:
        oip(server, "infer", requests=[_step("idle", _x(1), first=True)])
        stored = lambda: metric_sum(scrape(server.metrics_url), "lstm_serve_sessions_stored")  # noqa: E731
        assert wait_until(lambda: stored() == 0, 10)
        late = oip(server, "infer", requests=[_step("idle", _x(3))])[0]
        assert "must specify the START flag" in late["error"] and "expired after 0.3 s idle" in late["error"]
