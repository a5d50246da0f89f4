#!/usr/bin/env bash
# Creates the virtualenv VENV from the requirements file REQS, for a tool whose pins
# conflict with .venv's (the Open Inference Protocol clients, MLServer). Idempotent: a
# stamp named after the hash of REQS and this script makes a second run a no-op.
# Everything comes from PyPI. Usage: scripts/venv-from-requirements.sh VENV REQS [--force]
set -euo pipefail
VENV="$1"
REQS="$2"
PYTHON="${PYTHON:-python3}"
hash="$(cat "$REQS" "$0" | sha256sum | cut -c1-16)"
STAMP="$VENV/.installed-$hash"
if [[ "${3:-}" != "--force" && -f "$STAMP" ]]; then
  exit 0
fi
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQS"
touch "$STAMP"
