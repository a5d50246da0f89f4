"""The ``kws`` recipe: streaming keyword spotting from raw audio.

Pipeline: synthesize words with espeak-ng (:mod:`lstm_train.kws_data`), compose noisy
streams with per-frame labels, compute features with :mod:`lstm_serve.features` (the
server's own module), train a unidirectional LSTM with per-frame posteriors over
``_silence_``, ``_unknown_`` and the 10 keywords, tune the event post-processing on
validation voices, export, and evaluate the exported graph on unseen voices:

- **clip accuracy**: 1.5 s clips (each keyword, filler words, noise only); a clip's
  prediction is the highest-scoring final event of :class:`lstm_serve.events.KeywordSpotter`
  over the clip, or background when there is none;
- **streaming event F1**: 8 s sentences streamed in 100 ms chunks through
  :class:`~lstm_serve.features.StreamingLogMel`, the ONNX graph with its state carried
  between chunks, and the spotter. An event is a true positive when an unmatched
  reference keyword has the same label and both its start and end lie within
  ``±0.3 s`` of the event's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lstm_serve.events import Event, KeywordSpotter
from lstm_serve.features import StreamingLogMel, logmel
from lstm_serve.manifest import KeywordPostprocess
from lstm_train import kws_data as kd
from lstm_train.export import build_manifest, export_package, update_provenance
from lstm_train.model import NetConfig, RecurrentNet
from lstm_train.report import confusion_matrix, write_reports
from lstm_train.train import (
    Batch,
    OrtPackage,
    RunOptions,
    fit,
    package_size_bytes,
    seed_everything,
    set_threads,
)

NAME = "kws"
TIMING_TOLERANCE_S = 0.3
CHUNK_MS = 100
#: the test set never depends on ``--seed``: it is the same held-out data every time
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


FULL = Scale(
    keyword_renditions=10, filler_renditions=4, train_streams=9000, val_streams=200,
    stream_seconds=3.0, val_clips_per_class=30, val_sentences=30, test_clips_per_class=100,
    test_sentences=60, test_keyword_renditions=3, hidden=128, layers=2, epochs=20, batch=64,
    variants=None,
)
QUICK = Scale(
    keyword_renditions=1, filler_renditions=1, train_streams=96, val_streams=16,
    stream_seconds=2.0, val_clips_per_class=3, val_sentences=3, test_clips_per_class=4,
    test_sentences=4, test_keyword_renditions=1, hidden=32, layers=1, epochs=2, batch=32,
    variants=(6, 2, 3),
)


def _variants(scale: Scale) -> dict[str, list[str]]:
    splits = kd.split_variants(SPLIT_SEED)
    if scale.variants is not None:
        for key, cap in zip(("train", "val", "test"), scale.variants, strict=True):
            splits[key] = splits[key][:cap]
    return splits


def _features(audios: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([logmel(a, kd.FRONTEND) for a in audios])


def _streams(
    bank: kd.WordBank, rng: np.random.Generator, count: int, seconds: float, desc: str,
    quiet: bool,
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for _ in tqdm(range(count), desc=desc, disable=quiet, leave=False, unit="stream"):
        audio, segments = kd.compose(bank, rng, seconds, p_keyword=0.5, tilt=True)
        feats = logmel(audio, kd.FRONTEND)
        xs.append(feats)
        ys.append(kd.frame_labels(feats.shape[0], segments))
    return np.stack(xs).astype(np.float32), np.stack(ys)


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
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_build_test_set, (quick,))


def _build_test_set(quick: bool) -> HeldOut:
    scale = QUICK if quick else FULL
    variants = _variants(scale)["test"]
    bank = kd.build_bank(variants, TEST_SEED, keyword_renditions=scale.test_keyword_renditions)
    rng = np.random.default_rng(TEST_SEED + 1)
    clips, labels = kd.clip_set(bank, rng, scale.test_clips_per_class)
    sentences = kd.sentence_set(bank, np.random.default_rng(TEST_SEED + 2), scale.test_sentences)
    return HeldOut(_features(clips), labels, sentences, variants)


# ------------------------------------------------------------------- evaluation


def clip_predictions(
    posteriors: np.ndarray, postprocess: KeywordPostprocess, labels: Sequence[str],
    frame_rate_hz: float,
) -> list[str]:
    """Per clip: the label of the best final event, or ``_background_`` if none."""
    preds = []
    for post in posteriors:
        spotter = KeywordSpotter(postprocess, labels, frame_rate_hz)
        events = [e for e in spotter.update(post) + spotter.flush() if e.is_final]
        preds.append(max(events, key=lambda e: e.score).label if events else "_background_")
    return preds


def clip_accuracy(preds: Sequence[str], truth: Sequence[str]) -> float:
    """Keyword clips must give their keyword; background clips must give no event."""
    background = {kd.SILENCE, kd.UNKNOWN}
    ok = [
        (p == "_background_") if t in background else (p == t)
        for p, t in zip(preds, truth, strict=True)
    ]
    return float(np.mean(ok)) if ok else 0.0


def match_events(
    events: Sequence[Event], refs: Sequence[kd.KeywordTiming], tol: float = TIMING_TOLERANCE_S
) -> tuple[int, int, int]:
    """Greedy one-to-one matching in time order: ``(true_pos, false_pos, false_neg)``."""
    used = [False] * len(refs)
    tp = 0
    for e in sorted(events, key=lambda e: e.start_s):
        for i, r in enumerate(refs):
            if (
                not used[i]
                and r.label == e.label
                and abs(e.start_s - r.start_s) <= tol
                and abs(e.end_s - r.end_s) <= tol
            ):
                used[i] = True
                tp += 1
                break
    return tp, len(events) - tp, len(refs) - tp


def prf(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Precision, recall and F1 from counts."""
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": p, "recall": r, "f1": f, "tp": tp, "fp": fp, "fn": fn}


def stream_events(
    package: OrtPackage, audio: np.ndarray, chunk_ms: float = CHUNK_MS
) -> list[Event]:
    """Final events of one stream through the served path: streaming log-mel, the
    ONNX graph with carried state, chunk by chunk, and the spotter."""
    manifest = package.manifest
    frontend = manifest.frontend
    assert frontend.kind == "audio"
    post = manifest.output.postprocess
    assert post is not None
    feats = StreamingLogMel(frontend)
    spotter = KeywordSpotter(post, manifest.output.labels, manifest.input.frame_rate_hz)
    states = package.zero_states(1)
    step = int(frontend.sample_rate_hz * chunk_ms / 1000)
    events: list[Event] = []

    def run(frames: np.ndarray) -> None:
        nonlocal states
        if frames.shape[0] == 0:
            return
        y, states = package.run(frames[None], states)
        events.extend(spotter.update(y[0]))

    for start in range(0, audio.size, step):
        run(feats.accept(audio[start : start + step]))
    run(feats.flush())
    events.extend(spotter.flush())
    return [e for e in events if e.is_final]


def evaluate_package(package_dir: Path, data: HeldOut) -> dict[str, Any]:
    """Every test figure of a kws package, measured with onnxruntime."""
    pkg = OrtPackage(package_dir)
    manifest = pkg.manifest
    post = manifest.output.postprocess
    assert post is not None
    labels = manifest.output.labels
    y, _ = pkg.run(data.clip_x)
    preds = clip_predictions(y, post, labels, manifest.input.frame_rate_hz)
    acc = clip_accuracy(preds, data.clip_labels)
    kw_mask = [t in kd.KEYWORDS for t in data.clip_labels]
    kw_acc = clip_accuracy(
        [p for p, m in zip(preds, kw_mask, strict=True) if m],
        [t for t, m in zip(data.clip_labels, kw_mask, strict=True) if m],
    )
    tp = fp = fn = 0
    for audio, refs in data.sentences:
        a, b, c = match_events(stream_events(pkg, audio), refs)
        tp, fp, fn = tp + a, fp + b, fn + c
    classes = [*kd.KEYWORDS, "_background_"]
    index = {lab: i for i, lab in enumerate(classes)}
    truth_idx = [index.get(t, index["_background_"]) for t in data.clip_labels]
    pred_idx = [index[p] for p in preds]
    return {
        "clip_accuracy": acc,
        "keyword_clip_accuracy": kw_acc,
        "clips": len(preds),
        "events": prf(tp, fp, fn),
        "sentences": len(data.sentences),
        "confusion": confusion_matrix(np.array(truth_idx), np.array(pred_idx), len(classes)),
        "confusion_labels": classes,
    }


def _torch_posteriors(net: RecurrentNet, x: np.ndarray, batch: int = 256) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch])
            outs.append(net(xb, *net.zero_states(xb.shape[0]))[0].numpy())
    return np.concatenate(outs)


def _tune_postprocess(
    net: RecurrentNet, sentences: Sequence[tuple[np.ndarray, list[kd.KeywordTiming]]],
    clip_x: np.ndarray, clip_labels: Sequence[str],
) -> tuple[KeywordPostprocess, dict[str, float]]:
    """Grid-search smoothing, threshold and min length for the mean of event F1 and
    clip accuracy on validation voices (whole-sequence posteriors; streaming is equal
    within 1e-5)."""
    clip_posts = _torch_posteriors(net, clip_x)
    feats = [logmel(a, kd.FRONTEND) for a, _ in sentences]
    posts = [_torch_posteriors(net, f[None])[0] for f in feats]
    best: tuple[tuple[float, float], KeywordPostprocess, dict[str, float]] | None = None
    for smoothing in (3, 5, 8):
        for threshold in (0.4, 0.5, 0.6, 0.7, 0.8):
            for min_frames in (2, 4, 6):
                post = KeywordPostprocess(
                    smoothing_frames=smoothing, threshold=threshold, refractory_s=0.3,
                    background_labels=[kd.SILENCE, kd.UNKNOWN], min_frames=min_frames,
                )
                tp = fp = fn = 0
                for p, (_, refs) in zip(posts, sentences, strict=True):
                    spotter = KeywordSpotter(post, kd.LABELS, 100.0)
                    ev = [e for e in spotter.update(p) + spotter.flush() if e.is_final]
                    a, b, c = match_events(ev, refs)
                    tp, fp, fn = tp + a, fp + b, fn + c
                figures = prf(tp, fp, fn)
                clip_acc = clip_accuracy(
                    clip_predictions(clip_posts, post, kd.LABELS, 100.0), clip_labels
                )
                figures["clip_accuracy"] = clip_acc
                key = ((figures["f1"] + clip_acc) / 2, threshold)
                if best is None or key > best[0]:
                    best = (key, post, figures)
    assert best is not None
    return best[1], best[2]


# ------------------------------------------------------------------------ recipe


def _batches(x: np.ndarray, y: np.ndarray, batch: int, seed: int, mean: np.ndarray) -> Any:
    """Shuffled batches; each stream gets one random mel-band mask (up to 5 bands set
    to their training mean, SpecAugment-style)."""

    def gen(epoch: int) -> Iterable[Batch]:
        rng = np.random.default_rng(seed * 1000 + epoch)
        order = rng.permutation(len(x))
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            xb = x[idx].copy()
            for row in xb:
                width = int(rng.integers(0, 6))
                lo = int(rng.integers(0, xb.shape[-1] - width + 1))
                row[:, lo : lo + width] = mean[lo : lo + width]
            yield torch.from_numpy(xb), torch.from_numpy(y[idx])

    return gen


def _loss(net: RecurrentNet, batch: Batch) -> tuple[torch.Tensor, int, int]:
    x, y = batch
    logits = net.logits(x, *net.zero_states(x.shape[0]))[0]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    correct = int((logits.argmax(-1) == y).sum())
    return loss, correct, int(y.numel())


def run(opts: RunOptions) -> dict[str, Any]:
    """Train, tune, export and evaluate the kws model; returns the figures."""
    scale = QUICK if opts.quick else FULL
    seed_everything(opts.seed)
    set_threads()
    t0 = time.perf_counter()
    splits = _variants(scale)
    bank = kd.build_bank(splits["train"], opts.seed * 7 + 1, scale.keyword_renditions,
                         scale.filler_renditions)
    val_bank = kd.build_bank(splits["val"], opts.seed * 7 + 2, 2, 1)
    rng = np.random.default_rng(opts.seed * 7 + 3)
    x, y = _streams(bank, rng, scale.train_streams, scale.stream_seconds, "train streams",
                    opts.quiet)
    vx, vy = _streams(val_bank, rng, scale.val_streams, scale.stream_seconds, "val streams",
                      opts.quiet)
    vclips, vlabels = kd.clip_set(val_bank, rng, scale.val_clips_per_class)
    vclip_x = _features(vclips)
    vsentences = kd.sentence_set(val_bank, rng, scale.val_sentences)
    data_seconds = time.perf_counter() - t0

    flat = x.reshape(-1, x.shape[-1])
    cfg = NetConfig(
        input_dim=kd.FRONTEND.n_mels, output_dim=len(kd.LABELS), hidden=scale.hidden,
        layers=scale.layers, cell="lstm", head="per_frame", dropout=0.1,
        mean=flat.mean(0).tolist(), std=flat.std(0).tolist(),
    )
    net = RecurrentNet(cfg)
    default_post = KeywordPostprocess(
        smoothing_frames=5, threshold=0.5, refractory_s=0.3,
        background_labels=[kd.SILENCE, kd.UNKNOWN], min_frames=2,
    )

    def evaluate(model: RecurrentNet) -> tuple[float, float]:
        logits = model.logits(torch.from_numpy(vx), *model.zero_states(len(vx)))[0]
        loss = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     torch.from_numpy(vy).reshape(-1)))
        post = _torch_posteriors(model, vclip_x)
        acc = clip_accuracy(clip_predictions(post, default_post, kd.LABELS, 100.0), vlabels)
        return loss, acc

    history = fit(
        net, batches=_batches(x, y, scale.batch, opts.seed, flat.mean(0)), loss_fn=_loss,
        evaluate=evaluate,
        epochs=opts.epochs or scale.epochs, lr=3e-3, weight_decay=1e-4, desc="kws",
        quiet=opts.quiet,
    )
    postprocess, val_events = _tune_postprocess(net, vsentences, vclip_x, vlabels)
    train_seconds = history.train_seconds

    manifest = build_manifest(
        net, name=NAME, version=opts.version, frame_rate_hz=100.0, labels=list(kd.LABELS),
        description="Streaming keyword spotting (yes no up down left right on off stop go) "
        "from 16 kHz audio; per-frame posteriors and keyword events.",
        frontend=kd.FRONTEND, postprocess=postprocess,
        provenance={
            "dataset": "synthesized with espeak-ng (espeakng-loader): "
            f"{len(splits['train'])} train / {len(splits['val'])} val / "
            f"{len(splits['test'])} test voice variants, test variants unseen",
            "seed": opts.seed,
            "quick": opts.quick,
            "val_accuracy": history.best["val_accuracy"],
            "val_event_f1": val_events["f1"],
            "val_tuned_clip_accuracy": val_events["clip_accuracy"],
            "train_seconds": round(train_seconds, 1),
            "data_seconds": round(data_seconds, 1),
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
        },
    )
    package = export_package(net, manifest, opts.out)
    held_out = test_set(opts.quick)
    figures = evaluate_package(package, held_out)  # the one look at the test split
    events = figures["events"]
    final = update_provenance(
        package,
        test_accuracy=round(figures["clip_accuracy"], 6),
        test_keyword_clip_accuracy=round(figures["keyword_clip_accuracy"], 6),
        test_event_precision=round(events["precision"], 6),
        test_event_recall=round(events["recall"], 6),
        test_event_f1=round(events["f1"], 6),
        test_variants=held_out.variants,
    )
    parity = final.provenance.parity
    summary: dict[str, Any] = {
        "model": NAME,
        "version": opts.version,
        "architecture": final.architecture,
        "test_clip_accuracy": figures["clip_accuracy"],
        "test_keyword_clip_accuracy": figures["keyword_clip_accuracy"],
        "test_clips": figures["clips"],
        "test_event_precision": events["precision"],
        "test_event_recall": events["recall"],
        "test_event_f1": events["f1"],
        "test_sentences": figures["sentences"],
        "val_clip_accuracy": history.best["val_accuracy"],
        "val_event_f1": val_events["f1"],
        "val_tuned_clip_accuracy": val_events["clip_accuracy"],
        "train_seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "model_bytes": package_size_bytes(package),
        "seed": opts.seed,
        "quick": opts.quick,
        "postprocess": postprocess.model_dump(),
        "test_events": events,
    }
    write_reports(
        package, title=f"{NAME} v{opts.version}", summary=summary, history=history,
        labels=figures["confusion_labels"], confusion=figures["confusion"], parity=parity,
        notes=[
            "Clip accuracy: a keyword clip must yield its keyword as the best final event; "
            "a filler or noise clip must yield no event.",
            f"Event F1: sentences streamed in {CHUNK_MS} ms chunks through StreamingLogMel, "
            "the ONNX graph (state carried) and KeywordSpotter; a match needs the same label "
            f"and start and end both within ±{TIMING_TOLERANCE_S} s.",
            "Post-processing (smoothing, threshold, min_frames) tuned for the mean of event "
            "F1 and clip accuracy on validation voices only.",
            "In curves.png the train accuracy is per frame; the validation accuracy is the "
            "clip accuracy (default post-processing) that selects the epoch.",
        ],
    )
    return {**summary, "package": str(package), "parity": parity}


def write_demo(package_dir: Path, out: Path, count: int = 4) -> list[dict[str, Any]]:
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
    variants = _variants(FULL)["test"]
    rng = np.random.default_rng(TEST_SEED + 99)
    pkg = OrtPackage(package_dir)
    out.mkdir(parents=True, exist_ok=True)
    index: list[dict[str, Any]] = []
    attempt = 0
    while len(index) < count and attempt < 40:
        script = scripts[len(index) % len(scripts)]
        variant = variants[int(rng.integers(len(variants)))]
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
        events = stream_events(pkg, audio)
        _tp, fp, fn = match_events(events, refs)
        if fp or fn:
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
