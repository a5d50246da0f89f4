"""``make bench``: a thin entry point to the benchmark package ``scripts/lstm_bench``.

    .venv/bin/python scripts/bench.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lstm_bench.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
