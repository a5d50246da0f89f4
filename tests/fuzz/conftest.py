"""Hypothesis profiles for the decoder fuzzers, chosen by ``LSTM_SERVE_FUZZ_PROFILE``.

- ``ci`` (the default, what ``make test`` runs): few examples, derandomized so that CI
  sees the same examples on every run and never flakes on a new one; no example
  database is written.
- ``fuzz`` (``make fuzz``): many more examples from a fresh random seed each run, with
  the example database in ``.hypothesis/`` so that a failure replays first next time.

Each test scales its own ``max_examples`` from the profile's with :func:`examples`
(a real server answers far fewer examples per second than a converter).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_ENV = "LSTM_SERVE_FUZZ_PROFILE"

_BASE = settings(
    deadline=None,  # two shared CPU cores: timing says nothing about a decoder
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    print_blob=True,
)
settings.register_profile("ci", _BASE, max_examples=100, derandomize=True, database=None)
settings.register_profile("fuzz", _BASE, max_examples=2000)
settings.load_profile(os.environ.get(PROFILE_ENV, "ci"))


def examples(fraction: float) -> int:
    """``fraction`` of the profile's ``max_examples``, at least 5."""
    return max(5, int(settings().max_examples * fraction))
