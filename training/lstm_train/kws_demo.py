"""Demo WAVs of held-out voices for a kws package (``lstm-train demo``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from lstm_train import kws_data as kd
from lstm_train.kws_score import match_events
from lstm_train.kws_sets import FULL, TEST_SEED, variants
from lstm_train.kws_stream import stream_events
from lstm_train.train import load_runtime

#: a demo event must last this many frames beyond ``min_frames``, so that it is
#: reported as partial before its final when streamed in chunks of up to 50 ms
PARTIAL_MARGIN_FRAMES = 6


def write_demo(package_dir: Path, out: Path, count: int = 4,
               max_attempts: int = 400) -> list[dict[str, Any]]:
    """Write demo WAVs (16 kHz PCM16 mono) of held-out voices with their keyword timings.

    Sentences are fixed word lists spoken by test-split variants. Each WAV gets a
    sidecar ``<name>.json``; ``index.json`` lists them all. A 48 kHz copy of the first
    one is written for resampling demos.
    """
    import wave

    from lstm_serve.features import resample

    scripts = [
        ["please", "go", "left", "then", "stop"],
        ["yes", "turn", "the", "light", "on", "now"],
        ["no", "go", "down", "then", "right", "then", "up"],
        ["turn", "the", "music", "off", "please", "stop"],
        ["left", "then", "left", "again", "yes"],
        ["up", "then", "down", "and", "off"],
    ]
    test_variants = variants(FULL)["test"]
    rng = np.random.default_rng(TEST_SEED + 99)
    runtime = load_runtime(package_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict[str, Any]] = []
    attempt = 0
    post = runtime.manifest.output.postprocess
    min_s = ((post.min_frames if post else 1) + PARTIAL_MARGIN_FRAMES) / 100.0
    while len(index) < count and attempt < max_attempts:
        script = scripts[len(index) % len(scripts)]
        variant = test_variants[int(rng.integers(len(test_variants)))]
        words = [(w, kd._render(w, variant, rng)) for w in script]
        audio_parts: list[np.ndarray] = [np.zeros(int(0.5 * kd.SAMPLE_RATE), np.float32)]
        pos = audio_parts[0].size
        refs: list[kd.KeywordTiming] = []
        for w, rend in words:
            refs += [kd.KeywordTiming(w, pos / kd.SAMPLE_RATE,
                                      (pos + rend.audio.size) / kd.SAMPLE_RATE)] \
                if w in kd.KEYWORDS else []
            gap = np.zeros(int(rng.uniform(0.2, 0.45) * kd.SAMPLE_RATE), np.float32)
            audio_parts += [rend.audio * 0.8, gap]
            pos += rend.audio.size + gap.size
        audio_parts.append(np.zeros(int(0.5 * kd.SAMPLE_RATE), np.float32))
        audio = np.concatenate(audio_parts)
        audio = np.clip(audio + kd.noise(audio.size, rng) * 0.3, -1, 1)
        attempt += 1
        events = stream_events(runtime, audio)
        _tp, fp, fn = match_events(events, refs)
        if fp or fn or any(e.end_s - e.start_s < min_s - 1e-9 for e in events):
            continue  # a demo must work; selection is documented in docs/training.md
        name = f"demo{len(index) + 1}"
        pcm = (np.clip(audio, -1, 32767 / 32768) * 32768).astype("<i2")
        for path, data, rate in [(out / f"{name}.wav", pcm, kd.SAMPLE_RATE)] + (
            [(out / f"{name}_48k.wav",
              (np.clip(resample(audio, 16000, 48000), -1, 32767 / 32768) * 32768).astype("<i2"),
              48000)] if not index else []
        ):
            with wave.open(str(path), "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(rate)
                wav.writeframes(data.tobytes())
        entry = {
            "wav": f"{name}.wav",
            "sample_rate_hz": kd.SAMPLE_RATE,
            "seconds": round(audio.size / kd.SAMPLE_RATE, 3),
            "voice_variant": variant,
            "text": " ".join(script),
            "keywords": [
                {"label": r.label, "start_s": round(r.start_s, 3), "end_s": round(r.end_s, 3)}
                for r in refs
            ],
        }
        if not index:
            entry["copies"] = {"48000": f"{name}_48k.wav"}
        (out / f"{name}.json").write_text(json.dumps(entry, indent=2) + "\n")
        index.append(entry)
    (out / "index.json").write_text(json.dumps({"demos": index, "attempts": attempt}, indent=2)
                                    + "\n")
    return index
