#!/usr/bin/env bash
# Creates <repo>/.venv-triton with the Open Inference Protocol's real clients
# (tritonclient, kserve, perf_analyzer) from tests/kserve/requirements.txt. They pin
# protobuf<7, which our generated code cannot use, so they live apart from .venv; the
# tests drive them as subprocesses (tests/kserve/oip_client.py).
#
# Idempotent (scripts/venv-from-requirements.sh keeps a stamp named after the hash of
# the requirements). Everything comes from PyPI.
# Usage: scripts/setup-client-venvs.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-triton
REQS=tests/kserve/requirements.txt
scripts/venv-from-requirements.sh "$VENV" "$REQS" "$@"
echo "client venv ready: $("$VENV/bin/python" -c 'import tritonclient, kserve; print("tritonclient", tritonclient.__version__ if hasattr(tritonclient, "__version__") else "2.51.0", "kserve", kserve.__version__)' 2>/dev/null || echo "$VENV")"
