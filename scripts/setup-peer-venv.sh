#!/usr/bin/env bash
# Creates <repo>/.venv-peer with MLServer, the stateless peer that `make bench-peer`
# serves the reference model in (scripts/lstm_bench/peer.py), from
# scripts/lstm_bench/mlserver_peer/requirements.txt. MLServer brings its own pins
# (protobuf, fastapi, uvloop, ...), so it lives apart from .venv; the benchmark runs it
# as a subprocess.
#
# Idempotent (scripts/venv-from-requirements.sh keeps a stamp named after the hash of
# the requirements). Everything comes from PyPI.
# Usage: scripts/setup-peer-venv.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-peer
REQS=scripts/lstm_bench/mlserver_peer/requirements.txt
scripts/venv-from-requirements.sh "$VENV" "$REQS" "$@"
echo "peer venv ready: $("$VENV/bin/mlserver" --version 2>/dev/null || echo "$VENV")"
