"""In-process tier: the session step, called directly. A session snapshot, restored
into fresh live objects, continues bit-for-bit like the uninterrupted session, for the
bundled har, har-gru and kws at random cut points."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from lstm_serve.batching import Batcher
from lstm_serve.domain import AudioFormat
from lstm_serve.lanes import Lane
from lstm_serve.manifest import load_manifest
from lstm_serve.metrics import Metrics
from lstm_serve.repository import ModelEntry
from lstm_serve.runtime import ModelRuntime
from lstm_serve.session_store import InMemorySessionStore
from lstm_serve.sessions import LiveSession
from lstm_serve.step import SessionStep, StepOutput, hydrate
from tests.harness import REPO


def _lane(name: str, executor: ThreadPoolExecutor, store: InMemorySessionStore) -> Lane:
    package = REPO / "models" / name / "1"
    runtime = ModelRuntime(load_manifest(package), package, ["CPUExecutionProvider"])
    batcher = Batcher(runtime, executor, Metrics(), max_batch_size=8, max_delay_s=0.0, max_queue=64)
    batcher.start()
    entry = ModelEntry(name, "1", package, runtime.manifest, runtime)
    return Lane(entry, runtime, batcher, SessionStep(runtime.manifest, batcher, store))


def _chunks(name: str, rng: np.random.Generator) -> list[np.ndarray | bytes]:
    if name == "kws":
        audio = 0.2 * rng.standard_normal(16000 * 2)
        pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
        cuts = sorted(rng.choice(np.arange(1, len(pcm)), size=11, replace=False).tolist())
        return [pcm[a:b] for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True)]
    frames = rng.standard_normal((150, 6)).astype(np.float32)
    cuts = sorted(rng.choice(np.arange(1, 150), size=9, replace=False).tolist())
    return [frames[a:b] for a, b in zip([0, *cuts], [*cuts, 150], strict=True)]


async def _run(lane: Lane, live: LiveSession, chunks: list[np.ndarray | bytes], first: int) -> list[StepOutput]:
    outs = []
    for seq, chunk in enumerate(chunks, start=first):
        if isinstance(chunk, bytes):
            outs.append(await lane.step.run(live, sequence_number=seq, audio=chunk))
        else:
            outs.append(await lane.step.run(live, sequence_number=seq, features=chunk))
    return outs


@pytest.mark.parametrize("name", ["har", "har-gru", "kws"])
@pytest.mark.parametrize("seed", [0, 1])
def test_snapshot_restore_continue_is_bit_identical(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    chunks = _chunks(name, rng)
    cut = int(rng.integers(1, len(chunks) - 1))
    audio = AudioFormat("pcm16", 16000) if name == "kws" else None

    async def scenario() -> tuple[list[StepOutput], StepOutput, list[StepOutput], StepOutput]:
        metrics = Metrics()
        store = InMemorySessionStore(60.0, 10, metrics)
        with ThreadPoolExecutor(1) as executor:
            lane = _lane(name, executor, store)
            whole = LiveSession("whole", await store.create(lane.fresh_state("whole")), audio_format=audio)
            hydrate(whole, lane.manifest)
            reference = await _run(lane, whole, chunks, 0)
            reference_flush = await lane.step.flush(whole)

            first = LiveSession("cut", await store.create(lane.fresh_state("cut")), audio_format=audio)
            hydrate(first, lane.manifest)
            before = await _run(lane, first, chunks[:cut], 0)
            snapshot = await store.get("cut")
            assert snapshot is not None and snapshot.next_sequence_number == cut
            # A fresh live session: nothing carries over but the committed value.
            resumed = LiveSession("cut", snapshot)
            hydrate(resumed, lane.manifest)
            after = await _run(lane, resumed, chunks[cut:], cut)
            flushed = await lane.step.flush(resumed)
            assert resumed.state.final_events == whole.state.final_events
            await lane.batcher.close()
        return reference, reference_flush, before + after, flushed

    reference, reference_flush, got, flushed = asyncio.run(scenario())
    assert len(got) == len(reference)
    for want, have in zip([*reference, reference_flush], [*got, flushed], strict=True):
        assert (have.frame_offset, have.frames, have.events) == (want.frame_offset, want.frames, want.events)
        if want.outputs is None:
            assert have.outputs is None
        else:
            assert have.outputs is not None
            np.testing.assert_array_equal(have.outputs, want.outputs)


def test_failed_step_commits_nothing_and_rebuilds_the_front_end_from_the_committed_state() -> None:
    async def scenario() -> None:
        store = InMemorySessionStore(60.0, 10, Metrics())
        with ThreadPoolExecutor(1) as executor:
            lane = _lane("kws", executor, store)
            live = LiveSession("s", await store.create(lane.fresh_state("s")), audio_format=AudioFormat("pcm16", 16000))
            hydrate(live, lane.manifest)
            pcm = (np.sin(np.arange(4000) / 7) * 8000).astype("<i2").tobytes()
            await lane.step.run(live, sequence_number=0, audio=pcm)
            committed = live.state
            await lane.batcher.close()  # the model step now fails
            with pytest.raises(Exception, match="shutting down"):
                await lane.step.run(live, sequence_number=1, audio=pcm)
            assert (await store.get("s")) is committed and live.state is committed
            assert live.audio is not None
            assert _same_frontend(live, committed)

    asyncio.run(scenario())


def _same_frontend(live: LiveSession, committed: object) -> bool:
    assert live.audio is not None
    now, then = live.audio.snapshot(), committed.audio  # type: ignore[attr-defined]
    return bool(
        now.decoder == then.decoder
        and np.array_equal(now.logmel.buffered, then.logmel.buffered)
        and now.logmel.frames == then.logmel.frames
    )


def test_concurrent_steps_of_one_session_run_in_arrival_order() -> None:
    async def scenario() -> list[int]:
        store = InMemorySessionStore(60.0, 10, Metrics())
        with ThreadPoolExecutor(1) as executor:
            lane = _lane("har", executor, store)
            live = LiveSession("s", await store.create(lane.fresh_state("s")))
            chunks = [np.full((i + 1, 6), i, np.float32) for i in range(12)]
            # Every task awaits the lock at once; the FIFO lock must serve them in the
            # order they arrived, so each sees the frames of all earlier ones.
            tasks = [asyncio.create_task(lane.step.run(live, sequence_number=None, features=c)) for c in chunks]
            outs = await asyncio.gather(*tasks)
            await lane.batcher.close()
        return [o.frame_offset for o in outs]

    offsets = asyncio.run(scenario())
    assert offsets == [i * (i + 1) // 2 for i in range(12)]
