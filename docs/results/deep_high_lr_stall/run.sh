#!/bin/bash
# The deep_high_lr stall investigation (docs/compare_norms.md, "Why Post-Norm and HybridNorm stall in
# deep_high_lr"): configs/sweeps/deep_high_lr.textproto (12 blocks, lr 2e-2, no warmup, Megatron init, 150
# steps) with ONE thing changed per setting, for PRE_NORM (learns there), POST_NORM and HYBRID_NORM (stall
# there). Each setting is one compare_norms sweep in $OUT/<setting>/; summarize.py turns them into
# summary.md here. Usage: docs/results/deep_high_lr_stall/run.sh [BIN_DIR] [OUT] [SETTING...]
set -euo pipefail
BIN="${1:-bazel-bin/tools}"
OUT="${2:-runs/stall}"
shift 2 || true
STRATEGIES=PRE_NORM,POST_NORM,HYBRID_NORM
declare -A SETTINGS=(
  [base]=''
  [warmup50]='optim { warmup_steps: 50 }'
  [warmup10]='optim { warmup_steps: 10 }'
  [lr1e-2]='optim { lr: 1e-2 }'
  [lr1e-2_warmup50]='optim { lr: 1e-2 warmup_steps: 50 }'
  [lr5e-3]='optim { lr: 5e-3 }'
  [lr1e-3]='optim { lr: 1e-3 }'
  [lr5e-3_warmup50]='optim { lr: 5e-3 warmup_steps: 50 }'
  [init_normal_0.02]='model { init { scheme: NORMAL std: 0.02 } }'
  [init_normal_0.002]='model { init { scheme: NORMAL std: 0.002 } }'
  [depth4]='model { n_layers: 4 }'
  [depth2]='model { n_layers: 2 }'
  [wd0]='optim { weight_decay: 0 }'
  [noclip]='optim { grad_clip: 0 }'
)
ORDER=(base warmup50 lr5e-3 lr1e-3 init_normal_0.02 init_normal_0.002 depth4 depth2 wd0 warmup10 lr5e-3_warmup50 noclip
  lr1e-2 lr1e-2_warmup50)
(($#)) && ORDER=("$@")
for s in "${ORDER[@]}"; do
  args=(--config=configs/sweeps/deep_high_lr.textproto --strategies=$STRATEGIES --out="$OUT/$s")
  [[ -n "${SETTINGS[$s]}" ]] && args+=(--override="${SETTINGS[$s]}")
  echo "== $s: ${SETTINGS[$s]:-(as committed)}" >&2
  nice -n 10 "$BIN/compare_norms" "${args[@]}" >/dev/null
done
