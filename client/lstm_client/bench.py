"""``lstm-client bench``: a load generator (see docs/benchmarks.md)."""

from __future__ import annotations

import argparse
from typing import Any


def add_bench_parser(sub: Any) -> None:
    """Register the ``bench`` subcommand."""
    p: argparse.ArgumentParser = sub.add_parser("bench", help="load generator (not yet available)")
    p.set_defaults(func=lambda client, args: 2)
