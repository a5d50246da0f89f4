"""The lstm-serve benchmark (``make bench``), as a package.

- ``measure``: what is read off the machine, the processes and the servers (/proc CPU,
  in-process onnxruntime, load runs, unary latency, the batch-size histogram);
- ``servers``: the processes measured (``lstm-serve`` from this checkout or from a git
  worktree of another commit, the bare echo server);
- ``compare``: the same server measurements against an older commit and this code,
  interleaved in one run;
- ``profile``: a py-spy profile of the saturated server;
- ``report``: targets, the generated markdown block, the results JSON and the ``--json``
  summary;
- ``plots``: the PNG figures;
- ``__main__``: the command line (``scripts/bench.py`` is a thin entry point to it).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORK = REPO / ".bench"
MODEL = "reference"
CHUNK_FRAMES = 10
LATENCY_TARGET_MS = 100.0
REALTIME_HELD = 0.98
SATURATION_STREAMS = 128


def log(message: str) -> None:
    """Progress on stderr (through tqdm, so that a progress bar is not torn)."""
    line = f"[bench {time.strftime('%H:%M:%S')}] {message}"
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the train extra
        print(line, file=sys.stderr, flush=True)
        return
    tqdm.write(line, file=sys.stderr)


def write_marked(path: Path, begin: str, end: str, body: str, heading: str) -> None:
    """Put ``body`` between the ``begin`` and ``end`` markers of ``path``, or append it
    under ``heading`` with its markers when they are absent (a generated docs block)."""
    text = path.read_text() if path.exists() else ""
    block = f"{begin}\n{body}\n{end}"
    start = text.find(begin)
    stop = text.find(end, start) if start >= 0 else -1
    if stop >= 0:
        text = text[:start] + block + text[stop + len(end):]
    else:
        text = text.rstrip() + ("\n\n" if text.strip() else "") + f"## {heading}\n\n{block}\n"
    path.write_text(text)
