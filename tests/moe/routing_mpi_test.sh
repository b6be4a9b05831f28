#!/bin/bash
# Routing features through the train binary, under mpirun (issue 16), on the same global batch of 16 sequences:
#  1. sigmoid scores + aux-loss-free bias + gated shared expert + a dense first block + global-batch LB loss +
#     activation checkpointing: EP=2 (micro-batches of 4) and DP=2 (micro-batches of 2) reproduce 1 rank
#     (micro-batches of 8) within 1e-5 relative over 20 steps, the selection biases included; with the
#     micro-batch LB scope instead, the same two layouts differ (so the global scope is what makes them agree).
#  2. top-k-then-softmax with the sequence-wise LB loss: EP=2 reproduces 1 rank.
#  3. resume with the bias state: 20 straight == 10 + --resume + 10, every logged value bit for bit.
#  4. the trained model: `eval` loads it (bias included); `convert_hf --to_hf` refuses, in one line naming it,
#     each feature Hugging Face OLMoE cannot hold (and exports the same QK_NORM model without it).
#  5. live telemetry: with router_logit_bias sending every token to EP rank 0's experts, metrics.jsonl and
#     router_stats report an EP overload of 2 and router_stats alerts on it.
#   routing_mpi_test.sh <train> <eval> <convert_hf> <router_stats> <tiny.textproto> <tests/tools/losses.py>
#   (make_tokens.py is found beside losses.py)
set -uo pipefail
TRAIN="$1" EVAL="$2" CONVERT="$3" ROUTER_STATS="$4" CONFIG="$5"
LOSSES="$6" MAKE_TOKENS="$(dirname "$6")/make_tokens.py"
T="${TEST_TMPDIR:-$(mktemp -d)}"
export TMPDIR="$T" OMPI_MCA_btl_vader_backing_directory="$T"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset TEST_PREMATURE_EXIT_FILE XML_OUTPUT_FILE
fail() { echo "FAIL: $*" >&2; exit 1; }

GPL=/usr/share/common-licenses/GPL-3
python3 "$MAKE_TOKENS" slice "$GPL" "$T/train.bin" && python3 "$MAKE_TOKENS" slice "$GPL" "$T/val.bin" -3000 \
  || fail "make_tokens"
BASE="data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 }
model { d_model: 32 n_layers: 3 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } }
optim { warmup_steps: 3 lr: 1e-2 } parallel { num_threads: 1 timeout_s: 60 }
train { steps: 20 eval_interval: 0 eval_batches: 2 } logging { log_interval: 1 } checkpoint { interval: 10 }"
FEATURES="model { activation_checkpointing: true moe { score_function: SIGMOID bias_update_rate: 0.01
  shared_expert_hidden: 16 shared_expert_gate: true first_dense_layers: 1 lb_loss_scope: GLOBAL_BATCH } }"
run() {  # run NAME RANKS EP MICRO ACCUM [extra args]
  local name="$1" np="$2" ep="$3" micro="$4" accum="$5"; shift 5
  local launcher=()
  ((np > 1)) && launcher=(mpirun --oversubscribe -np "$np")
  timeout 300 "${launcher[@]}" "$TRAIN" --config="$CONFIG" --override="$BASE" \
    --override="parallel { expert_parallel_size: $ep } data { micro_batch_size: $micro grad_accum_steps: $accum }" \
    --out_dir="$T/$name" --quiet "$@" >"$T/$name.log" 2>&1 || { cat "$T/$name.log"; fail "run $name"; }
}
compare() {  # compare REF RUN: losses within 1e-5 relative, selection biases within 1e-6, over every step
  python3 - "$T/$1/metrics.jsonl" "$T/$2/metrics.jsonl" <<'PY'
import json, sys
def rows(p):
    return {r["step"]: r for r in map(json.loads, open(p)) if r["kind"] == "train"}
a, b = rows(sys.argv[1]), rows(sys.argv[2])
assert sorted(a) == sorted(b) and len(a) == 20, (sorted(a), sorted(b))
worst = {}
for s in a:
    for k in ("loss", "lm_loss", "lb_loss", "z_loss"):
        worst[k] = max(worst.get(k, 0.0), abs(a[s][k] - b[s][k]) / max(abs(a[s][k]), 1e-12))
    for k in a[s]:
        if k.endswith("/bias_min") or k.endswith("/bias_max"):
            worst["bias"] = max(worst.get("bias", 0.0), abs(a[s][k] - b[s][k]))
bad = [k for k, v in worst.items() if v > (1e-6 if k == "bias" else 1e-5)]
assert not bad, ("differ: %s" % bad, worst)
print("20 steps, worst %s" % ", ".join("%s %.1e" % kv for kv in sorted(worst.items())))
PY
}

run one 1 1 8 2 --override="$FEATURES"
grep -q '"router/layer0/bias_max"' "$T/one/metrics.jsonl" || fail "no selection bias telemetry in metrics.jsonl"
grep -q '"router/layer2/' "$T/one/metrics.jsonl" && fail "3 blocks with first_dense_layers 1 should give 2 MoE layers"
run ep2 2 2 4 2 --override="$FEATURES"
echo "ok: features, EP=2 vs 1 rank: $(compare one ep2 || fail "EP=2 differs from 1 rank")"
run dp2 2 1 2 4 --override="$FEATURES"
echo "ok: features, DP=2 vs 1 rank: $(compare one dp2 || fail "DP=2 differs from 1 rank")"
MICRO="model { moe { lb_loss_scope: MICRO_BATCH } }"
run one_mb 1 1 8 2 --override="$FEATURES" --override="$MICRO"
run ep2_mb 2 2 4 2 --override="$FEATURES" --override="$MICRO"
compare one_mb ep2_mb >"$T/mb.txt" 2>&1 && fail "with the micro-batch LB scope the layouts agree: $(cat "$T/mb.txt")"
echo "ok: micro-batch LB scope, the same layouts differ: $(grep -o 'differ.*' "$T/mb.txt" | head -c 200)"

SEQ="model { moe { softmax_after_topk: true lb_loss_scope: SEQUENCE } }"
run one_seq 1 1 8 2 --override="$SEQ"
run ep2_seq 2 2 4 2 --override="$SEQ"
echo "ok: top-k-then-softmax + sequence LB, EP=2 vs 1 rank: $(compare one_seq ep2_seq || fail "sequence scope differs")"

run split 1 1 8 2 --override="$FEATURES" --stop_at_step=10
"$TRAIN" --resume --override="$BASE" --out_dir="$T/split" --quiet >"$T/resume.log" 2>&1 || { cat "$T/resume.log"; fail "resume"; }
diff <(python3 "$LOSSES" --train_only "$T/one/metrics.jsonl") <(python3 "$LOSSES" --train_only "$T/split/metrics.jsonl") \
  || fail "resumed run differs from the straight one"
echo "ok: 20 straight == 10 + resume + 10 ($(grep -c '"kind": "train"' "$T/split/metrics.jsonl") records, bias included)"

CKPT="$T/one/checkpoints/step_00000020"
"$EVAL" --checkpoint="$CKPT" --data="$T/val.bin" --max_batches=2 >"$T/eval.out" 2>"$T/eval.log" \
  || { cat "$T/eval.log"; fail "eval"; }
python3 -c 'import json, math, sys; j = json.loads(open(sys.argv[1]).read().splitlines()[-1]); assert math.isfinite(j["loss"]) and j["loss"] < 5.5, j; print(j["loss"])' "$T/eval.out" >"$T/eval.loss" || fail "eval result"
echo "ok: eval of the trained model (selection bias loaded): loss $(cat "$T/eval.loss")"
# Each feature Hugging Face OLMoE cannot hold, on an otherwise exportable (QK_NORM) model of one step.
for feature in "first_dense_layers: 1" "score_function: SIGMOID" "softmax_after_topk: true" "bias_update_rate: 0.01" \
  "shared_expert_hidden: 16"; do
  field="${feature%%:*}"
  run "x_$field" 1 1 8 2 --override="model { norm { strategy: QK_NORM } moe { $feature } } train { steps: 1 }"
  "$CONVERT" --from="$T/x_$field/checkpoints/step_00000001" --to_hf="$T/hf_$field" >"$T/export.log" 2>&1 \
    && fail "convert_hf exported a model with $feature"
  grep -q "model.moe.$field (.*) cannot be exported to Hugging Face OLMoE" "$T/export.log" \
    || { cat "$T/export.log"; fail "the refusal does not name model.moe.$field"; }
  [[ $(wc -l <"$T/export.log") -eq 1 ]] || { cat "$T/export.log"; fail "the refusal is not one line"; }
  [[ ! -e "$T/hf_$field/model.safetensors" ]] || fail "a refused export wrote weights"
  echo "ok: --to_hf refuses $feature: $(sed 's|.*config.textproto: ||' "$T/export.log")"
done
# The same model without the feature exports.
run x_plain 1 1 8 2 --override="model { norm { strategy: QK_NORM } } train { steps: 1 }"
"$CONVERT" --from="$T/x_plain/checkpoints/step_00000001" --to_hf="$T/hf_plain" >"$T/export.log" 2>&1 \
  || { cat "$T/export.log"; fail "the plain QK_NORM model does not export"; }

run overload 2 2 4 2 --override="model { moe { router_logit_bias: [4, 4, 0, 0] } } train { steps: 3 }"
python3 - "$T/overload/metrics.jsonl" <<'PY' || fail "EP overload telemetry"
import json, sys
r = [json.loads(l) for l in open(sys.argv[1]) if '"kind": "train"' in l][-1]
assert abs(r["router/layer0/ep_overload"] - 2.0) < 1e-9 and r["router/ep_overload"] == r["router/layer0/ep_overload"], r
PY
"$ROUTER_STATS" "$T/overload" >"$T/overload.txt" 2>&1 || { cat "$T/overload.txt"; fail "router_stats"; }
grep -qE "ep_overload +since step 1 +EP rank 0 receives 2.00x the mean rows" "$T/overload.txt" \
  || { cat "$T/overload.txt"; fail "no ep_overload alert"; }
"$ROUTER_STATS" "$T/overload" --ep_overload=2 >"$T/overload2.txt" 2>&1 || fail "router_stats --ep_overload=2"
grep -q "ep_overload  " "$T/overload2.txt" && { cat "$T/overload2.txt"; fail "alert at the threshold itself"; }
echo "ok: EP overload 2.00 in metrics.jsonl and router_stats, alerted: $(grep -m1 -o 'EP rank 0 receives.*' "$T/overload.txt")"
echo PASS
