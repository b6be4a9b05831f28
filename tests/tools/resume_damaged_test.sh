#!/bin/bash
# train --resume when checkpoints are damaged, through the real binary (tools/trainer.h, TrainOptions::resume):
#  1. A flipped byte in the newest checkpoint: --resume falls back to the newest intact one with ONE warning
#     line naming both, moves the damaged one to checkpoints/damaged-step_N, and ends with the losses of an
#     uninterrupted run.
#  2. The same for a missing file in the newest checkpoint.
#  3. Every checkpoint damaged: refused with one line naming the newest damage, exit 1, nothing changed.
#  4. --resume on a directory that holds no run (empty, or not there): exactly that message, exit 1.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
MAKE_TOKENS="$3"
LOSSES="$(dirname "$MAKE_TOKENS")/losses.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 "$MAKE_TOKENS" slice /usr/share/common-licenses/GPL-3 "$T/train.bin" || fail "make_tokens"
BASE="data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 32 micro_batch_size: 4 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 2 }
train { steps: 40 eval_interval: 0 } logging { log_interval: 5 } checkpoint { interval: 10 keep_last: 3 }"
losses() { python3 "$LOSSES" --train_only "$1"; }  # the train records without timing fields
snapshot() { (cd "$1" && find . -type f | sort | xargs md5sum); }
flip() {  # flip FILE: one byte in the middle
  python3 - "$1" <<'PY'
import sys
p = sys.argv[1]; b = bytearray(open(p, "rb").read()); b[len(b) // 2] ^= 0x10; open(p, "wb").write(b)
PY
}

"$TRAIN" --config="$CONFIG" --override="$BASE" --out_dir="$T/straight" --quiet || fail "straight run"
ls "$T/straight/checkpoints" | tr '\n' ' ' | grep -q "^step_00000020 step_00000030 step_00000040 $" \
  || fail "expected checkpoints 20, 30, 40: $(ls "$T/straight/checkpoints")"

expect_fallback() {  # NAME WHAT: the run dir $T/NAME has a damaged step 40
  local dir="$T/$1"
  "$TRAIN" --resume --out_dir="$dir" --quiet 2>"$T/$1.err" || { cat "$T/$1.err"; fail "$1: resume"; }
  [[ $(wc -l <"$T/$1.err") == 1 ]] || { cat "$T/$1.err"; fail "$1: expected exactly one line on stderr"; }
  grep -q "^\[train\] warning: checkpoint $dir/checkpoints/step_00000040 is damaged ($2.*); resuming from $dir/checkpoints/step_00000030 (step 30)" \
    "$T/$1.err" || { cat "$T/$1.err"; fail "$1: warning line"; }
  [[ -d "$dir/checkpoints/damaged-step_00000040" ]] || fail "$1: damaged checkpoint not set aside: $(ls "$dir/checkpoints")"
  [[ -f "$dir/checkpoints/step_00000040/MANIFEST.json" ]] || fail "$1: step 40 not written again"
  diff <(losses "$T/straight/metrics.jsonl") <(losses "$dir/metrics.jsonl") || fail "$1: losses differ from the uninterrupted run"
  echo "ok: $1 -> $(sed "s|$T/||g" "$T/$1.err"); losses identical ($(losses "$dir/metrics.jsonl" | wc -l) records)"
}

# 1. Flipped byte in the newest checkpoint's weights.
cp -r "$T/straight" "$T/flipped"
flip "$T/flipped/checkpoints/step_00000040/model.safetensors"
expect_fallback flipped "checkpoint file $T/flipped/checkpoints/step_00000040/model.safetensors: CRC-32C [0-9a-f]* does not match MANIFEST.json"

# 2. Missing file in the newest checkpoint.
cp -r "$T/straight" "$T/missing"
rm "$T/missing/checkpoints/step_00000040/optimizer.safetensors"
expect_fallback missing "checkpoint file $T/missing/checkpoints/step_00000040/optimizer.safetensors is missing"

# 3. Every checkpoint damaged: refused, nothing changed.
cp -r "$T/straight" "$T/all"
for s in 20 30 40; do flip "$T/all/checkpoints/step_000000$s/optimizer.safetensors"; done
before="$(snapshot "$T/all")"
"$TRAIN" --resume --out_dir="$T/all" --quiet 2>"$T/all.err"
rc=$?
[[ $rc == 1 ]] || { cat "$T/all.err"; fail "all damaged: exit status $rc, want 1"; }
[[ $(wc -l <"$T/all.err") == 1 ]] && grep -q "^train: checkpoint file $T/all/checkpoints/step_00000040/optimizer.safetensors: CRC-32C .*; no intact checkpoint to resume from$" \
  "$T/all.err" || { cat "$T/all.err"; fail "all damaged: message"; }
[[ "$(snapshot "$T/all")" == "$before" ]] || fail "all damaged: the refused resume changed the run directory"
echo "ok: all damaged -> $(sed "s|$T/||g" "$T/all.err")"

# 4. No run in the directory.
mkdir "$T/empty"
for dir in "$T/empty" "$T/absent"; do
  "$TRAIN" --resume --out_dir="$dir" 2>"$T/none.err"
  rc=$?
  [[ $rc == 1 ]] || { cat "$T/none.err"; fail "$dir: exit status $rc, want 1"; }
  [[ "$(cat "$T/none.err")" == "train: --resume: $dir holds no run (no config.textproto / no checkpoints)" ]] \
    || { cat "$T/none.err"; fail "$dir: message"; }
  echo "ok: $(sed "s|$T/||g" "$T/none.err") (exit $rc)"
done
[[ ! -e "$T/absent" ]] || fail "--resume created $T/absent"
echo PASS
