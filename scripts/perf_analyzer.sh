#!/usr/bin/env bash
# Runs Triton's perf_analyzer against lstm-serve's Open Inference Protocol port.
#
# The binary ships inside the tritonclient wheel in .venv-triton (`make client-venvs`);
# it needs libcudart from the nvidia-cuda-runtime-cu12 wheel there (no GPU is used) and
# Debian's libb64-0d (`apt-get install libb64-0d`; .ci/run installs it).
#
#   scripts/perf_analyzer.sh -m har -u 127.0.0.1:50051 -i grpc --streaming \
#       --shape x:10,6 --sequence-length 20 --concurrency-range 8:32:8
#
# Every argument goes to perf_analyzer as it is (`scripts/perf_analyzer.sh --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-triton
if [[ ! -x "$VENV/bin/perf_analyzer" ]]; then
  echo "perf_analyzer is missing: run 'make client-venvs'" >&2
  exit 1
fi
if ! ldconfig -p 2>/dev/null | grep -q libb64.so.0d; then
  echo "perf_analyzer needs libb64: apt-get install libb64-0d" >&2
  exit 1
fi
CUDART="$(ls -d "$VENV"/lib/python3*/site-packages/nvidia/cuda_runtime/lib | head -1)"
export LD_LIBRARY_PATH="$CUDART${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$VENV/bin/perf_analyzer" "$@"
