"""How much data a ``kws`` run uses, and its held-out test set.

The split is by voice variant (:func:`lstm_train.kws_data.split_variants`); the test set
never depends on ``--seed``: it is the same held-out data every time.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstm_serve.features import logmel
from lstm_train import kws_data as kd

TEST_SEED = 20240611
SPLIT_SEED = 0


@dataclass(frozen=True)
class Scale:
    """How much data and training a run uses."""

    keyword_renditions: int
    filler_renditions: int
    train_streams: int
    val_streams: int
    stream_seconds: float
    val_clips_per_class: int
    val_sentences: int
    test_clips_per_class: int
    test_sentences: int
    test_keyword_renditions: int
    hidden: int
    layers: int
    epochs: int
    batch: int
    variants: tuple[int, int, int] | None  # (train, val, test) caps for quick runs
    #: renditions per training variant of every negative word (``kws_running.NEGATIVES``)
    negative_renditions: int = 2
    #: keyword-free phrases per training variant, each synthesized as one utterance
    phrases_per_variant: int = 4
    #: initial states taken from the previous batch's final states with this probability
    state_carry: float = 0.7
    #: start from the previous bundled model's weights (``kws_recipe.INIT_WEIGHTS``)
    init_from_previous: bool = False
    lr: float = 3e-3


FULL = Scale(
    keyword_renditions=10, filler_renditions=4, train_streams=5000, val_streams=150,
    stream_seconds=8.0, val_clips_per_class=30, val_sentences=30, test_clips_per_class=100,
    test_sentences=60, test_keyword_renditions=3, hidden=128, layers=2, epochs=8, batch=32,
    variants=None, init_from_previous=True, lr=1e-3,
)
QUICK = Scale(
    keyword_renditions=1, filler_renditions=1, train_streams=64, val_streams=12,
    stream_seconds=3.0, val_clips_per_class=3, val_sentences=3, test_clips_per_class=4,
    test_sentences=4, test_keyword_renditions=1, hidden=32, layers=1, epochs=2, batch=32,
    variants=(6, 2, 3), negative_renditions=1, phrases_per_variant=1,
)


def variants(scale: Scale) -> dict[str, list[str]]:
    """The voice variants of each split, capped for quick runs."""
    splits = kd.split_variants(SPLIT_SEED)
    if scale.variants is not None:
        for key, cap in zip(("train", "val", "test"), scale.variants, strict=True):
            splits[key] = splits[key][:cap]
    return splits


def features(audios: Sequence[np.ndarray]) -> np.ndarray:
    """Whole-clip log-mel features ``[clips, frames, n_mels]``."""
    return np.stack([logmel(a, kd.FRONTEND) for a in audios])


@dataclass
class HeldOut:
    """A held-out evaluation set: clips and sentences."""

    clip_x: np.ndarray
    clip_labels: list[str]
    sentences: list[tuple[np.ndarray, list[kd.KeywordTiming]]]
    variants: list[str]


def test_set(quick: bool = False) -> HeldOut:
    """The held-out test set: unseen voice variants, fixed seed (independent of
    ``--seed``). The bundled-model test rebuilds it with this function.

    espeak-ng keeps internal state between utterances (its pitch-flutter phase runs
    on), so a word's samples depend on what the library said before. The set is
    therefore built in a fresh, spawned process, where the history is always the same.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_build_test_set, (quick,))


def _build_test_set(quick: bool) -> HeldOut:
    scale = QUICK if quick else FULL
    test_variants = variants(scale)["test"]
    bank = kd.build_bank(test_variants, TEST_SEED, keyword_renditions=scale.test_keyword_renditions)
    rng = np.random.default_rng(TEST_SEED + 1)
    clips, labels = kd.clip_set(bank, rng, scale.test_clips_per_class)
    sentences = kd.sentence_set(bank, np.random.default_rng(TEST_SEED + 2), scale.test_sentences)
    return HeldOut(features(clips), labels, sentences, test_variants)
