"""``kws`` measured as a keyword spotter: misses at a fixed false-alarm rate per hour.

The evaluation set is long, continuous streams built once with a fixed seed from the
**test** voice variants (never used in training or validation):

- **keyword-free streams**: running "sentences" of filler words, numbers and near-miss
  words ("yesterday", "often", "upward", "stopper", ...; none is a homophone of a
  keyword) with short gaps inside a sentence and pauses between sentences; at least
  one hour in all (:data:`FULL`);
- **keyword streams**: the same running sentences with keywords in them (at least 500
  keyword occurrences), each keyword's start and end known to the sample.

Every stream has its own noise (white, pink or brown) at an SNR drawn from
:data:`SNRS_DB` (relative to the speech's RMS) and an overall gain from :data:`GAINS`
(clipped to [-1, 1]). Words are synthesized one by one with espeak-ng and joined, so
the sentences have no coarticulation across words: easier than real running speech in
that respect.

Figures (:func:`evaluate`), on each stream sent in 100 ms chunks through the server's own
chain (:mod:`lstm_train.kws_stream`: audio front-end, model step with the state carried,
keyword spotter):

- **false alarms per hour**: every final event on the keyword-free streams;
- **miss rate**: a keyword is hit when a final event of its label overlaps
  ``[start - 0.1 s, end + 0.5 s]``; any event on a keyword stream not matched to a
  keyword counts as a false alarm too (reported separately);
- **latency**: from a hit keyword's end to the moment its final event can be emitted,
  ``event.end_s + 25 ms`` (the frame after the detection closes needs its 25 ms window);
  streaming in chunks adds up to one chunk's duration on top;
- **DET curve**: miss rate against false alarms per hour as the threshold sweeps, the
  other post-processing settings as in the manifest.

The validation stream set (:func:`build`, ``split="val"``) is made the same way from the
**validation** variants, and is what :func:`tune` chooses the operating point on.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lstm_serve.events import Event, detect_events
from lstm_serve.manifest import MODEL_FILE, KeywordPostprocess
from lstm_serve.runtime import ModelRuntime
from lstm_train import kws_data as kd
from lstm_train.kws_stream import stream
from lstm_train.train import load_runtime

NEAR_MISS: tuple[str, ...] = (
    "yesterday", "yellow", "yet", "often", "offer", "offset", "upward", "upper", "uptown",
    "stopper", "stopping", "nobody", "notice", "nothing", "downtown", "downward", "lefty",
    "leftover", "lifted", "writer", "bright", "ride", "gopher", "going", "goal", "onion",
    "honor", "only",
)
NUMBERS: tuple[str, ...] = (
    "zero", "one", "two", "four", "six", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fifteen", "twenty", "thirty", "forty", "fifty", "hundred", "thousand",
)
SNRS_DB: tuple[float, ...] = (30.0, 20.0, 10.0, 5.0)
GAINS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)
HIT_BEFORE_S = 0.1
HIT_AFTER_S = 0.5
WINDOW_S = 0.025
EVAL_SEED = 20261201
VAL_SEED = 20261202


@dataclass(frozen=True)
class EvalScale:
    """Size of a stream set."""

    free_streams: int
    free_seconds: float
    keyword_streams: int
    keyword_seconds: float
    variants: int | None  # cap on the number of voice variants (quick sets)
    filler_renditions: int = 1
    keyword_renditions: int = 3


FULL = EvalScale(free_streams=26, free_seconds=240.0, keyword_streams=20, keyword_seconds=150.0,
                 variants=None)
VAL = EvalScale(free_streams=16, free_seconds=240.0, keyword_streams=12, keyword_seconds=150.0,
                variants=None)
#: the small fixed subset that tests/training re-measures (10 min keyword-free)
QUICK = EvalScale(free_streams=4, free_seconds=150.0, keyword_streams=1, keyword_seconds=150.0,
                  variants=4, keyword_renditions=1)
#: what ``lstm-train kws --quick`` tunes on
TINY = EvalScale(free_streams=1, free_seconds=60.0, keyword_streams=1, keyword_seconds=60.0,
                 variants=2, keyword_renditions=1)


@dataclass
class Stream:
    """One continuous stream: 16 kHz float32 audio and the keywords in it."""

    audio: np.ndarray
    seconds: float
    speech_seconds: float
    keywords: list[kd.KeywordTiming]
    snr_db: float
    gain: float


@dataclass
class StreamSet:
    """Keyword-free and keyword streams from one set of voice variants."""

    free: list[Stream]
    keyword: list[Stream]
    variants: list[str]
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def free_hours(self) -> float:
        return sum(s.seconds for s in self.free) / 3600.0

    @property
    def n_keywords(self) -> int:
        return sum(len(s.keywords) for s in self.keyword)


def _compose(
    bank: kd.WordBank, rng: np.random.Generator, seconds: float, p_keyword: float
) -> tuple[np.ndarray, list[kd.KeywordTiming], float, float, float]:
    """Running sentences (3-12 words, 30-200 ms gaps, 0.4-1.5 s pauses)."""
    sr = kd.SAMPLE_RATE
    total = int(seconds * sr)
    audio = np.zeros(total, np.float32)
    timings: list[kd.KeywordTiming] = []
    speech = 0
    pos = int(rng.uniform(0.2, 1.0) * sr)
    keywords = list(bank.keywords)
    done = False
    while not done:
        level = 10 ** rng.uniform(-0.4, 0.15)  # one speaker level per sentence
        for _ in range(int(rng.integers(3, 13))):
            if rng.random() < p_keyword:
                kw = keywords[int(rng.integers(len(keywords)))]
                rend = bank.keywords[kw][int(rng.integers(len(bank.keywords[kw])))]
            else:
                rend = bank.fillers[int(rng.integers(len(bank.fillers)))]
            n = rend.audio.size
            if pos + n > total - sr // 2:
                done = True
                break
            audio[pos : pos + n] += rend.audio * level * 10 ** rng.uniform(-0.1, 0.1)
            if rend.word in kd.KEYWORDS:
                timings.append(kd.KeywordTiming(rend.word, pos / sr, (pos + n) / sr))
            speech += n
            pos += n + int(rng.uniform(0.03, 0.2) * sr)
        pos += int(rng.uniform(0.4, 1.5) * sr)
    voiced = np.abs(audio) > 1e-4
    rms = float(np.sqrt(np.mean(audio[voiced] ** 2))) if voiced.any() else 0.1
    snr = float(SNRS_DB[int(rng.integers(len(SNRS_DB)))])
    gain = float(GAINS[int(rng.integers(len(GAINS)))])
    mixed = audio + kd.noise_shape(total, rng).astype(np.float32) * rms * 10 ** (-snr / 20)
    return np.clip(mixed * gain, -1.0, 1.0), timings, speech / sr, snr, gain


def _build(split: str, scale: EvalScale, seed: int) -> StreamSet:
    variants = kd.split_variants(0)[split]
    if scale.variants is not None:
        variants = variants[: scale.variants]
    fillers = (*kd.FILLERS, *NEAR_MISS, *NUMBERS)
    bank = kd.build_bank(variants, seed, keyword_renditions=scale.keyword_renditions,
                         filler_renditions=scale.filler_renditions, fillers=fillers)
    rng = np.random.default_rng(seed + 1)
    out = StreamSet([], [], list(variants), seed)
    for count, seconds, p_kw, target in (
        (scale.free_streams, scale.free_seconds, 0.0, out.free),
        (scale.keyword_streams, scale.keyword_seconds, 0.12, out.keyword),
    ):
        for _ in range(count):
            audio, timings, speech, snr, gain = _compose(bank, rng, seconds, p_kw)
            target.append(Stream(audio.astype(np.float32), seconds, speech, timings, snr, gain))
    return out


def build(split: str = "test", scale: EvalScale = FULL, seed: int | None = None) -> StreamSet:
    """The stream set for ``split`` (``test`` or ``val``), built in a fresh spawned
    process so that espeak-ng's internal state is the same every time (see
    :func:`lstm_train.kws_sets.test_set`)."""
    if seed is None:
        seed = EVAL_SEED if split == "test" else VAL_SEED
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_build, (split, scale, seed))


# ------------------------------------------------------------------- scoring


def posteriors(runtime: ModelRuntime, streams: Sequence[Stream]) -> list[np.ndarray]:
    """Per-frame posteriors of each stream, streamed in 100 ms chunks through the
    server's own chain (:func:`lstm_train.kws_stream.stream`); the operating points
    are then swept on them."""
    return [stream(runtime, s.audio).posteriors for s in streams]


def hits(events: Sequence[Event], refs: Sequence[kd.KeywordTiming]
          ) -> tuple[list[float], int, int]:
    """Latencies of hit keywords, the number of misses and of unmatched events."""
    used = [False] * len(events)
    latencies: list[float] = []
    misses = 0
    for r in refs:
        found = None
        for i, e in enumerate(events):
            if (not used[i] and e.label == r.label and e.end_s >= r.start_s - HIT_BEFORE_S
                    and e.start_s <= r.end_s + HIT_AFTER_S):
                found = i
                break
        if found is None:
            misses += 1
        else:
            used[found] = True
            latencies.append(events[found].end_s + WINDOW_S - r.end_s)
    return latencies, misses, used.count(False)


def score(
    streams: StreamSet, post_free: Sequence[np.ndarray], post_kw: Sequence[np.ndarray],
    postprocess: KeywordPostprocess, labels: Sequence[str], frame_rate_hz: float,
) -> dict[str, Any]:
    """Figures at one operating point (events from :func:`lstm_serve.events.detect_events`,
    the server's own spotter)."""
    fa_labels: dict[str, int] = {}
    worst_15min = 0.0
    fa_free = 0
    for s, p in zip(streams.free, post_free, strict=True):
        events = detect_events(p, postprocess, labels, frame_rate_hz)
        fa_free += len(events)
        for e in events:
            fa_labels[e.label] = fa_labels.get(e.label, 0) + 1
        worst_15min = max(worst_15min, len(events) * 900.0 / s.seconds)
    latencies: list[float] = []
    misses = extra = 0
    for s, p in zip(streams.keyword, post_kw, strict=True):
        events = detect_events(p, postprocess, labels, frame_rate_hz)
        lat, m, x = hits(events, s.keywords)
        latencies += lat
        misses += m
        extra += x
    n_kw = streams.n_keywords
    lat_arr = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "false_alarms": fa_free,
        "false_alarms_per_hour": fa_free / streams.free_hours,
        "false_alarms_by_label": dict(sorted(fa_labels.items(), key=lambda kv: -kv[1])),
        "worst_stream_false_alarms_per_15_min": worst_15min,
        "keywords": n_kw,
        "misses": misses,
        "miss_rate": misses / max(n_kw, 1),
        "false_alarms_on_keyword_streams": extra,
        "latency_p50_s": float(np.percentile(lat_arr, 50)),
        "latency_p95_s": float(np.percentile(lat_arr, 95)),
    }


def det_curve(
    streams: StreamSet, post_free: Sequence[np.ndarray], post_kw: Sequence[np.ndarray],
    postprocess: KeywordPostprocess, labels: Sequence[str], frame_rate_hz: float,
    thresholds: Sequence[float],
) -> list[dict[str, float]]:
    """``[{threshold, false_alarms_per_hour, miss_rate}]`` over ``thresholds``."""
    rows = []
    for thr in thresholds:
        op = postprocess.model_copy(update={"threshold": float(thr)})
        fig = score(streams, post_free, post_kw, op, labels, frame_rate_hz)
        rows.append({"threshold": float(thr), "false_alarms_per_hour": fig["false_alarms_per_hour"],
                     "miss_rate": fig["miss_rate"], "latency_p95_s": fig["latency_p95_s"]})
    return rows


def miss_at_fa(curve: Sequence[dict[str, float]], fa_per_hour: float) -> float | None:
    """The lowest miss rate on the curve at or below ``fa_per_hour`` (None if none)."""
    ok = [r["miss_rate"] for r in curve if r["false_alarms_per_hour"] <= fa_per_hour]
    return min(ok) if ok else None


DET_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99,
                  0.995, 0.998, 0.999, 0.9995)


def plot_det(curves: dict[str, Sequence[dict[str, float]]], points: dict[str, tuple[float, float]],
             path: Path, title: str) -> None:
    """Miss rate against false alarms per hour (log-log; zero FA drawn at 0.1/h)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, curve in curves.items():
        fa = [max(r["false_alarms_per_hour"], 0.1) for r in curve]
        miss = [max(r["miss_rate"], 1e-3) for r in curve]
        ax.plot(fa, miss, marker="o", ms=3, label=name)
    for name, (fa_h, miss_r) in points.items():
        ax.plot([max(fa_h, 0.1)], [max(miss_r, 1e-3)], marker="*", ms=12, ls="none", label=name)
    ax.axvline(1.0, color="grey", ls="--", lw=0.8)
    ax.axhline(0.05, color="grey", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("false alarms per hour (keyword-free speech; 0 drawn at 0.1)")
    ax.set_ylabel("miss rate")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def evaluate(package_dir: Path, streams: StreamSet,
             thresholds: Sequence[float] = DET_THRESHOLDS) -> dict[str, Any]:
    """Every figure of a kws package on ``streams``, at the manifest's operating point
    and along the DET curve, and the real-time factor: the seconds spent streaming
    (front-end and model, one onnxruntime thread) per second of audio."""
    runtime = load_runtime(package_dir)
    m = runtime.manifest
    post = m.output.postprocess
    assert post is not None
    labels, rate = m.output.labels, m.input.frame_rate_hz
    started = time.process_time()
    pf, pk = posteriors(runtime, streams.free), posteriors(runtime, streams.keyword)
    cpu = time.process_time() - started
    audio_s = sum(s.seconds for s in (*streams.free, *streams.keyword))
    shipped = score(streams, pf, pk, post, labels, rate)
    curve = det_curve(streams, pf, pk, post, labels, rate, thresholds)
    return {
        "variants": streams.variants,
        "keyword_free_hours": streams.free_hours,
        "keyword_free_speech_hours": sum(s.speech_seconds for s in streams.free) / 3600.0,
        "keyword_stream_hours": sum(s.seconds for s in streams.keyword) / 3600.0,
        "operating_point": post.model_dump(),
        "shipped": shipped,
        "miss_rate_at_1_fa_per_hour": miss_at_fa(curve, 1.0),
        "real_time_factor": cpu / audio_s,
        "model_bytes": (package_dir / MODEL_FILE).stat().st_size,
        "det": curve,
    }


EVAL_JSON = "kws_eval.json"


def summary_lines(fig: dict[str, Any]) -> list[str]:
    """Markdown lines of the headline figures."""
    s = fig["shipped"]
    m1 = fig["miss_rate_at_1_fa_per_hour"]
    return [
        f"- voices: {len(fig['variants'])} held-out test variants; keyword-free streams "
        f"{fig['keyword_free_hours']:.2f} h ({fig['keyword_free_speech_hours']:.2f} h of speech), "
        f"keyword streams {fig['keyword_stream_hours']:.2f} h with {s['keywords']} keywords",
        f"- shipped operating point {fig['operating_point']}: **{s['false_alarms_per_hour']:.1f} "
        f"false alarms per hour** ({s['false_alarms']} on keyword-free speech; worst stream "
        f"{s['worst_stream_false_alarms_per_15_min']:.0f} per 15 min), **miss rate "
        f"{s['miss_rate']:.3f}**, latency p50 {s['latency_p50_s'] * 1000:.0f} ms / p95 "
        f"{s['latency_p95_s'] * 1000:.0f} ms after the keyword's end",
        "- miss rate at 1 false alarm per hour: "
        + (f"**{m1:.3f}**" if m1 is not None else "**not reached** (no threshold on the curve "
           "gets to 1 FA/h)"),
        f"- false alarms by label: {s['false_alarms_by_label']}",
        f"- real-time factor {fig['real_time_factor']:.4f} (CPU seconds per audio second, "
        f"front-end and model on one onnxruntime thread); model.onnx {fig['model_bytes']:,} "
        "bytes",
    ]


REPORT_SECTION = "## As a keyword spotter (kws_eval, test voices)"


def write_report_section(package_dir: Path, fig: dict[str, Any], png: str) -> None:
    """Put the headline figures and the DET plot into the package's ``report.md``,
    replacing an earlier section of this kind."""
    path = package_dir / "report.md"
    text = path.read_text() if path.exists() else ""
    text = text.split("\n" + REPORT_SECTION)[0].rstrip("\n")
    section = [
        "", REPORT_SECTION, "",
        "Measured with `python -m lstm_train.kws_eval` on long streams of running speech "
        "from the held-out test voices (see docs/training.md):", "",
        *summary_lines(fig), "", f"![kws DET curve]({png})", "",
    ]
    path.write_text(text + "\n" + "\n".join(section))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lstm_train.kws_eval --model models/kws/1 --png docs/img/kws_det.png``

    The full set writes ``kws_eval.json``, the DET plot (``--png`` and ``kws_det.png`` in
    the package) and a section of ``report.md``; ``--quick`` writes only
    ``kws_eval_quick.json`` (and a plot if ``--png`` is given)."""
    import argparse
    import json
    import shutil

    parser = argparse.ArgumentParser(description="kws as a keyword spotter (see module doc)")
    parser.add_argument("--model", type=Path, default=Path("models/kws/1"))
    parser.add_argument("--png", type=Path, default=None,
                        help="DET plot (default: docs/img/kws_det.png; none with --quick)")
    parser.add_argument("--quick", action="store_true", help="the small fixed subset")
    args = parser.parse_args(argv)
    png = args.png or (None if args.quick else Path("docs/img/kws_det.png"))
    streams = build("test", QUICK if args.quick else FULL)
    fig = evaluate(args.model, streams)
    fig["scale"] = "quick" if args.quick else "full"
    s = fig["shipped"]
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_det({f"{args.model.parent.name} v{args.model.name}, threshold sweep": fig["det"]},
                 {"shipped operating point": (s["false_alarms_per_hour"], s["miss_rate"])},
                 png, f"kws DET on {fig['keyword_free_hours']:.2f} h keyword-free + "
                 f"{s['keywords']} keywords (unseen voices)")
    (args.model / ("kws_eval_quick.json" if args.quick else EVAL_JSON)).write_text(
        json.dumps(fig, indent=2) + "\n")
    if not args.quick and png is not None:
        if png.resolve() != (args.model / "kws_det.png").resolve():
            shutil.copyfile(png, args.model / "kws_det.png")
        write_report_section(args.model, fig, "kws_det.png")
    print("\n".join(summary_lines(fig)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
