"""Training and validation streams of running speech for ``kws``, with augmentation.

The keyword-free speech the spotter is judged on (:mod:`lstm_train.kws_eval`) is
running sentences of ordinary words, numbers and near-miss words. Training therefore
composes the same kind of stream from the **training** voice variants only:

- **running sentences** of 1-12 words with 30-250 ms gaps inside a sentence and
  0.3-1.5 s pauses between sentences; each stream has its own keyword probability
  (some streams have no keyword at all);
- **hard negatives** in the explicit ``_unknown_`` class: :data:`NEGATIVES` holds the
  filler words, number words and near-miss words ("yesterday", "often", "upward",
  "stopper", ...), plus whole phrases synthesized in one utterance (coarticulated
  running speech, :func:`build_phrases`);
- **perturbation** per word: speed and pitch together (resampling by 0.8-1.25) and a
  random first-order spectral tilt; espeak-ng's own rate, pitch and pitch range vary
  per rendition (:func:`lstm_train.kws_data.build_bank`);
- **room reverberation** on a share of the streams: convolution (scipy) with a
  synthetic impulse response (:func:`room_impulse`);
- **noise** of several kinds (white, pink, brown, babble of other words, mains hum)
  at an SNR of 0 to 35 dB relative to the speech, and an overall **gain** of 0.1-3
  (clipped to [-1, 1], as a loud microphone clips).

Labels (:func:`end_aligned_labels`): a keyword's class is the target only on its second
half and :data:`KEYWORD_AFTER_END_S` after its end, so a causal detector learns to fire
once most of the word is heard, while the near-miss words that start like a keyword
("stop" in "stopper", "yes" in "yesterday") are ``_unknown_`` on every frame. The
keyword's first half is ignored by the loss (:data:`IGNORE`), every other word's frames
are ``_unknown_`` and the rest ``_silence_``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve, resample_poly

from lstm_train import kws_data as kd

#: extra near-miss words for training (the evaluation's list is in ``kws_eval``)
NEAR_MISS_TRAIN: tuple[str, ...] = (
    "yesterday", "yellow", "yet", "yesterdays", "yeast", "often", "offer", "offset",
    "office", "upward", "upper", "uptown", "update", "stopper", "stopping", "stopwatch",
    "nobody", "notice", "nothing", "nose", "note", "downtown", "downward", "download",
    "lefty", "leftover", "lifted", "lift", "writer", "bright", "ride", "night", "rider",
    "gopher", "going", "goal", "goat", "onion", "honor", "only", "under", "upon", "dawn",
    "town", "top", "shop", "yep", "yeah", "nah", "gold", "ghost", "cough", "soft",
    "stock", "step", "loft", "light", "bite", "done", "won", "own", "end", "goes",
)
NUMBERS_TRAIN: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "twenty", "thirty",
    "forty", "fifty", "sixty", "hundred", "thousand", "million", "first", "second",
)
EVERYDAY: tuple[str, ...] = (
    "i", "to", "of", "in", "that", "have", "for", "not", "with", "he", "as", "do", "at",
    "this", "but", "his", "by", "from", "they", "say", "her", "she", "or", "an", "my",
    "all", "would", "there", "their", "about", "if", "out", "who", "get", "which", "me",
    "when", "like", "just", "him", "take", "people", "into", "year", "your", "some",
    "could", "them", "see", "other", "than", "look", "only", "come", "its", "over",
    "think", "also", "after", "use", "two", "how", "our", "work", "well", "way", "even",
    "new", "want", "because", "any", "these", "give", "day", "most", "us", "kitchen",
    "weather", "coffee", "tomorrow", "station", "really", "something", "nothing", "again",
)
#: every word that is not a keyword, for the ``_unknown_`` class (exact homophones of a
#: keyword, such as "know" or "write", are left out: no model can tell them apart)
NEGATIVES: tuple[str, ...] = tuple(
    dict.fromkeys(
        w for w in (*kd.FILLERS, *NEAR_MISS_TRAIN, *NUMBERS_TRAIN, *EVERYDAY)
        if w not in kd.KEYWORDS
    )
)

IGNORE = -100
#: the first half of a keyword is ignored by the loss
KEYWORD_IGNORED_FRACTION = 0.5
KEYWORD_AFTER_END_S = 0.1
SNR_DB = (0.0, 35.0)
GAIN = (0.1, 3.0)
P_REVERB = 0.4
DRR_DB = (0.0, 15.0)


def build_phrases(variants: Sequence[str], seed: int, per_variant: int,
                  words: Sequence[str] = NEGATIVES) -> list[kd.Rendition]:
    """Keyword-free phrases of 3-8 words, each synthesized as one utterance (so with
    coarticulation across words), ``per_variant`` per voice variant."""
    rng = np.random.default_rng(seed)
    out: list[kd.Rendition] = []
    for variant in variants:
        for _ in range(per_variant):
            text = " ".join(words[int(i)] for i in rng.integers(len(words), size=rng.integers(3, 9)))
            rend = kd._render(text, variant, rng)
            out.append(kd.Rendition("_phrase_", rend.audio, rend.voice))
    return out


def room_impulse(rng: np.random.Generator, sr: int = kd.SAMPLE_RATE) -> np.ndarray:
    """A synthetic room impulse response: the direct path, a few early reflections and
    an exponentially decaying noise tail (RT60 0.15-0.9 s, direct-to-reverberant ratio
    0-15 dB), unit peak."""
    rt60 = rng.uniform(0.15, 0.9)
    n = int(rt60 * sr)
    t = np.arange(n) / sr
    tail = rng.standard_normal(n) * np.exp(-6.91 * t / rt60)
    tail *= 10 ** (-rng.uniform(*DRR_DB) / 20) / max(float(np.sqrt(np.sum(tail**2))), 1e-9)
    h = np.zeros(n)
    h[0] = 1.0
    for _ in range(int(rng.integers(2, 6))):
        h[int(rng.uniform(0.002, 0.03) * sr)] += rng.uniform(-0.6, 0.6)
    onset = int(0.002 * sr)
    h[onset:] += tail[: n - onset]
    return (h / np.abs(h).max()).astype(np.float32)


def perturb(word: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Speed and pitch (resampling by 0.8-1.25) and a random spectral tilt."""
    word = resample_poly(word, 20, int(rng.integers(16, 26))).astype(np.float32)
    a = rng.uniform(-0.6, 0.6)
    shaped = word.copy()
    shaped[1:] += a * word[:-1]
    return (shaped / (1 + abs(a))).astype(np.float32)


def _noise(n: int, rng: np.random.Generator, babble: Sequence[kd.Rendition]) -> np.ndarray:
    """Unit-RMS noise: coloured (white, pink, brown), babble of words, or mains hum."""
    kind = rng.random()
    if kind < 0.7 or not babble:
        return kd.noise_shape(n, rng)
    if kind < 0.9:
        out = np.zeros(n)
        for _ in range(int(rng.integers(3, 8))):  # several talkers
            pos = int(rng.uniform(0, 0.5) * kd.SAMPLE_RATE)
            while pos < n:
                w = babble[int(rng.integers(len(babble)))].audio
                m = min(w.size, n - pos)
                out[pos : pos + m] += w[:m] * rng.uniform(0.3, 1.0)
                pos += m + int(rng.uniform(0.02, 0.3) * kd.SAMPLE_RATE)
        out += 0.05 * kd.noise_shape(n, rng)
    else:
        t = np.arange(n) / kd.SAMPLE_RATE
        f0 = 50.0 if rng.random() < 0.5 else 60.0
        out = np.zeros(n)
        for k in range(1, 6):  # harmonics
            out += rng.uniform(0.1, 1.0) * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.3))
        out += 0.2 * kd.noise_shape(n, rng)
    return np.asarray(out / max(float(np.std(out)), 1e-9))


@dataclass
class RunningBank:
    """What running streams are composed from: keyword and negative-word renditions,
    and negative phrases."""

    words: kd.WordBank
    phrases: list[kd.Rendition]


def compose_running(
    bank: RunningBank, rng: np.random.Generator, seconds: float, p_keyword: float,
    augment: bool = True,
) -> tuple[np.ndarray, list[kd.Segment]]:
    """A stream of running sentences over noise and, with ``augment``, perturbed words,
    reverberation, noise types, SNRs and gains (see the module docstring)."""
    sr = kd.SAMPLE_RATE
    total = int(seconds * sr)
    speech = np.zeros(total, np.float32)
    segments: list[kd.Segment] = []
    keywords = list(bank.words.keywords)
    pos = int(rng.uniform(0.05, 1.0) * sr)
    done = False
    while not done:
        level = 10 ** rng.uniform(-0.5, 0.2)  # one speaker level per sentence
        for _ in range(int(rng.integers(1, 13))):
            r = rng.random()
            if r < p_keyword:
                kw = keywords[int(rng.integers(len(keywords)))]
                rend = bank.words.keywords[kw][int(rng.integers(len(bank.words.keywords[kw])))]
            elif r < p_keyword + 0.08 and bank.phrases:
                rend = bank.phrases[int(rng.integers(len(bank.phrases)))]
            else:
                rend = bank.words.fillers[int(rng.integers(len(bank.words.fillers)))]
            word = perturb(rend.audio, rng) if augment else rend.audio
            n = word.size
            if pos + n > total:
                done = True
                break
            speech[pos : pos + n] += word * level * 10 ** rng.uniform(-0.1, 0.1)
            segments.append(kd.Segment(rend.word, pos, pos + n))
            pos += n + int(rng.uniform(0.03, 0.25) * sr)
        pos += int(rng.uniform(0.3, 1.5) * sr)
    voiced = np.abs(speech) > 1e-4
    rms = float(np.sqrt(np.mean(speech[voiced] ** 2))) if voiced.any() else 0.1
    if augment and rng.random() < P_REVERB:
        wet = fftconvolve(speech, room_impulse(rng))[:total]
        speech = (wet * rms / max(float(np.sqrt(np.mean(wet[voiced] ** 2))), 1e-9)
                  if voiced.any() else wet).astype(np.float32)
    snr = rng.uniform(*SNR_DB) if augment else 20.0
    noise = _noise(total, rng, bank.words.fillers if augment else ())
    mixed = speech + noise.astype(np.float32) * rms * 10 ** (-snr / 20)
    gain = np.exp(rng.uniform(np.log(GAIN[0]), np.log(GAIN[1]))) if augment else 1.0
    return np.clip(mixed * gain, -1.0, 1.0).astype(np.float32), segments


def end_aligned_labels(n_frames: int, segments: Sequence[kd.Segment]) -> np.ndarray:
    """Per-frame targets: keyword class on each keyword's second half and just after,
    :data:`IGNORE` on its first half, ``_unknown_`` on other words, ``_silence_`` elsewhere."""
    labels = np.zeros(n_frames, np.int64)
    centres = np.arange(n_frames) * kd.HOP + kd.WIN // 2
    unknown = kd.LABELS.index(kd.UNKNOWN)
    for seg in segments:
        if not seg.is_keyword:
            labels[(centres >= seg.start) & (centres < seg.stop)] = unknown
    after = int(KEYWORD_AFTER_END_S * kd.SAMPLE_RATE)
    for seg in segments:
        if seg.is_keyword:
            cut = seg.start + int((seg.stop - seg.start) * KEYWORD_IGNORED_FRACTION)
            labels[(centres >= seg.start) & (centres < cut)] = IGNORE
            labels[(centres >= cut) & (centres < seg.stop + after)] = kd.LABELS.index(seg.word)
    return labels
