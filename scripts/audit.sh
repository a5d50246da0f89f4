#!/usr/bin/env bash
# Supply-chain tools in their own virtual environment, <repo>/.venv-audit (apart from
# .venv, so that the tools' dependencies never touch the service's):
#   uv         pins the runtime dependencies into requirements.lock   (make lock)
#   pip-audit  checks the lock against the advisory sources            (make audit)
#
# Usage: scripts/audit.sh lock | audit
# Idempotent: a stamp keyed on this script's hash makes a second setup a no-op.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=.venv-audit
STAMP="$VENV/.setup-stamp"
PYTHON="${PYTHON:-python3}"
PINS=("uv==0.13.8" "pip-audit==2.10.1")

script_hash="$(sha256sum "$0" | cut -d' ' -f1)"
if [[ ! -f "$STAMP" || "$(cat "$STAMP")" != "$script_hash" || ! -x "$VENV/bin/pip-audit" ]]; then
  [[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PINS[@]}"
  echo "$script_hash" >"$STAMP"
fi

case "${1:-}" in
  lock)
    # The container image's Python (deploy/Dockerfile: python:3.11.11) on linux x86_64,
    # with every file's sha256 so that the image installs with --require-hashes.
    "$VENV/bin/uv" pip compile pyproject.toml --quiet \
      --python-version 3.11.11 --python-platform x86_64-unknown-linux-gnu \
      --generate-hashes --custom-compile-command "make lock" --output-file requirements.lock
    echo "requirements.lock: $(grep -cE '^[a-z0-9]' requirements.lock) pinned packages"
    ;;
  audit)
    exec "$VENV/bin/python" scripts/audit.py
    ;;
  *)
    echo "usage: $0 lock | audit" >&2
    exit 2
    ;;
esac
