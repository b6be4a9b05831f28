#!/bin/bash
# Smoke test of bazel-bin/tools/bench on a tiny config (no timing assertions): one process with every
# section (transformers side-by-side included), then two ranks under mpirun; checks that the JSON report
# holds every figure and ratio, that the phase shares of the trainer's own step add up to the step, that the
# phase timer does not change the step's math (timed and untimed steps on the same weights give the same
# loss), and that both sides of the transformers comparison start from the same weights and batch (equal
# first-step loss).
#   bench_test.sh <bench> <configs/bench.textproto> <hf_bench.py> <convert_hf>
set -euo pipefail
BENCH="$1"; CONFIG="$2"; HF_SCRIPT="$3"; CONVERT="$4"
T="${TEST_TMPDIR:-$(mktemp -d)}"
: "${HYBRIDMOE_VENV:?HYBRIDMOE_VENV is not set; tools/setup.sh writes it into .bazelrc.local}"
PY="$HYBRIDMOE_VENV/bin/python"
fail() { echo "FAIL: $*" >&2; exit 1; }
TINY='model { d_model: 64 n_layers: 2 n_heads: 4 moe { num_experts: 4 top_k: 2 expert_hidden: 64 } }
      data { seq_len: 32 micro_batch_size: 2 }'

"$BENCH" --config="$CONFIG" --override="$TINY" --random_tokens --rounds=2 --threads=1 --hf=on \
  --hf_script="$HF_SCRIPT" --convert_hf="$CONVERT" --hf_python="$PY" --json_out="$T/one.json" \
  >"$T/one.out" 2>"$T/one.err" || { cat "$T/one.err"; fail "1-rank bench failed"; }
grep -q "MFU" "$T/one.err" || { cat "$T/one.err"; fail "no table on stderr"; }
same_json='import json, sys; sys.exit(json.load(open(sys.argv[1])) != json.load(open(sys.argv[2])))'
"$PY" -c "$same_json" "$T/one.out" "$T/one.json" || fail "stdout JSON != --json_out"

"$PY" - "$T/one.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
def get(path):
    v = r
    for k in path.split("."):
        if not isinstance(v, dict) or k not in v:
            sys.exit(f"FAIL: missing {path}")
        v = v[k]
    return v
def positive(path):
    v = get(path)
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        sys.exit(f"FAIL: {path} = {v!r}, expected a positive number")
    return v
for p in ["train.tokens_per_s", "train.step_s.median", "train.matmul_peak_flops.median", "train.mfu.median",
          "train.mfu_causal.median", "flops_per_token_train", "phases.step_s", "moe_vs_dense.moe_over_dense.median",
          "moe_vs_dense.experts_over_dense.median", "moe_vs_dense.moe_over_dense_best_vs_best",
          "hf.ours_over_hf.median", "hf.ours_over_hf_best_vs_best", "hf.hf_tokens_per_s", "hf.hf_mfu.median",
          "activation_checkpointing.on_over_off_step_s.median", "activation_checkpointing.peak_rss_off_bytes",
          "activation_checkpointing.peak_rss_on_bytes", "memory.peak_rss_bytes", "machine.load_avg_1m_start"]:
    positive(p)
shares = get("phases.shares")
for k in ["attention", "router", "permutation", "experts", "all_to_all", "optimizer", "other"]:
    if k not in shares or shares[k] < 0:
        sys.exit(f"FAIL: phases.shares.{k} = {shares.get(k)!r}")
if abs(sum(shares.values()) - 1) > 0.02:
    sys.exit(f"FAIL: phase shares sum to {sum(shares.values())}")
if shares["experts"] <= 0 or shares["attention"] <= 0:
    sys.exit(f"FAIL: experts/attention shares not measured: {shares}")
if shares["optimizer"] <= 0 or shares["router"] <= 0:
    sys.exit(f"FAIL: optimizer/router shares not measured: {shares}")
if get("phases.loss_rel_diff") > 1e-7:
    sys.exit(f"FAIL: timed step loss {get('phases.timed_loss')} != untimed step loss {get('phases.model_loss')}")
ckpt = get("activation_checkpointing")
if ckpt["loss_rel_diff"] > 1e-6 or ckpt["grad_norm_max_rel_diff"] > 1e-4:
    sys.exit(f"FAIL: activation checkpointing changes the loss or gradients: {get('activation_checkpointing')}")
if get("hf.first_step_lm_loss_abs_diff") > 1e-4:
    sys.exit(f"FAIL: first-step loss ours {get('hf.first_step_lm_loss_ours')} vs hf {get('hf.first_step_lm_loss_hf')}")
mfu = get("train.mfu.median")
if get("train.mfu_causal.median") > mfu:
    sys.exit("FAIL: causal MFU above full-attention MFU")
for k in ["mfu_at_least_0.5", "moe_at_most_1.3x_dense", "at_least_2x_transformers", "all_to_all_at_least_0.9_raw"]:
    if k not in get("targets"):
        sys.exit(f"FAIL: targets.{k} missing")
print("1-rank report ok:", {k: round(v, 3) for k, v in shares.items()})
PY

# BF16: the same run in FP32 alternated with it, the bf16 matmul peak, transformers in fp32 and bf16 autocast.
"$BENCH" --config="$CONFIG" --override="$TINY" --override='train { precision: BF16 }' --random_tokens --rounds=2 \
  --threads=1 --sections=train,hf --hf=on --hf_script="$HF_SCRIPT" --convert_hf="$CONVERT" --hf_python="$PY" \
  >"$T/bf16.out" 2>"$T/bf16.err" || { cat "$T/bf16.err"; fail "BF16 bench failed"; }
"$PY" - "$T/bf16.out" "$T/bf16.err" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
if "bf16_over_fp32" not in r["train"]:
    if "training in FP32" not in open(sys.argv[2]).read():
        sys.exit("FAIL: BF16 bench without the FP32 comparison and without a fallback message")
    print("BF16 report: this CPU has no bf16 matrix units (fallback reported)")
    sys.exit(0)
for sec, key in [("train", "bf16_over_fp32"), ("train", "mfu_bf16_peak"), ("train", "matmul_peak_flops_bf16"),
                 ("hf", "ours_over_hf_faster"), ("hf", "ours_over_hf_autocast")]:
    v = r[sec].get(key, {}).get("median")
    if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
        sys.exit(f"FAIL: {sec}.{key}.median = {v!r}")
if not r["hf"]["hf_autocast_tokens_per_s"] > 0 or r["hf"]["hf_side"].get("autocast_bf16") is not False:
    sys.exit(f"FAIL: transformers sides: {r['hf']}")
faster = r["hf"]["ours_over_hf_faster"]["median"]
if faster > max(r["hf"]["ours_over_hf"]["max"], r["hf"]["ours_over_hf_autocast"]["max"]) + 1e-9:
    sys.exit("FAIL: ours over the faster transformers side exceeds ours over either side")
if "bf16_at_least_1.8x_fp32" not in r["targets"]:
    sys.exit("FAIL: targets.bf16_at_least_1.8x_fp32 missing")
print("BF16 report ok: bf16/fp32 %.2f, ours/faster transformers %.2f" % (r["train"]["bf16_over_fp32"]["median"], faster))
PY

# BF16 without the FP32 copy (--fp32_reference=off, for memory measurements): one trainer, no comparison.
"$BENCH" --config="$CONFIG" --override="$TINY" --override='train { precision: BF16 }' --random_tokens --rounds=1 \
  --threads=1 --sections=train --hf=off --fp32_reference=off >"$T/bf16_alone.out" 2>"$T/bf16_alone.err" ||
  { cat "$T/bf16_alone.err"; fail "BF16 bench with --fp32_reference=off failed"; }
"$PY" - "$T/bf16_alone.out" "$T/bf16_alone.err" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if "bf16_over_fp32" in r["train"] or "fp32_tokens_per_s" in r["train"]:
    sys.exit("FAIL: --fp32_reference=off still timed an FP32 copy of the run")
if "matmul_peak_flops_bf16" not in r["train"] and "training in FP32" not in open(sys.argv[2]).read():
    sys.exit("FAIL: BF16 bench alone reports neither the bf16 peak nor the fallback")
print("BF16 alone ok: %.0f tokens/s" % r["train"]["tokens_per_s"])
PY
if "$BENCH" --config="$CONFIG" --fp32_reference=maybe >/dev/null 2>"$T/badflag.err"; then
  fail "--fp32_reference=maybe was accepted"
fi
grep -q -- "--fp32_reference (maybe) must be on or off" "$T/badflag.err" || { cat "$T/badflag.err"; fail "bad --fp32_reference message"; }

# Two ranks: expert parallelism over the ranks, scaling and all-to-all sections.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export TMPDIR="$T" OMPI_MCA_btl_vader_backing_directory="$T"
timeout -k 10 300 mpirun --oversubscribe --bind-to none -np 2 "$BENCH" --config="$CONFIG" --override="$TINY" \
  --random_tokens --rounds=2 --threads=1 --sections=train,phases,scaling,all_to_all >"$T/two.out" 2>"$T/two.err" \
  || { cat "$T/two.err"; fail "2-rank bench failed"; }
"$PY" - "$T/two.out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["world_size"] == 2 and r["expert_parallel_size"] == 2, (r["world_size"], r["expert_parallel_size"])
for sec, key in [("scaling", "speedup"), ("all_to_all", "exchange_over_raw"), ("all_to_all", "dispatcher_over_raw"),
                 ("all_to_all", "raw_bytes_per_s"), ("train", "mfu")]:
    v = r.get(sec, {}).get(key, {}).get("median")
    if not (isinstance(v, (int, float)) and v > 0):
        sys.exit(f"FAIL: {sec}.{key}.median = {v!r}")
for k in ["one_rank_tokens_per_s", "n_rank_tokens_per_s", "speedup_best_vs_best"]:
    if not r["scaling"].get(k, 0) > 0:
        sys.exit(f"FAIL: scaling.{k}")
if r["phases"]["shares"]["all_to_all"] <= 0:
    sys.exit("FAIL: no all-to-all time attributed with 2 ranks")
if not r["all_to_all"].get("receive_pool_bytes_rank0", 0) > 0:
    sys.exit("FAIL: the exchanges kept no receive buffer for reuse")
if r["phases"]["loss_rel_diff"] > 1e-7:
    sys.exit("FAIL: the timed step's loss differs from the untimed one with 2 ranks")
print("2-rank report ok")
PY
echo PASS
