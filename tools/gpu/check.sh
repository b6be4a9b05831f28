#!/usr/bin/env bash
# The GPU check (issue 13), run on the GPU machine from inside the bundle that tools/gpu/bundle.sh made:
#
#   bash gpu_bundle/check.sh [OUT_DIR | FILE.json] [--cpu-dry-run] [--parts=a,b,...] [--budget=SECONDS]
#
# OUT_DIR defaults to $OUT (the device tool's result folder), else ./gpu_check_out. It receives gpu_check.json
# (every figure and verdict), gpu_check.log (the summary and each part's last lines) and gpu_check_logs.tar.gz
# (every part's full log, metrics.jsonl and gtest XML). Exit status 0 when every part passed, 1 otherwise; the
# JSON is written either way, and no part's failure stops the others.
#
# Parts, each under its own timeout, all together within --budget (default 470 s, i.e. under 8 minutes):
#   env          nvidia-smi, python3's torch, glibc against what the bundle needs
#   units        gtest binaries: linkage_test (on the bundle's train), cuda_device_test (a tiny MoE forward and
#                backward on the GPU against the CPU), models_device_test, parallel_device_test
#   peak         bf16 (and fp32) 8192^3 matmul rate through python3's torch: the peak MFU is measured against
#   tiny_cpu     configs/tiny.textproto, 100 steps, parallel.device CPU (the reference, run here, same machine)
#   tiny_cuda_fp32, tiny_cuda_bf16   the same on CUDA, precision FP32 and BF16; losses compared per step with
#                tiny_cpu's (a failing BF16 run is recorded, not fatal)
#   bench_fp32, bench_bf16   tools/bench --sections=train on configs/bench.textproto on CUDA: tokens/s, MFU
#   olmoe        the largest OLMoE-1B-7B-shaped model (configs/olmoe_1b7b.textproto, fewer layers only if the
#                full 16 do not fit by plan's figures) with activation checkpointing, a few steps: tokens/s,
#                MFU, peak GPU memory (nvidia-smi polling) against plan's prediction
# --cpu-dry-run: every part on the CPU with tiny step counts and a shrunk OLMoE-shaped model (what
# tools/gpu/bundle.sh --verify runs here, so that the script has no path or syntax mistakes).
#
# The work is done by check.py beside this script, with the python3 that holds torch (PYTHON overrides).
set -uo pipefail
here="$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)"
py="${PYTHON:-python3}"
script="$here/check.py"
[[ -f "$script" ]] || script="$here/../../tools/gpu/check.py"
exec "$py" "$script" --script_dir="$here" "$@"
