"""The synthesized keyword-spotting corpus, made offline with espeak-ng.

Voices are ``<accent>+<variant>`` (e.g. ``en-us+m3``). The split is by **variant**: the
test variants never occur in training or validation, so test speakers are unseen.
Every rendition draws an accent, speaking rate, pitch and pitch range at random.

Three kinds of data come out of it, all 16 kHz float32 audio:

- **streams**: a few seconds of words (keywords and fillers) separated by random
  silences, over noise, with a per-frame label (keyword, ``_unknown_`` for filler
  words, ``_silence_`` otherwise); used for training and validation;
- **clips**: 1 s clips with one keyword, one filler word or only noise; the clip
  accuracy is measured on these;
- **sentences**: longer streams with the time of every keyword, for the streaming
  event evaluation and the demo WAVs.

Everything is deterministic given the seed: a split's random stream never depends on
how much of another split was generated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.signal import resample_poly

from lstm_serve.manifest import LogMelFrontend
from lstm_train.synth import ACCENTS, speaker, voice_variants

SAMPLE_RATE = 16000
KEYWORDS: tuple[str, ...] = (
    "yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go",
)
SILENCE = "_silence_"
UNKNOWN = "_unknown_"
LABELS: tuple[str, ...] = (SILENCE, UNKNOWN, *KEYWORDS)
FILLERS: tuple[str, ...] = (
    "the", "a", "and", "please", "turn", "light", "music", "house", "water", "seven",
    "happy", "bird", "dog", "tree", "cat", "green", "table", "phone", "window", "today",
    "maybe", "morning", "very", "little", "paper", "open", "close", "hello", "thank",
    "you", "computer", "river", "money", "apple", "orange", "number", "garden", "forward",
    "back", "bed", "wow", "follow", "learn", "visual", "marvin", "sheila", "then", "now",
    "what", "is", "it", "we", "can", "will", "make", "good", "time", "five", "three",
)

FRONTEND = LogMelFrontend(
    sample_rate_hz=SAMPLE_RATE,
    window_ms=25.0,
    hop_ms=10.0,
    n_fft=512,
    n_mels=40,
    log_floor=1e-6,
    f_min_hz=20.0,
    f_max_hz=7600.0,
    preemphasis=0.97,
)
HOP = 160
WIN = 400
#: keyword frames are labelled from the word's onset to this long after its end
LABEL_TAIL_S = 0.05


def split_variants(seed: int = 0, n_test: int = 20, n_val: int = 10) -> dict[str, list[str]]:
    """Voice variants per split; the test variants are disjoint from the others."""
    variants = voice_variants()
    order = np.random.default_rng(seed + 7919).permutation(len(variants))
    shuffled = [variants[i] for i in order]
    return {
        "test": sorted(shuffled[:n_test]),
        "val": sorted(shuffled[n_test : n_test + n_val]),
        "train": sorted(shuffled[n_test + n_val :]),
    }


@dataclass
class Rendition:
    """One synthesized word."""

    word: str
    audio: np.ndarray
    voice: str


@dataclass
class WordBank:
    """Synthesized renditions of keywords and fillers for one set of variants."""

    keywords: dict[str, list[Rendition]] = field(default_factory=dict)
    fillers: list[Rendition] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Number of renditions."""
        return sum(len(v) for v in self.keywords.values()) + len(self.fillers)


def _render(word: str, variant: str, rng: np.random.Generator) -> Rendition:
    accent = ACCENTS[int(rng.integers(len(ACCENTS)))]
    voice = f"{accent}+{variant}"
    audio = speaker(SAMPLE_RATE).say(
        word,
        voice,
        rate=int(rng.integers(120, 231)),
        pitch=int(rng.integers(20, 81)),
        pitch_range=int(rng.integers(20, 81)),
    )
    return Rendition(word, audio, voice)


def build_bank(
    variants: Sequence[str],
    seed: int,
    keyword_renditions: int = 4,
    filler_renditions: int = 1,
    fillers: Sequence[str] = FILLERS,
    keywords: Sequence[str] = KEYWORDS,
) -> WordBank:
    """Synthesize every keyword ``keyword_renditions`` times and every filler
    ``filler_renditions`` times per variant."""
    rng = np.random.default_rng(seed)
    bank = WordBank(keywords={k: [] for k in keywords})
    for variant in variants:
        for kw in keywords:
            for _ in range(keyword_renditions):
                bank.keywords[kw].append(_render(kw, variant, rng))
        for word in fillers:
            for _ in range(filler_renditions):
                bank.fillers.append(_render(word, variant, rng))
    return bank


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Background noise: white, pink-ish or brown-ish, at a random level."""
    white = noise_shape(n, rng)
    level = 10 ** rng.uniform(-3.7, -1.7)  # RMS 0.0002 .. 0.02
    return (white * level).astype(np.float32)


def noise_shape(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise of a random colour: white, pink-ish or brown-ish."""
    kind = int(rng.integers(3))
    white = rng.standard_normal(n)
    if kind == 1:
        spec = np.fft.rfft(white)
        spec /= np.sqrt(np.maximum(np.arange(spec.size), 1.0))
        white = np.fft.irfft(spec, n)
    elif kind == 2:
        white = np.cumsum(white)
        white -= np.linspace(white[0], white[-1], n) if n > 1 else white
    white /= max(float(np.std(white)), 1e-9)
    return white


@dataclass
class Segment:
    """A word placed in a stream: samples ``[start, stop)``."""

    word: str
    start: int
    stop: int

    @property
    def is_keyword(self) -> bool:
        """Whether the word is one of the keywords."""
        return self.word in KEYWORDS


def _pick(bank: WordBank, rng: np.random.Generator, p_keyword: float) -> Rendition:
    if rng.random() < p_keyword or not bank.fillers:
        kw = list(bank.keywords)[int(rng.integers(len(bank.keywords)))]
        options = bank.keywords[kw]
    else:
        options = bank.fillers
    return options[int(rng.integers(len(options)))]


def compose(
    bank: WordBank,
    rng: np.random.Generator,
    seconds: float,
    p_keyword: float = 0.5,
    gap_s: tuple[float, float] = (0.1, 0.7),
    lead_s: tuple[float, float] = (0.05, 0.6),
    tilt: bool = False,
) -> tuple[np.ndarray, list[Segment]]:
    """A stream of about ``seconds`` seconds: words, silences and noise.

    With ``tilt`` (training augmentation), each word is also resampled by a random
    factor in 0.8-1.25 (which shifts pitch, formants and duration together, like a
    different vocal tract) and goes through a random first-order filter
    ``y[n] = x[n] + a*x[n-1]`` (``a`` in [-0.6, 0.6]), a cheap change of timbre; both
    help the model generalize to unseen voices."""
    total = int(seconds * SAMPLE_RATE)
    audio = np.zeros(total, np.float32)
    segments: list[Segment] = []
    pos = int(rng.uniform(*lead_s) * SAMPLE_RATE)
    while True:
        rend = _pick(bank, rng, p_keyword)
        word = rend.audio
        if tilt:
            word = resample_poly(word, 20, int(rng.integers(16, 26))).astype(np.float32)
            a = rng.uniform(-0.6, 0.6)
            shaped = word.copy()
            shaped[1:] += a * word[:-1]
            word = shaped / (1 + abs(a))
        n = word.size
        if pos + n > total:
            break
        gain = 10 ** rng.uniform(-0.6, 0.25)
        audio[pos : pos + n] += word * gain
        segments.append(Segment(rend.word, pos, pos + n))
        pos += n + int(rng.uniform(*gap_s) * SAMPLE_RATE)
    audio += noise(total, rng)
    return np.clip(audio, -1.0, 1.0), segments


def frame_labels(n_frames: int, segments: Sequence[Segment]) -> np.ndarray:
    """Per-frame class indices into :data:`LABELS` for a composed stream."""
    labels = np.zeros(n_frames, np.int64)  # _silence_
    centres = np.arange(n_frames) * HOP + WIN // 2
    tail = int(LABEL_TAIL_S * SAMPLE_RATE)
    for seg in segments:
        if seg.is_keyword:
            mask = (centres >= seg.start) & (centres < seg.stop + tail)
            labels[mask] = LABELS.index(seg.word)
        else:
            mask = (centres >= seg.start) & (centres < seg.stop)
            labels[mask] = LABELS.index(UNKNOWN)
    return labels


CLIP_SECONDS = 1.5
#: a streaming detector reports a word after hearing it: clips keep this much after it
CLIP_TAIL_S = 0.4


def clip_set(
    bank: WordBank, rng: np.random.Generator, per_class: int
) -> tuple[list[np.ndarray], list[str]]:
    """1.5 s clips: ``per_class`` per keyword, plus as many filler and noise-only clips.

    The word starts at a random offset in the first 0.1-0.5 s and is followed by at
    least :data:`CLIP_TAIL_S` of noise, so that a causal detector has heard the whole
    word by the clip's end. Label: the keyword, ``_unknown_`` or ``_silence_``.
    """
    clips: list[np.ndarray] = []
    labels: list[str] = []
    classes = [*bank.keywords, UNKNOWN, SILENCE]
    n = int(CLIP_SECONDS * SAMPLE_RATE)
    tail = int(CLIP_TAIL_S * SAMPLE_RATE)
    for label in classes:
        for i in range(per_class):
            audio = np.zeros(n, np.float32)
            if label != SILENCE:
                pool = bank.fillers if label == UNKNOWN else bank.keywords[label]
                # cycle through renditions so every voice is represented
                rend = pool[(i * 7919 + int(rng.integers(len(pool)))) % len(pool)
                            if label == UNKNOWN else i % len(pool)]
                offset = int(rng.uniform(0.1, 0.5) * SAMPLE_RATE)
                word = rend.audio[: n - offset - tail]
                audio[offset : offset + word.size] += word * 10 ** rng.uniform(-0.6, 0.25)
            audio += noise(n, rng)
            clips.append(np.clip(audio, -1.0, 1.0))
            labels.append(label)
    return clips, labels


@dataclass
class KeywordTiming:
    """A keyword's label and time in a sentence."""

    label: str
    start_s: float
    end_s: float


def sentence_set(
    bank: WordBank, rng: np.random.Generator, count: int, seconds: float = 8.0
) -> list[tuple[np.ndarray, list[KeywordTiming]]]:
    """Sentences of keywords and fillers with each keyword's known time."""
    out = []
    for _ in range(count):
        audio, segments = compose(
            bank, rng, seconds, p_keyword=0.35, gap_s=(0.15, 0.8), lead_s=(0.3, 1.0)
        )
        timings = [
            KeywordTiming(s.word, s.start / SAMPLE_RATE, s.stop / SAMPLE_RATE)
            for s in segments
            if s.is_keyword
        ]
        out.append((audio, timings))
    return out
