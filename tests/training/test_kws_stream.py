"""Training's streaming evaluation (:mod:`lstm_train.kws_stream`) gives exactly what the
server's own session step gives for the same audio, at the model's rate and resampled."""

from __future__ import annotations

import asyncio
import json
import wave
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from lstm_serve.batching import Batcher
from lstm_serve.domain import AudioFormat
from lstm_serve.events import Event
from lstm_serve.lanes import Lane
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry
from lstm_serve.runtime import ModelRuntime
from lstm_serve.session_store import InMemorySessionStore
from lstm_serve.sessions import LiveSession
from lstm_serve.step import SessionStep, hydrate
from lstm_train.kws_stream import CHUNK_MS, stream
from lstm_train.train import load_runtime

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "models" / "kws" / "1"
DEMO = REPO / "demo"


def _wav(path: Path) -> tuple[np.ndarray, int]:
    with wave.open(str(path), "rb") as f:
        rate = f.getframerate()
        pcm = np.frombuffer(f.readframes(f.getnframes()), "<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def _served(runtime: ModelRuntime, audio: np.ndarray, rate: int) -> tuple[np.ndarray, list[Event]]:
    """Posteriors and final events of the server's SessionStep, fed FLOAT32 chunks."""
    data = np.ascontiguousarray(audio, "<f4")
    step = int(rate * CHUNK_MS / 1000)

    async def scenario() -> tuple[np.ndarray, list[Event]]:
        metrics = Metrics()
        store = InMemorySessionStore(60.0, 10, metrics)
        with ThreadPoolExecutor(1) as executor:
            batcher = Batcher(runtime, executor, metrics, max_batch_size=8, max_delay_s=0.0,
                              max_queue=64)
            batcher.start()
            session = SessionStep(runtime.manifest, batcher, store)
            entry = ModelEntry("kws", "1", PACKAGE, runtime.manifest, runtime)
            lane = Lane(entry, runtime, batcher, session)
            live = LiveSession("s", await store.create(lane.fresh_state("s")),
                               audio_format=AudioFormat("float32", rate))
            hydrate(live, runtime.manifest)
            outs = [
                await session.run(live, sequence_number=i, audio=data[start : start + step].tobytes())
                for i, start in enumerate(range(0, data.size, step))
            ]
            outs.append(await session.flush(live))
            await batcher.close()
        rows = [o.outputs for o in outs if o.outputs is not None]
        return np.concatenate(rows), [e for o in outs for e in o.events if e.is_final]

    return asyncio.run(scenario())


@pytest.mark.parametrize("wav", ["demo1.wav", "demo1_48k.wav"])
def test_stream_is_the_servers_session_step(wav: str) -> None:
    audio, rate = _wav(DEMO / wav)
    runtime = load_runtime(PACKAGE)
    got = stream(runtime, audio, sample_rate_hz=rate)
    posteriors, events = _served(runtime, audio, rate)
    np.testing.assert_array_equal(got.posteriors, posteriors)
    assert got.events == events
    labels = [k["label"] for k in json.loads((DEMO / "demo1.json").read_text())["keywords"]]
    assert [e.label for e in got.events] == labels
