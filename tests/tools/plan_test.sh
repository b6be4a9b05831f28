#!/bin/bash
# End-to-end test of tools/plan: the OLMoE counts of SPEC section 5 through --format=json and text, the
# effect of expert parallelism, precision, checkpointing and tokens on memory per rank, "what fits" for one
# 141 GB and eight 80 GB devices (--device_memory), --help, and one-line errors with exit 1 for bad input.
# Args: PLAN_BINARY OLMOE_CONFIG HYBRIDNORM_CONFIG (runfiles paths).
set -uo pipefail

PLAN="$1"
OLMOE="$2"
HYBRID="$3"
PY="${HYBRIDMOE_VENV:+$HYBRIDMOE_VENV/bin/python}"
PY="${PY:-python3}"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0

fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# json FILE EXPR: evaluates a Python expression over the parsed JSON object `j`.
json() {
  "$PY" -c 'import json, sys; j = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

expect_eq() {  # NAME GOT WANT
  if [[ "$2" != "$3" ]]; then fail "$1: got '$2', want '$3'"; fi
}

# --- OLMoE-1B-7B counts (SPEC section 5) ---
"$PLAN" --config="$OLMOE" --format=json > "$TMP/olmoe.json" || fail "plan --format=json exited $?"
expect_eq total_params "$(json "$TMP/olmoe.json" 'j["total_params"]')" 6919161856
expect_eq active_params "$(json "$TMP/olmoe.json" 'j["active_params"]')" 1282017280
expect_eq experts "$(json "$TMP/olmoe.json" 'j["components"]["experts"]["total"]')" 6442450944
expect_eq embedding "$(json "$TMP/olmoe.json" 'j["components"]["embedding"]["active"]')" 103022592
expect_eq blocks "$(json "$TMP/olmoe.json" 'len(j["blocks"])')" 16
expect_eq block_total "$(json "$TMP/olmoe.json" 'j["blocks"][7]["total"]')" 419569664
expect_eq train_flops "$(json "$TMP/olmoe.json" 'j["flops_per_token_train"] == 3 * j["flops_per_token_forward"] > 0')" True
expect_eq memory_sum "$(json "$TMP/olmoe.json" \
  'sum(v for k, v in j["memory_per_rank_bytes"].items() if k != "total") == j["memory_per_rank_bytes"]["total"]')" True
expect_eq memory_terms "$(json "$TMP/olmoe.json" 'list(j["memory_per_rank_bytes"])')" \
  "['weights', 'compute_copies', 'gradients', 'optimizer', 'activations', 'all_to_all', 'runtime', 'total']"
expect_eq fp32_copies "$(json "$TMP/olmoe.json" 'j["memory_per_rank_bytes"]["compute_copies"]')" 0
expect_eq layout "$(json "$TMP/olmoe.json" 'j["layout"]')" \
  "{'precision': 'FP32', 'micro_batch_size': 2, 'seq_len': 4096, 'activation_checkpointing': False}"
expect_eq weights_bytes "$(json "$TMP/olmoe.json" 'j["memory_per_rank_bytes"]["weights"]')" $((4 * 6919161856))

"$PLAN" --config="$OLMOE" > "$TMP/olmoe.txt" || fail "plan (text) exited $?"
grep -q '6,919,161,856' "$TMP/olmoe.txt" || fail "text output lacks 6,919,161,856"
grep -q '1,282,017,280' "$TMP/olmoe.txt" || fail "text output lacks 1,282,017,280"

"$PLAN" --config="$HYBRID" --format=json > "$TMP/hybrid.json" || fail "plan on HybridNorm exited $?"
expect_eq hybrid_total "$(json "$TMP/hybrid.json" 'j["total_params"]')" 6919069696

# --- Expert parallelism: experts sharded over EP, everything else replicated; DP changes nothing per rank ---
"$PLAN" --config="$OLMOE" --format=json --world_size=8 --override='parallel { expert_parallel_size: 8 }' \
  > "$TMP/ep8.json" || fail "plan --world_size=8 EP 8 exited $?"
"$PLAN" --config="$OLMOE" --format=json --world_size=16 --override='parallel { expert_parallel_size: 8 }' \
  > "$TMP/ep8dp2.json" || fail "plan --world_size=16 EP 8 exited $?"
expert=6442450944
want_rank=$((6919161856 - expert + expert / 8))
expect_eq ep8_params_per_rank "$(json "$TMP/ep8.json" 'j["params_per_rank"]')" "$want_rank"
expect_eq ep8_weights "$(json "$TMP/ep8.json" 'j["memory_per_rank_bytes"]["weights"]')" $((4 * want_rank))
expect_eq ep8_optimizer "$(json "$TMP/ep8.json" 'j["memory_per_rank_bytes"]["optimizer"]')" $((8 * want_rank))
expect_eq ep8_total_params "$(json "$TMP/ep8.json" 'j["total_params"]')" 6919161856
expect_eq ep8dp2_dp "$(json "$TMP/ep8dp2.json" 'j["data_parallel_size"]')" 2
expect_eq ep8dp2_memory "$(json "$TMP/ep8dp2.json" 'j["memory_per_rank_bytes"]["total"]')" \
  "$(json "$TMP/ep8.json" 'j["memory_per_rank_bytes"]["total"]')"
ep1_total="$(json "$TMP/olmoe.json" 'j["memory_per_rank_bytes"]["total"]')"
ep8_total="$(json "$TMP/ep8.json" 'j["memory_per_rank_bytes"]["total"]')"
(( ep8_total < ep1_total )) || fail "EP 8 memory per rank ($ep8_total) not below EP 1 ($ep1_total)"

# --- Memory layout flags: precision, checkpointing, tokens, EP (all-to-all buffers) ---
"$PLAN" --config="$OLMOE" --format=json --precision=bf16 > "$TMP/bf16.json" || fail "plan --precision=bf16 exited $?"
expect_eq bf16_layout "$(json "$TMP/bf16.json" 'j["layout"]["precision"]')" BF16
# One bf16 copy of every GEMM weight: all parameters but the embedding, routers and norm weights.
gemm=$((6919161856 - 103022592 - 16 * 131072 - 16 * 4096 - 16 * 4096 - 2048))
expect_eq bf16_gemm "$(json "$TMP/bf16.json" 'j["gemm_params_per_rank"]')" "$gemm"
expect_eq bf16_copies "$(json "$TMP/bf16.json" 'j["memory_per_rank_bytes"]["compute_copies"]')" $((2 * gemm))
expect_eq bf16_masters "$(json "$TMP/bf16.json" 'j["memory_per_rank_bytes"]["weights"]')" $((4 * 6919161856))
"$PLAN" --config="$OLMOE" --format=json --activation_checkpointing=true --seq_len=1024 --micro_batch_size=4 \
  > "$TMP/ckpt.json" || fail "plan --activation_checkpointing=true exited $?"
"$PLAN" --config="$OLMOE" --format=json --activation_checkpointing=true --seq_len=2048 --micro_batch_size=4 \
  > "$TMP/ckpt2.json" || fail "plan --seq_len=2048 exited $?"
a1="$(json "$TMP/ckpt.json" 'j["memory_per_rank_bytes"]["activations"]')"
a2="$(json "$TMP/ckpt2.json" 'j["memory_per_rank_bytes"]["activations"]')"
expect_eq linear_in_tokens "$a2" $((2 * a1))
a_off="$(json "$TMP/olmoe.json" 'j["memory_per_rank_bytes"]["activations"]')"  # 2 x 4096 tokens, no checkpointing
(( 2 * a1 * 4 < a_off )) || fail "checkpointing: $((2 * a1)) B for 8192 tokens not below 1/4 of $a_off B"
"$PLAN" --config="$OLMOE" --format=json --world_size=2 --expert_parallel_size=2 > "$TMP/ep2.json" ||
  fail "plan --expert_parallel_size=2 exited $?"
# Send + receive buffers of one exchange: 2 x T x k x d x 4 bytes.
expect_eq ep2_all_to_all "$(json "$TMP/ep2.json" 'j["memory_per_rank_bytes"]["all_to_all"]')" $((2 * 8192 * 8 * 2048 * 4))
expect_eq ep1_all_to_all "$(json "$TMP/olmoe.json" 'j["memory_per_rank_bytes"]["all_to_all"]')" 0

# --- What fits: one 141 GB GPU, eight 80 GB GPUs ---
"$PLAN" --config="$OLMOE" --format=json --device_memory=141GB > "$TMP/h200.json" || fail "plan --device_memory exited $?"
expect_eq h200_bytes "$(json "$TMP/h200.json" 'j["device_memory_bytes"]')" 141000000000
expect_eq h200_rows "$(json "$TMP/h200.json" 'len(j["fits"])')" 4
# FP32 states are 16 B x 6.92B = 110.7 GB: 2 x 4096 tokens fit only with activation checkpointing.
expect_eq h200_fp32 "$(json "$TMP/h200.json" '[r["fits"] for r in j["fits"] if r["precision"] == "FP32"]')" "[False, True]"
expect_eq h200_consistent "$(json "$TMP/h200.json" \
  'all(r["fits"] == (r["memory_per_rank_bytes"] <= j["device_memory_bytes"]) for r in j["fits"])')" True
"$PLAN" --config="$OLMOE" --format=json --world_size=8 --device_memory=80GiB > "$TMP/a100.json" ||
  fail "plan --world_size=8 --device_memory=80GiB exited $?"
expect_eq a100_bytes "$(json "$TMP/a100.json" 'j["device_memory_bytes"]')" $((80 << 30))
expect_eq a100_eps "$(json "$TMP/a100.json" 'sorted(set(r["expert_parallel_size"] for r in j["fits"]))')" "[1, 2, 4, 8]"
expect_eq a100_ep1 "$(json "$TMP/a100.json" 'max(r["max_tokens_per_micro_batch"] for r in j["fits"] if r["expert_parallel_size"] == 1)')" 0
expect_eq a100_ep8 "$(json "$TMP/a100.json" 'all(r["fits"] for r in j["fits"] if r["expert_parallel_size"] == 8 and r["activation_checkpointing"])')" True
expect_eq a100_mb "$(json "$TMP/a100.json" \
  'all(r["max_micro_batch_size"] == r["max_tokens_per_micro_batch"] // 4096 for r in j["fits"])')" True
"$PLAN" --config="$OLMOE" --world_size=8 --device_memory=80GiB > "$TMP/a100.txt" || fail "plan (text) fits exited $?"
grep -q '^what fits in ' "$TMP/a100.txt" || fail "text output lacks the what-fits table"
[[ "$(grep -cE '^[1248] +(FP32|BF16) +(on|off) ' "$TMP/a100.txt")" -eq 16 ]] || fail "text fits table is not 16 rows"
"$PLAN" --help > "$TMP/help" || fail "plan --help exited $?"
for flag in --device_memory --precision --activation_checkpointing --micro_batch_size --seq_len --expert_parallel_size; do
  grep -q -- "$flag=" "$TMP/help" || fail "--help lacks $flag"
done

# --- Errors: one line on stderr, exit 1 ---
expect_error() {  # NEEDLE ARGS...
  local needle="$1"
  shift
  "$PLAN" "$@" > "$TMP/out" 2> "$TMP/err"
  local rc=$?
  [[ $rc -eq 1 ]] || fail "plan $* exited $rc, want 1"
  [[ "$(wc -l < "$TMP/err")" -eq 1 ]] || fail "plan $*: stderr is not one line: $(cat "$TMP/err")"
  grep -qF -- "$needle" "$TMP/err" || fail "plan $*: stderr lacks '$needle': $(cat "$TMP/err")"
  [[ ! -s "$TMP/out" ]] || fail "plan $*: wrote to stdout on error"
}
expect_error 'model.moe.top_k (99)' --config="$OLMOE" --override='model { moe { top_k: 99 } }'
expect_error 'parallel.expert_parallel_size (8)' --config="$OLMOE" --world_size=12 \
  --override='parallel { expert_parallel_size: 8 }'
expect_error 'parallel.expert_parallel_size (8)' --config="$OLMOE" --override='parallel { expert_parallel_size: 8 }'
expect_error '--world_size (0)' --config="$OLMOE" --world_size=0
expect_error '--format (xml)' --config="$OLMOE" --format=xml
expect_error 'no/such.textproto' --config=no/such.textproto
expect_error '--override' --config="$OLMOE" --override='model { d_model: }'
expect_error '--config' --format=json
expect_error '--device_memory (12XB)' --config="$OLMOE" --device_memory=12XB
expect_error '--device_memory (-5GB)' --config="$OLMOE" --device_memory=-5GB
expect_error '--precision (fp16)' --config="$OLMOE" --precision=fp16
expect_error '--activation_checkpointing (maybe)' --config="$OLMOE" --activation_checkpointing=maybe
expect_error '--seq_len (0)' --config="$OLMOE" --seq_len=0
expect_error 'parallel.expert_parallel_size (3)' --config="$OLMOE" --world_size=3 --expert_parallel_size=3

if (( failures > 0 )); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "PASS"
