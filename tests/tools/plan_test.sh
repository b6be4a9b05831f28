#!/bin/bash
# End-to-end test of tools/plan: the OLMoE counts of SPEC section 5 through --format=json and text, the
# effect of expert parallelism on memory per rank, and one-line errors with exit 1 for bad input.
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
  'sum(j["memory_per_rank_bytes"][k] for k in ("weights", "gradients", "optimizer", "activations")) == j["memory_per_rank_bytes"]["total"]')" True
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

if (( failures > 0 )); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "PASS"
