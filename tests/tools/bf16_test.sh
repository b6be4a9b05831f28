#!/bin/bash
# train.precision BF16 through the train binary (core/precision.h):
#  1. The tiny default (configs/tiny.textproto on the bundled corpus, 300 steps) in BF16 ends within 0.03 nats
#     of the FP32 run's validation loss (both printed, with each run's median tokens/s for information).
#  2. Resume in BF16 is exact: 40 steps straight == 20 + --resume + 20, losses bit for bit.
#  3. A checkpoint of either precision loads in the other (fp32 masters in both): a BF16 run resumed in FP32 and
#     an FP32 run resumed in BF16 continue from the same step to finite losses near the straight run's.
set -uo pipefail
TRAIN="$1"; CONFIG="$2"; MAKE_TOKENS="$3"; CORPUS_TRAIN="${4:-}"; CORPUS_VAL="${5:-}"
LOSSES="$(dirname "$MAKE_TOKENS")/losses.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }
[[ -s "$CORPUS_TRAIN" && -s "$CORPUS_VAL" ]] || fail "no corpus at $CORPUS_TRAIN (run tools/setup.sh)"

# 1. The tiny default, 300 steps, both precisions.
CORPUS="data { train { path: \"$PWD/$CORPUS_TRAIN\" } validation: \"$PWD/$CORPUS_VAL\" } parallel { num_threads: 2 }"
for p in FP32 BF16; do
  "$TRAIN" --config="$CONFIG" --override="$CORPUS" --override="train { precision: $p }" --out_dir="$T/tiny_$p" --quiet \
    2>"$T/tiny_$p.log" || { cat "$T/tiny_$p.log"; fail "tiny $p"; }
done
python3 - "$T/tiny_FP32/metrics.jsonl" "$T/tiny_BF16/metrics.jsonl" <<'PY' || fail "bf16 vs fp32 validation loss"
import json, statistics, sys
def run(path):
    rows = [json.loads(l) for l in open(path)]
    val = [r for r in rows if r["kind"] == "eval"][-1]
    speed = statistics.median(r["tokens_per_s"] for r in rows if r["kind"] == "train" and r["step"] > 10)
    return val["step"], val["val_loss"], speed
(s32, v32, t32), (s16, v16, t16) = run(sys.argv[1]), run(sys.argv[2])
assert s32 == s16 == 300, (s32, s16)
print("tiny default, step 300: validation loss fp32 %.4f, bf16 %.4f (difference %+.4f nats); median tokens/s "
      "fp32 %.0f, bf16 %.0f" % (v32, v16, v16 - v32, t32, t16))
assert abs(v16 - v32) <= 0.03, "bf16 validation loss %.4f is more than 0.03 nats from fp32's %.4f" % (v16, v32)
PY

# 2. and 3. A small model, checkpoints every 10 steps.
GPL=/usr/share/common-licenses/GPL-3
python3 "$MAKE_TOKENS" slice "$GPL" "$T/train.bin" && python3 "$MAKE_TOKENS" slice "$GPL" "$T/val.bin" -3000 \
  || fail "make_tokens"
BASE="data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 micro_batch_size: 4 grad_accum_steps: 2 }
model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 5 lr: 1e-2 } parallel { num_threads: 2 }
train { steps: 40 eval_interval: 10 eval_batches: 2 } logging { log_interval: 5 } checkpoint { interval: 10 }"
losses() { python3 "$LOSSES" "$1"; }  # the train/eval records without timing fields
for p in FP32 BF16; do
  "$TRAIN" --config="$CONFIG" --override="$BASE" --override="train { precision: $p }" --out_dir="$T/straight_$p" --quiet \
    || fail "straight $p"
done
"$TRAIN" --config="$CONFIG" --override="$BASE" --override="train { precision: BF16 }" --stop_at_step=20 --out_dir="$T/split" --quiet \
  || fail "bf16 first half"
"$TRAIN" --resume --override="$BASE" --override="train { precision: BF16 }" --out_dir="$T/split" --quiet 2>"$T/resume.log" \
  || { cat "$T/resume.log"; fail "bf16 resume"; }
diff <(losses "$T/straight_BF16/metrics.jsonl") <(losses "$T/split/metrics.jsonl") || fail "bf16 resumed losses differ"
echo "ok: bf16 40 straight == 20 + resume + 20 ($(losses "$T/split/metrics.jsonl" | wc -l) records bit for bit)"
! diff -q <(losses "$T/straight_BF16/metrics.jsonl") <(losses "$T/straight_FP32/metrics.jsonl") >/dev/null \
  || fail "bf16 and fp32 runs are identical: BF16 did not take effect"

# 3. Cross-precision resume from step 20.
cross() {  # FROM TO
  local dir="$T/cross_$1_$2"
  mkdir -p "$dir/checkpoints"
  cp -r "$T/straight_$1/checkpoints/step_00000020" "$dir/checkpoints/"
  cp "$T/straight_$1/config.textproto" "$dir/"
  python3 -c "
import json, sys
for l in open(sys.argv[1]):
    if json.loads(l).get('step', 0) <= 20: print(l, end='')" "$T/straight_$1/metrics.jsonl" >"$dir/metrics.jsonl"
  "$TRAIN" --resume --override="$BASE" --override="train { precision: $2 }" --out_dir="$dir" --quiet 2>"$dir.log" \
    || { cat "$dir.log"; fail "$1 checkpoint resumed in $2"; }
  python3 - "$T/straight_$2/metrics.jsonl" "$dir/metrics.jsonl" "$1" "$2" <<'PY' || fail "$1 -> $2"
import json, math, sys
def last(p):
    return [r for r in map(json.loads, open(p)) if r["kind"] == "eval"][-1]
a, b = last(sys.argv[1]), last(sys.argv[2])
assert a["step"] == b["step"] == 40 and math.isfinite(b["val_loss"]), (a, b)
assert abs(a["val_loss"] - b["val_loss"]) <= 0.05, (a["val_loss"], b["val_loss"])
print("ok: %s checkpoint of step 20 resumed in %s: step-40 validation loss %.4f (straight %s run: %.4f)"
      % (sys.argv[3], sys.argv[4], b["val_loss"], sys.argv[4], a["val_loss"]))
PY
}
cross BF16 FP32
cross FP32 BF16
echo PASS
