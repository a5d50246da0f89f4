"""espeak-ng synthesis is the same in every process, so the seeded evaluation sets are."""

from __future__ import annotations

import hashlib
import multiprocessing
import time

from lstm_train.synth import Speaker, utterance_seed

# variants that draw on espeak-ng's random generator (it seeds that from the clock)
RANDOM_VARIANTS = ("Demonic", "Alicia")


def _digests(words: tuple[str, ...]) -> list[str]:
    speaker = Speaker(16000)
    return [
        hashlib.sha256(speaker.say(word, f"en-us+{variant}", rate=150, pitch=40).tobytes()).hexdigest()
        for variant in RANDOM_VARIANTS
        for word in words
    ]


def test_synthesis_is_identical_across_processes() -> None:
    words = ("yesterday", "stop", "yesterday")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as first, ctx.Pool(1) as second:
        a = first.apply(_digests, (words,))
        time.sleep(1.1)  # espeak-ng seeds from time(NULL): the second process gets another second
        b = second.apply(_digests, (words,))
    assert a == b


def test_utterance_seed_depends_on_every_parameter() -> None:
    base = utterance_seed("stop", "en-us+Demonic", 150, 40, 50)
    assert base == utterance_seed("stop", "en-us+Demonic", 150, 40, 50)
    others = {
        utterance_seed("stops", "en-us+Demonic", 150, 40, 50),
        utterance_seed("stop", "en-us+Alicia", 150, 40, 50),
        utterance_seed("stop", "en-us+Demonic", 151, 40, 50),
        utterance_seed("stop", "en-us+Demonic", 150, 41, 50),
        utterance_seed("stop", "en-us+Demonic", 150, 40, 51),
    }
    assert base not in others and len(others) == 5
