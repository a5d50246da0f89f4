#!/usr/bin/env bash
# Creates <repo>/.venv-peer with MLServer, the stateless peer that `make bench-peer`
# serves the reference model in (scripts/lstm_bench/peer.py), from
# scripts/lstm_bench/mlserver_peer/requirements.txt. MLServer brings its own pins
# (protobuf, fastapi, uvloop, ...), so it lives apart from .venv; the benchmark runs it
# as a subprocess.
#
# Idempotent: a stamp named after the hash of the requirements (and this script)
# makes a second run a no-op. Everything comes from PyPI.
# Usage: scripts/setup-peer-venv.sh [--force]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-peer
REQS=scripts/lstm_bench/mlserver_peer/requirements.txt
PYTHON="${PYTHON:-python3}"
hash="$(cat "$REQS" "$0" | sha256sum | cut -c1-16)"
STAMP="$VENV/.installed-$hash"
if [[ "${1:-}" != "--force" && -f "$STAMP" ]]; then
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQS"
touch "$STAMP"
echo "peer venv ready: $("$VENV/bin/mlserver" --version 2>/dev/null || echo "$VENV")"
