"""``lstm-train``: train a recipe and write a servable model package.

Every recipe writes ``<out>/<name>/<version>/`` holding ``model.onnx``,
``manifest.json`` and the reports (``report.json``, ``report.md``, ``curves.png``,
``confusion.png``). Progress bars go to stderr; ``--json`` prints one JSON document of
figures on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lstm_train.train import RunOptions

RECIPES: dict[str, str] = {
    "har": "Activity recognition on BasicMotions (sktime, 6 sensor channels x 100 steps, "
    "4 classes): unidirectional LSTM, per-frame outputs, the sequence label is the last "
    "frame's. Streams.",
    "har-gru": "The same task with a GRU (one state tensor, h): proves serving is generic "
    "over the state list.",
    "vowels": "Speaker identification on JapaneseVowels (sktime, 12 LPC cepstra, 9 speakers, "
    "variable length): bidirectional LSTM, whole-sequence head. Predict only.",
    "kws": "Streaming keyword spotting from 16 kHz audio, corpus synthesized offline with "
    "espeak-ng (unseen voices in test): unidirectional LSTM over log-mel frames, keyword "
    "events from the manifest's post-processing. About 25 min on 2 cores.",
    "forecast": "Streaming forecaster with a regression head: the next 5 steps (0.5 s) of "
    "BasicMotions' 6 accelerometer and gyroscope channels (sktime, 10 Hz) at every step; "
    "unidirectional LSTM, residual per-frame head, task regression. Streams.",
    "reference": "Random-weight LSTM (40 in, 256 hidden, 2 layers, 12 out, per frame) for "
    "benchmarks. Not trained and not bundled.",
}

EPILOG = """\
examples:
  lstm-train har                          # train and write models/har/1/
  lstm-train vowels --version 2           # write models/vowels/2/
  lstm-train kws --quick --out /tmp/m     # a fast end-to-end check (< 2 min)
  lstm-train forecast                     # regression head: models/forecast/1/
  lstm-train reference --out .bench/models
  lstm-train demo --model models/kws/1 --out demo   # regenerate the demo WAVs
  lstm-train har --json | jq .test_accuracy

Held-out test figures are measured once, with onnxruntime on the exported graph, and
recorded in the manifest's provenance and in report.md next to model.onnx.
"""


def _recipe(name: str) -> Callable[[RunOptions], dict[str, Any]]:
    if name == "kws":
        from lstm_train import kws_recipe

        return kws_recipe.run
    if name == "forecast":
        from lstm_train import forecast

        return forecast.run
    from lstm_train import recipes

    return recipes.RECIPES[name]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-train",
        description="Train recurrent models on offline data and export servable ONNX "
        "packages (model.onnx + manifest.json + reports).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name, help_text in RECIPES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--out", type=Path, default=Path("models"),
                       help="model repository to write into (default: models)")
        p.add_argument("--version", default="1", help="package version folder (default: 1)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
        p.add_argument("--quick", action="store_true",
                       help="tiny data and model: exercises the whole path in under 2 "
                       "minutes (figures are meaningless)")
        p.add_argument("--epochs", type=int, default=None,
                       help="override the recipe's number of epochs")
        p.add_argument("--json", action="store_true",
                       help="print one JSON document with the figures on stdout")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    demo = sub.add_parser(
        "demo", help="write demo WAVs with keyword timings from held-out voices",
        description="Synthesize short sentences with keywords in held-out (test) voices, "
        "keep those the given kws package gets exactly right, and write 16 kHz PCM16 WAVs "
        "with sidecar JSON timings (plus one 48 kHz copy).",
    )
    demo.add_argument("--model", type=Path, default=Path("models/kws/1"),
                      help="kws package used to check the demos (default: models/kws/1)")
    demo.add_argument("--out", type=Path, default=Path("demo"), help="folder (default: demo)")
    demo.add_argument("--count", type=int, default=4, help="number of WAVs (default: 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lstm-train`` console script."""
    args = _parser().parse_args(argv)
    if args.recipe == "demo":
        from lstm_train.kws_demo import write_demo

        index = write_demo(args.model, args.out, args.count)
        print(json.dumps({"demos": index}, indent=2))
        return 0
    opts = RunOptions(
        out=args.out, version=args.version, seed=args.seed, quick=args.quick,
        quiet=args.quiet, epochs=args.epochs,
    )
    figures = _recipe(args.recipe)(opts)
    if args.json:
        json.dump(figures, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        shown = {k: v for k, v in figures.items() if not isinstance(v, dict | list)}
        width = max(map(len, shown), default=0)
        for key, value in shown.items():
            print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
