"""The ``kws`` recipe (``lstm-train kws``): streaming keyword spotting from raw audio.

Pipeline: synthesize words with espeak-ng (:mod:`lstm_train.kws_data`), compose noisy
streams with per-frame labels, compute features with :mod:`lstm_serve.features` (the
server's own module), train a unidirectional LSTM with per-frame posteriors over
``_silence_``, ``_unknown_`` and the 10 keywords, tune the event post-processing on
validation voices, export, and evaluate the exported graph on unseen voices
(:mod:`lstm_train.kws_score`, streaming through :mod:`lstm_train.kws_stream`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lstm_serve.events import KeywordSpotter
from lstm_serve.features import logmel
from lstm_serve.manifest import KeywordPostprocess
from lstm_train import kws_data as kd
from lstm_train.export import build_manifest, export_package, update_provenance
from lstm_train.kws_score import (
    TIMING_TOLERANCE_S,
    clip_accuracy,
    clip_predictions,
    evaluate_package,
    match_events,
    prf,
)
from lstm_train.kws_sets import FULL, QUICK, features, test_set, variants
from lstm_train.kws_stream import CHUNK_MS
from lstm_train.model import NetConfig, RecurrentNet
from lstm_train.report import write_reports
from lstm_train.train import (
    Batch,
    RunOptions,
    fit,
    package_size_bytes,
    seed_everything,
    set_threads,
)

NAME = "kws"


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
    splits = variants(scale)
    bank = kd.build_bank(splits["train"], opts.seed * 7 + 1, scale.keyword_renditions,
                         scale.filler_renditions)
    val_bank = kd.build_bank(splits["val"], opts.seed * 7 + 2, 2, 1)
    rng = np.random.default_rng(opts.seed * 7 + 3)
    x, y = _streams(bank, rng, scale.train_streams, scale.stream_seconds, "train streams",
                    opts.quiet)
    vx, vy = _streams(val_bank, rng, scale.val_streams, scale.stream_seconds, "val streams",
                      opts.quiet)
    vclips, vlabels = kd.clip_set(val_bank, rng, scale.val_clips_per_class)
    vclip_x = features(vclips)
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
