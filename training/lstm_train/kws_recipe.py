"""The ``kws`` recipe (``lstm-train kws``): streaming keyword spotting from raw audio.

Pipeline: synthesize words and phrases with espeak-ng (:mod:`lstm_train.kws_data`),
compose running-speech streams with hard negatives and augmentation and end-aligned
per-frame targets (:mod:`lstm_train.kws_running`), compute features with
:mod:`lstm_serve.features` (the server's own module), fine-tune a unidirectional LSTM
(from the previous model's weights, :data:`INIT_WEIGHTS`) with per-frame posteriors
over ``_silence_``, ``_unknown_`` and the 10 keywords, choose the event
post-processing on the validation stream set (:mod:`lstm_train.kws_tune`), export, and
evaluate the exported graph on unseen voices (:mod:`lstm_train.kws_score`, streaming
through :mod:`lstm_train.kws_stream`). The spotter figures on the test streams come from
``python -m lstm_train.kws_eval`` (:mod:`lstm_train.kws_eval`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from lstm_serve.features import logmel
from lstm_train import kws_data as kd
from lstm_train import kws_eval
from lstm_train import kws_running as kr
from lstm_train.export import build_manifest, export_package, update_provenance
from lstm_train.kws_eval import hits
from lstm_train.kws_score import TIMING_TOLERANCE_S, evaluate_package
from lstm_train.kws_sets import FULL, QUICK, test_set, variants
from lstm_train.kws_stream import CHUNK_MS
from lstm_train.kws_tune import (
    SHIPPED_MAX_MISS,
    choose,
    fast_events,
    postprocess_of,
    smooth,
    sweep,
)
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
#: the previous bundled kws v1 (commit f5b04de; trained on the same training voice
#: variants, isolated words, labels from the onset): the full recipe starts from it
INIT_WEIGHTS = Path(__file__).parent / "weights" / "kws_v1_init.onnx"


def init_from_onnx(net: RecurrentNet, path: Path) -> None:
    """Load the weights of an exported :class:`RecurrentNet` graph (its LSTM ops in layer
    order, the projection and the normalization) into ``net``; ONNX's gate order
    ``i, o, f, c`` becomes torch's ``i, f, g, o``."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    lstms = [n for n in model.graph.node if n.op_type == "LSTM"]
    if len(lstms) != net.config.layers:
        raise ValueError(f"{path} has {len(lstms)} LSTM layers, the net {net.config.layers}")
    order = [0, 2, 3, 1]

    def gates(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([np.split(a, 4)[i] for i in order]).copy())

    with torch.no_grad():
        for k, node in enumerate(lstms):
            w, r, b = (weights[name][0] for name in node.input[1:4])
            getattr(net.rnn, f"weight_ih_l{k}").copy_(gates(w))
            getattr(net.rnn, f"weight_hh_l{k}").copy_(gates(r))
            getattr(net.rnn, f"bias_ih_l{k}").copy_(gates(b[: b.size // 2]))
            getattr(net.rnn, f"bias_hh_l{k}").copy_(gates(b[b.size // 2 :]))
        matmul = next(n for n in model.graph.node if n.op_type == "MatMul")
        net.proj.weight.copy_(torch.from_numpy(weights[matmul.input[1]].T.copy()))
        net.proj.bias.copy_(torch.from_numpy(weights["proj.bias"].copy()))
        net.mean.copy_(torch.from_numpy(weights["mean"].copy()))
        net.inv_std.copy_(torch.from_numpy(weights["inv_std"].copy()))


def _streams(
    bank: kr.RunningBank, rng: np.random.Generator, count: int, seconds: float, desc: str,
    quiet: bool,
) -> tuple[np.ndarray, np.ndarray, list[list[kd.KeywordTiming]]]:
    """Running-speech streams (:func:`lstm_train.kws_running.compose_running`): features,
    end-aligned frame targets and each stream's keyword timings. A quarter of the
    streams have no keyword at all; the others a keyword probability of 0.15-0.4."""
    xs, ys, refs = [], [], []
    for _ in tqdm(range(count), desc=desc, disable=quiet, leave=False, unit="stream"):
        p_kw = 0.0 if rng.random() < 0.25 else rng.uniform(0.15, 0.4)
        audio, segments = kr.compose_running(bank, rng, seconds, p_kw)
        feats = logmel(audio, kd.FRONTEND)
        xs.append(feats)
        ys.append(kr.end_aligned_labels(feats.shape[0], segments))
        refs.append([kd.KeywordTiming(s.word, s.start / kd.SAMPLE_RATE, s.stop / kd.SAMPLE_RATE)
                     for s in segments if s.is_keyword])
    return np.stack(xs).astype(np.float32), np.stack(ys), refs


def _torch_posteriors(net: RecurrentNet, x: np.ndarray, batch: int = 64) -> np.ndarray:
    outs = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            xb = torch.from_numpy(x[i : i + batch])
            outs.append(net(xb, *net.zero_states(xb.shape[0]))[0].numpy())
    return np.concatenate(outs)


def _stream_posteriors(net: RecurrentNet, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Whole-stream posteriors (streaming through the exported graph is equal within
    1e-5, checked by the export's parity figures)."""
    return [_torch_posteriors(net, logmel(a, kd.FRONTEND)[None])[0] for a in audios]


#: the fixed operating point that scores the validation streams for epoch selection:
#: smoothing frames, threshold, min frames, refractory seconds
SELECT_POINT: tuple[int, float, int, float] = (3, 0.5, 3, 0.3)


def _selection_score(post: np.ndarray, refs: Sequence[Sequence[kd.KeywordTiming]]) -> float:
    """``1 - (misses + false alarms) / keywords`` at :data:`SELECT_POINT`."""
    keywords = np.array([kd.LABELS.index(k) for k in kd.KEYWORDS])
    window, threshold, min_frames, refractory = SELECT_POINT
    errors = n = 0
    for p, r in zip(post, refs, strict=True):
        ev = fast_events(smooth(p, window), keywords, kd.LABELS, threshold, min_frames,
                         refractory)
        _lat, misses, extra = hits(ev, r)
        errors += misses + extra
        n += len(r)
    return 1.0 - errors / max(n, 1)


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


#: loss weight of keyword frames (they are a few per cent of all frames)
KEYWORD_WEIGHT = 3.0


def _loss_fn(carry: float, seed: int) -> Any:
    """Frame cross-entropy (ignoring :data:`lstm_train.kws_running.IGNORE`; keyword
    frames weighted by :data:`KEYWORD_WEIGHT`). With
    probability ``carry`` a batch starts from the previous batch's final states
    (detached) instead of zeros, so the model learns to start listening in the middle
    of a long stream, as it does when served."""
    rng = np.random.default_rng(seed + 17)
    last: list[torch.Tensor] = []
    weight = torch.ones(len(kd.LABELS))
    weight[[kd.LABELS.index(k) for k in kd.KEYWORDS]] = KEYWORD_WEIGHT

    def loss(net: RecurrentNet, batch: Batch) -> tuple[torch.Tensor, int, int]:
        x, y = batch
        states = net.zero_states(x.shape[0])
        if last and last[0].shape[1] == x.shape[0] and rng.random() < carry:
            states = last
        logits, *new_states = net.logits(x, *states)
        last[:] = [s.detach() for s in new_states]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                               weight=weight, ignore_index=kr.IGNORE)
        mask = y != kr.IGNORE
        correct = int(((logits.argmax(-1) == y) & mask).sum())
        return loss, correct, int(mask.sum())

    return loss


def run(opts: RunOptions) -> dict[str, Any]:
    """Train, tune, export and evaluate the kws model; returns the figures."""
    scale = QUICK if opts.quick else FULL
    seed_everything(opts.seed)
    set_threads()
    t0 = time.perf_counter()
    splits = variants(scale)
    words = kd.build_bank(splits["train"], opts.seed * 7 + 1, scale.keyword_renditions,
                          scale.negative_renditions, fillers=kr.NEGATIVES)
    bank = kr.RunningBank(words, kr.build_phrases(splits["train"], opts.seed * 7 + 4,
                                                  scale.phrases_per_variant))
    val_words = kd.build_bank(splits["val"], opts.seed * 7 + 2, 2, 1, fillers=kr.NEGATIVES)
    val_bank = kr.RunningBank(val_words, kr.build_phrases(splits["val"], opts.seed * 7 + 5, 1))
    rng = np.random.default_rng(opts.seed * 7 + 3)
    x, y, _ = _streams(bank, rng, scale.train_streams, scale.stream_seconds, "train streams",
                       opts.quiet)
    vx, vy, vrefs = _streams(val_bank, rng, scale.val_streams, scale.stream_seconds,
                             "val streams", opts.quiet)
    # the validation stream set the operating point is tuned on: like the test set of
    # kws_eval, from the validation variants (never in training)
    tune_set = kws_eval.build("val", kws_eval.TINY if opts.quick else kws_eval.VAL)
    data_seconds = time.perf_counter() - t0

    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(0), flat.std(0)
    init = INIT_WEIGHTS if scale.init_from_previous else None
    if init is not None:  # keep the normalization the initial weights were trained with
        import onnx
        from onnx import numpy_helper

        consts = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(init)).graph.initializer}
        mean, std = consts["mean"], 1.0 / consts["inv_std"]
    cfg = NetConfig(
        input_dim=kd.FRONTEND.n_mels, output_dim=len(kd.LABELS), hidden=scale.hidden,
        layers=scale.layers, cell="lstm", head="per_frame", dropout=0.1,
        mean=[float(v) for v in mean], std=[float(v) for v in std],
    )
    net = RecurrentNet(cfg)
    if init is not None:
        init_from_onnx(net, init)

    def evaluate(model: RecurrentNet) -> tuple[float, float]:
        logits = torch.cat([model.logits(torch.from_numpy(vx[i : i + 64]),
                                         *model.zero_states(len(vx[i : i + 64])))[0]
                            for i in range(0, len(vx), 64)])
        loss = float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     torch.from_numpy(vy).reshape(-1), ignore_index=kr.IGNORE))
        post = torch.softmax(logits, -1).numpy()
        return loss, _selection_score(post, vrefs)

    history = fit(
        net, batches=_batches(x, y, scale.batch, opts.seed, flat.mean(0)),
        loss_fn=_loss_fn(scale.state_carry, opts.seed), evaluate=evaluate,
        epochs=opts.epochs or scale.epochs, lr=scale.lr, weight_decay=1e-4, desc="kws",
        quiet=opts.quiet,
    )
    train_seconds = history.train_seconds
    del x, y
    pf = _stream_posteriors(net, [st.audio for st in tune_set.free])
    pk = _stream_posteriors(net, [st.audio for st in tune_set.keyword])
    grid = sweep(tune_set, pf, pk, quiet=opts.quiet)
    chosen = choose(grid, max_miss=SHIPPED_MAX_MISS)
    postprocess = postprocess_of(chosen)
    # re-scored with the server's own spotter
    val_spot = kws_eval.score(tune_set, pf, pk, postprocess, kd.LABELS, 100.0)

    manifest = build_manifest(
        net, name=NAME, version=opts.version, frame_rate_hz=100.0, labels=list(kd.LABELS),
        description="Streaming keyword spotting (yes no up down left right on off stop go) "
        "from 16 kHz audio; per-frame posteriors and keyword events.",
        frontend=kd.FRONTEND, postprocess=postprocess,
        provenance={
            "dataset": "synthesized with espeak-ng (espeakng-loader): running speech with "
            f"hard negatives, reverberation and noise; {len(splits['train'])} train / "
            f"{len(splits['val'])} val / {len(splits['test'])} test voice variants, test "
            "variants unseen",
            "seed": opts.seed,
            "quick": opts.quick,
            "val_selection_score": history.best["val_accuracy"],
            "val_false_alarms_per_hour": round(val_spot["false_alarms_per_hour"], 3),
            "val_miss_rate": round(val_spot["miss_rate"], 4),
            "val_keyword_free_hours": round(tune_set.free_hours, 3),
            "train_seconds": round(train_seconds, 1),
            "data_seconds": round(data_seconds, 1),
            "epochs": len(history.epochs),
            "best_epoch": history.best_epoch,
            "initialized_from": "previous kws v1 (lstm_train/weights/kws_v1_init.onnx, same "
            "training voices)" if init is not None else "random",
        },
    )
    package = export_package(net, manifest, opts.out)
    held_out = test_set(opts.quick)
    figures = evaluate_package(package, held_out)  # the one look at this test split
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
        "val_selection_score": history.best["val_accuracy"],
        "val_false_alarms_per_hour": val_spot["false_alarms_per_hour"],
        "val_miss_rate": val_spot["miss_rate"],
        "val_latency_p95_s": val_spot["latency_p95_s"],
        "val_keyword_free_hours": tune_set.free_hours,
        "val_keywords": tune_set.n_keywords,
        "train_seconds": round(train_seconds, 1),
        "data_seconds": round(data_seconds, 1),
        "model_bytes": package_size_bytes(package),
        "seed": opts.seed,
        "quick": opts.quick,
        "postprocess": postprocess.model_dump(),
        "test_events": events,
    }
    doc = write_reports(
        package, title=f"{NAME} v{opts.version}", summary=summary, history=history,
        labels=figures["confusion_labels"], confusion=figures["confusion"], parity=parity,
        notes=[
            "Training data: running sentences from training voices only, keywords and hard "
            "negatives (near-miss words, numbers, everyday words, whole phrases) in "
            "_unknown_, speed/pitch perturbation, synthetic reverberation, several noise "
            "types and SNRs, gains; targets aligned to each keyword's end.",
            "Operating point chosen on the validation stream set (kws_eval.build('val'), "
            "validation voices): the fewest false alarms at a miss rate <= "
            f"{SHIPPED_MAX_MISS} (kws_tune.SHIPPED_MAX_MISS).",
            "Clip accuracy: a keyword clip must yield its keyword as the best final event; "
            "a filler or noise clip must yield no event.",
            f"Event F1: sentences streamed in {CHUNK_MS} ms chunks through StreamingLogMel, "
            "the ONNX graph (state carried) and KeywordSpotter; a match needs the same label "
            f"and start and end both within ±{TIMING_TOLERANCE_S} s.",
            "In curves.png the train accuracy is per frame (ignored frames left out); the "
            "validation accuracy is the selection score 1 - (misses + false alarms) / "
            "keywords on validation streams at a fixed operating point.",
        ],
    )
    (package / "tuning.json").write_text(json.dumps(
        {"chosen": chosen, "val_spotter": val_spot, "grid": grid}, indent=2) + "\n")
    del doc
    return {**summary, "package": str(package), "parity": parity}
