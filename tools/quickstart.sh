#!/usr/bin/env bash
# Sets up (idempotent), builds the trainer and trains the default model (configs/tiny.textproto).
# Extra arguments go to the trainer, e.g. tools/quickstart.sh --override='train { steps: 100 }'.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bazel build //tools:train
run_dir="runs/tiny-$(date +%Y%m%d-%H%M%S)"
bazel-bin/tools/train --config=configs/tiny.textproto --out_dir="$run_dir" "$@"
echo "run directory: $run_dir (metrics.jsonl, config.textproto)"
