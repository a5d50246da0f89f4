#!/usr/bin/env bash
# Regenerates the Python code for protos/ in place. `make proto` runs it;
# `make proto-check` runs it and fails when the committed code differs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
rm -f protos/lstmserve/*/*_pb2*.py protos/lstmserve/*/*_pb2*.pyi
"$PY" -m grpc_tools.protoc -Iprotos \
  --python_out=protos --pyi_out=protos --grpc_python_out=protos \
  protos/lstmserve/*/*.proto
touch protos/lstmserve/__init__.py protos/lstmserve/v1/__init__.py protos/lstmserve/kserve_v2/__init__.py
