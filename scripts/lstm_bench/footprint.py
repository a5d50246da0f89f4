"""What one session and one message weigh, measured with the server's own code: the
inputs of the sizing in docs/scale.md besides CPU.

- snapshot bytes: a session of the ``reference`` model, and a ``kws`` session in the
  middle of a stream (front-end buffers and the spotter's history filled), encoded
  by the snapshot codec the Redis store uses;
- Redis memory per session: ``used_memory`` of a real redis-server before and after the
  real ``RedisSessionStore`` created ``SESSIONS`` such sessions, each with its lease,
  over their count (so Redis's own per-key overhead and the expiry index are in it);
- wire bytes: one serialized StreamPredict chunk and its result (10 frames, or 100 ms
  of 16 kHz PCM16 audio).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from . import REPO

SESSIONS = 2000
AUDIO_RATE_HZ = 16_000


def _repository(reference_package: Path) -> Any:
    from lstm_serve.repository import ModelRepository

    root = Path(tempfile.mkdtemp(prefix="lstm-bench-footprint-"))
    os.symlink(reference_package.parent, root / "reference")
    os.symlink(REPO / "models" / "kws", root / "kws")
    return ModelRepository.load(root, ["CPUExecutionProvider"], 1, 1)


def _sessions(repository: Any) -> dict[str, Any]:
    """A session state of each model as a stream leaves it between two chunks."""
    from lstm_serve.audio import AudioPipeline
    from lstm_serve.domain import AudioFormat, ModelRef
    from lstm_serve.events import KeywordSpotter
    from lstm_serve.state import SessionState

    out = {}
    for name in ("reference", "kws"):
        entry = repository.find(name, "")
        runtime = entry.require_runtime()
        state = SessionState(f"{name}-0", ModelRef(entry.name, entry.version), runtime.content_hash,
                             tuple(runtime.zero_states(1)), next_sequence_number=10, frame_offset=100)
        manifest = runtime.manifest
        if manifest.input_kind == "audio":
            pipeline = AudioPipeline(manifest.frontend, AudioFormat("pcm16", AUDIO_RATE_HZ))
            rng = np.random.default_rng(0)
            pipeline.accept((rng.standard_normal(AUDIO_RATE_HZ // 10 + 37) * 300).astype("<i2").tobytes())
            spotter = KeywordSpotter(manifest.output.postprocess, manifest.output.labels,
                                     manifest.input.frame_rate_hz)
            spotter.update(rng.random((10, len(manifest.output.labels))).astype(np.float32) * 0.2)
            state = state.advanced(audio=pipeline.snapshot(), spotter=spotter.snapshot())
        out[name] = state
    return out


def wire_bytes() -> dict[str, dict[str, int]]:
    """Serialized StreamPredict chunk and result sizes, as the load generator sends them."""
    from lstm_client.client import to_tensor
    from lstmserve.v1 import inference_pb2 as pb

    features = to_tensor(np.zeros((10, 40), np.float32))
    outputs = to_tensor(np.zeros((10, 12), np.float32))
    pcm = bytes(2 * AUDIO_RATE_HZ // 10)
    return {
        "reference": {
            "request": pb.StreamRequest(chunk=pb.Chunk(sequence_number=1000, features=features)).ByteSize(),
            "response": pb.StreamResponse(result=pb.Result(sequence_number=1000, frame_offset=10000, frames=10,
                                                           outputs=outputs)).ByteSize(),
        },
        "kws": {
            "request": pb.StreamRequest(chunk=pb.Chunk(sequence_number=1000, audio=pcm)).ByteSize(),
            "response": pb.StreamResponse(result=pb.Result(sequence_number=1000, frame_offset=10000,
                                                           frames=10)).ByteSize(),
        },
    }


async def _redis_bytes(port: int, repository: Any, states: dict[str, Any]) -> dict[str, float]:
    import redis.asyncio as aioredis

    from lstm_serve.metrics import Metrics
    from lstm_serve.redis_store import RedisSessionStore, SnapshotCodec

    out = {}
    client = aioredis.Redis(host="127.0.0.1", port=port)
    try:
        for name, template in states.items():
            store = RedisSessionStore(f"redis://127.0.0.1:{port}/0", SnapshotCodec(repository, 600), Metrics(),
                                      ttl_s=600, max_sessions=10 * SESSIONS, lease_s=60, op_timeout_s=5,
                                      key_prefix=f"footprint-{name}:")
            await client.flushdb()
            before = (await client.info("memory"))["used_memory"]
            for i in range(SESSIONS):
                state = template.advanced(session_id=f"{name}-{i:06d}")
                await store.create(state)
                await store.acquire_lease(state.session_id, "bench")
            after = (await client.info("memory"))["used_memory"]
            out[name] = round((after - before) / SESSIONS, 1)
            await client.flushdb()
            await store.close()
    finally:
        await client.aclose()
    return out


def measure_footprint(reference_package: Path, redis_port: int | None) -> dict[str, Any]:
    """Snapshot, Redis and wire bytes per session and message (Redis when a port is given)."""
    from lstm_serve.redis_store import SnapshotCodec

    repository = _repository(reference_package)
    states = _sessions(repository)
    codec = SnapshotCodec(repository, 600)
    result: dict[str, Any] = {
        "snapshot_bytes": {name: len(codec.encode(state)) for name, state in states.items()},
        "wire_bytes": wire_bytes(),
        "redis_sessions": SESSIONS,
    }
    if redis_port is not None:
        result["redis_bytes_per_session"] = asyncio.run(_redis_bytes(redis_port, repository, states))
    return result
