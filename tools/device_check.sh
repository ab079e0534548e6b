#!/usr/bin/env bash
# One short run on a lent GPU machine (at most about 5 minutes): torch CUDA training steps against
# the CPU and, where onnxruntime offers its CUDA provider, the attack step and its parity with CPU.
# Prints one JSON object (tools/device_check.py); docs/benchmarks.md records the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" tools/device_check.py --seconds "${SECONDS_BUDGET:-240}" "$@"
