"""The bundled kws model on the bundled demo WAVs, through the real CLI and server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lstm_client.wav import read_wav
from tests.harness import REPO, ServerHandle

CLIENT = str(Path(sys.executable).parent / "lstm-client")
DEMO = REPO / "demo"
INDEX = json.loads((DEMO / "index.json").read_text())["demos"] if (DEMO / "index.json").exists() else []
TOLERANCE_S = 0.3


def stream_json(server: ServerHandle, wav: Path, *extra: str) -> dict[str, Any]:
    """``lstm-client stream kws --wav FILE --json`` against ``server``."""
    done = subprocess.run(
        [CLIENT, "--target", server.target, "stream", "kws", "--wav", str(wav), "--json", *extra],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def assert_keywords(events: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Same labels in the same order, each starting within the tolerance."""
    assert [e["label"] for e in events] == [k["label"] for k in expected], events
    for got, want in zip(events, expected, strict=True):
        assert abs(got["start_s"] - want["start_s"]) <= TOLERANCE_S, (got, want)


def test_demo_index_is_there() -> None:
    assert len(INDEX) >= 3
    for demo in INDEX:
        assert (DEMO / demo["wav"]).is_file() and demo["keywords"]


@pytest.mark.parametrize("demo", INDEX, ids=lambda d: d["wav"])
def test_demo_keywords_in_order_and_on_time(bundled_server: ServerHandle, demo: dict[str, Any]) -> None:
    document = stream_json(bundled_server, DEMO / demo["wav"])
    assert document["model"] == "kws" and document["session_id"]
    assert document["frames"] == pytest.approx(demo["seconds"] * 100, abs=2)
    assert_keywords(document["events"], demo["keywords"])
    for event in document["events"]:
        assert set(event) == {"label", "start_s", "end_s", "score"} and 0 < event["score"] <= 1


def test_resampled_copy_gives_the_same_keywords(bundled_server: ServerHandle) -> None:
    demo = next(d for d in INDEX if d.get("copies"))
    copy = DEMO / demo["copies"]["48000"]
    assert read_wav(copy).sample_rate_hz == 48_000
    assert_keywords(stream_json(bundled_server, copy, "--chunk-ms", "20")["events"], demo["keywords"])


@pytest.mark.parametrize("chunk_ms", ["10", "333"])
def test_chunking_does_not_change_events(bundled_server: ServerHandle, chunk_ms: str) -> None:
    demo = INDEX[0]
    reference = stream_json(bundled_server, DEMO / demo["wav"])
    other = stream_json(bundled_server, DEMO / demo["wav"], "--chunk-ms", chunk_ms)
    assert other["events"] == reference["events"] and other["frames"] == reference["frames"]


def test_realtime_demo_prints_events_as_they_come(bundled_server: ServerHandle) -> None:
    demo = INDEX[0]
    done = subprocess.run(
        [CLIENT, "--target", bundled_server.target, "stream", "kws", "--wav", str(DEMO / demo["wav"]), "--realtime"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    labels = [line.split()[1] for line in lines[:-1]]
    assert labels == [k["label"] for k in demo["keywords"]]
    assert lines[-1].startswith(f"{len(labels)} event(s)")
    elapsed = float(lines[-1].split(" in ")[-1].rstrip("s").strip())
    # Paced at 100 ms chunks: the last one goes one chunk before the audio's end. The
    # upper bound is generous for a shared machine; latency is the benchmark's.
    assert demo["seconds"] - 0.1 - 0.01 <= elapsed <= 2 * demo["seconds"] + 5.0, elapsed


def test_unsupported_wav_is_refused(bundled_server: ServerHandle, tmp_path: Path) -> None:
    import numpy as np
    from scipy.io import wavfile

    wavfile.write(tmp_path / "low.wav", 4000, np.zeros(4000, np.int16))
    wavfile.write(tmp_path / "int32.wav", 16000, np.zeros(1600, np.int32))
    for name, fragment in (("low.wav", "outside 8000-48000"), ("int32.wav", "unsupported")):
        done = subprocess.run(
            [CLIENT, "--target", bundled_server.target, "stream", "kws", "--wav", str(tmp_path / name)],
            capture_output=True, text=True, timeout=60,
        )
        assert done.returncode == 2 and fragment in done.stderr, done.stderr


def test_partial_events_precede_their_final(bundled_server: ServerHandle) -> None:
    wav = read_wav(DEMO / INDEX[0]["wav"])
    with bundled_server.client() as client:
        result = client.stream("kws", wav.chunks(50), audio=(wav.encoding, wav.sample_rate_hz))
    seen = [(e.label, round(e.start_s, 3), e.is_final) for r in result.results for e in r.events]
    finals = [(label, start) for label, start, final in seen if final]
    assert finals == [(e.label, round(e.start_s, 3)) for e in result.events]
    for label, start in finals:
        updates = [final for lab, st, final in seen if (lab, st) == (label, start)]
        assert updates[-1] and updates.count(True) == 1
        assert not all(updates), f"{label} at {start} s was never reported as partial first"
