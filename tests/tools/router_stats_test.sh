#!/bin/bash
# End-to-end checks of router statistics: bazel-bin/tools/train writes RUN_DIR/router_stats.pb and router
# summaries in metrics.jsonl; bazel-bin/tools/router_stats reports them.
#   1. A tiny model trained with the load-balance loss off and a large router logit bias on expert 0:
#      routing collapses from the first step, so router_stats --format=json must report collapse alerts for
#      both MoE layers, beginning at the first logged step (1), with expert 0 the hottest.
#   2. The same model with balancing on and no bias: no collapse alert.
#   In both, every record's counts sum to tokens * top_k, and tokens is the number of tokens the config
#   feeds between two logged steps (micro_batch_size * seq_len per step).
#   3. --layer, --steps, csv and table output; a truncated file (warning, valid prefix, exit 0), garbage
#      (error naming the byte, valid prefix still reported, exit 1), a non-record file and a missing run.
#   router_stats_test.sh <train binary> <router_stats binary> <tiny.textproto> <make_tokens.py>
set -uo pipefail
TRAIN="$1"
RS="$2"
CONFIG="$3"
MAKE_TOKENS="$4"
T="${TEST_TMPDIR:-$(mktemp -d)}"
PY="${HYBRIDMOE_VENV:+$HYBRIDMOE_VENV/bin/python}"
PY="${PY:-python3}"
fail() { echo "FAIL: $*" >&2; exit 1; }

# Data: a random bigram language over all 256 byte values (each token has 4 likely successors), so that
# token frequencies are flat and a router with balancing on has no reason to favour an expert. (Text with
# a few dozen distinct bytes makes even a balanced router's load follow the skewed byte frequencies.)
"$PY" "$MAKE_TOKENS" bigram "$T/train.bin" || fail "make_tokens"
TINY="model { n_layers: 2 d_model: 64 n_heads: 4 moe { num_experts: 8 top_k: 2 expert_hidden: 64 } }
data { train { path: \"$T/train.bin\" } validation: \"\" seq_len: 64 micro_batch_size: 8 }
train { steps: 40 eval_interval: 0 } optim { warmup_steps: 5 }
logging { log_interval: 5 router_stats: true tensorboard: false } checkpoint { save_final: false }"
COLLAPSE="model { moe { lb_loss_weight: 0 router_logit_bias: [8, 0, 0, 0, 0, 0, 0, 0] } }"

"$TRAIN" --config="$CONFIG" --override="$TINY" --override="$COLLAPSE" --out_dir="$T/collapse" --quiet \
  2>"$T/collapse.log" || { cat "$T/collapse.log"; fail "collapse training run failed"; }
"$TRAIN" --config="$CONFIG" --override="$TINY" --out_dir="$T/balanced" --quiet \
  2>"$T/balanced.log" || { cat "$T/balanced.log"; fail "balanced training run failed"; }
[[ -s "$T/collapse/router_stats.pb" ]] || fail "no router_stats.pb in the run directory"

for run in collapse balanced; do
  "$RS" "$T/$run" --format=json >"$T/$run.json" 2>"$T/$run.err" || { cat "$T/$run.err"; fail "$run: router_stats failed"; }
  [[ ! -s "$T/$run.err" ]] || { cat "$T/$run.err"; fail "$run: unexpected stderr on an intact file"; }
done

"$PY" - "$T" <<'PY' || fail "json checks"
import json, sys
T = sys.argv[1]
LOGGED = [1, 5, 10, 15, 20, 25, 30, 35, 40]
TOKENS_PER_STEP = 8 * 64

def check_records(run):
    doc = json.load(open(f"{T}/{run}.json"))
    assert doc["problem"] is None and not doc["truncated"] and not doc["invalid"], doc["problem"]
    recs = doc["records"]
    assert sorted({(r["step"], r["layer"]) for r in recs}) == [(s, l) for s in LOGGED for l in (0, 1)], \
        [(r["step"], r["layer"]) for r in recs]
    prev = {0: 0, 1: 0}
    for r in recs:
        assert r["top_k"] == 2 and r["num_experts"] == 8 and len(r["counts"]) == 8, r
        want_tokens = (r["step"] - prev[r["layer"]]) * TOKENS_PER_STEP
        assert r["tokens"] == want_tokens, (r["step"], r["tokens"], want_tokens)
        assert sum(r["counts"]) == r["tokens"] * r["top_k"], (r["step"], r["layer"], r["counts"])
        assert r["tokens_received_per_rank"] == [r["tokens"] * 2], r  # dropless, one rank
        mean = r["tokens"] * 2 / 8
        assert abs(r["max_over_mean"] - max(r["counts"]) / mean) < 1e-9
        assert r["dead_experts"] == sum(c == 0 for c in r["counts"])
        prev[r["layer"]] = r["step"]
    return doc

doc = check_records("collapse")
collapse = [a for a in doc["alerts"] if a["kind"].startswith("collapse")]
assert {a["layer"] for a in collapse} == {0, 1}, doc["alerts"]
assert all(a["began_step"] == 1 for a in collapse), collapse
share = [a for a in collapse if a["kind"] == "collapse_share"]
assert {a["layer"] for a in share} == {0, 1} and all(a["expert"] == 0 for a in share), share
for layer in doc["layers"]:
    assert layer["latest"]["hottest_expert"] == 0 and layer["latest"]["hottest_share"] > 0.99, layer
    assert layer["latest"]["entropy_ratio"] < 0.3, layer

doc = check_records("balanced")
collapse = [a for a in doc["alerts"] if a["kind"].startswith("collapse")]
assert not collapse, collapse
for layer in doc["layers"]:
    assert layer["latest"]["hottest_share"] < 0.5, layer

# The trainer puts the aggregated summaries into metrics.jsonl.
rows = [json.loads(l) for l in open(f"{T}/collapse/metrics.jsonl")]
train = [r for r in rows if r.get("kind") == "train"]
assert [r["step"] for r in train] == LOGGED, [r["step"] for r in train]
for key in ("router/max_over_mean", "router/cv_mean", "router/dead_experts", "router/entropy_mean",
            "router/top1_mean", "router/dropped"):
    assert all(key in r for r in train), key
assert all(r["router/top1_mean"] > 0.99 for r in train), [r["router/top1_mean"] for r in train]
print("ok: json checks")
PY

# Table: one row per layer and the alerts.
"$RS" "$T/collapse" >"$T/table.txt" || fail "table output failed"
grep -q "collapse_share" "$T/table.txt" || { cat "$T/table.txt"; fail "table lacks the collapse alert"; }
[[ $(grep -cE '^ +[01] +40 ' "$T/table.txt") == 2 ]] || { cat "$T/table.txt"; fail "table lacks the two layer rows"; }
"$RS" "$T/balanced" >"$T/table_b.txt" || fail "table output failed"
! grep -q "collapse_" "$T/table_b.txt" || { cat "$T/table_b.txt"; fail "balanced run reports a collapse"; }
echo "ok: table"

# Selection and csv.
"$RS" "$T/collapse" --layer=1 --steps=10:20 --format=csv >"$T/sel.csv" || fail "csv output failed"
[[ $(head -1 "$T/sel.csv" | cut -d, -f1-4) == "step,layer,num_experts,top_k" ]] || fail "csv header"
[[ $(tail -n +2 "$T/sel.csv" | cut -d, -f1,2 | tr '\n' ' ') == "10,1 15,1 20,1 " ]] || { cat "$T/sel.csv"; fail "csv selection"; }
"$RS" "$T/collapse" --steps=41: >/dev/null 2>"$T/err" && fail "empty selection should fail"
grep -q "no records match --layer/--steps (the file has steps 1 to 40)" "$T/err" || { cat "$T/err"; fail "empty selection message"; }
"$RS" "$T/collapse" --steps=x:y >/dev/null 2>"$T/err" && fail "bad --steps should fail"
grep -q -- "--steps (x:y) must be A:B" "$T/err" || { cat "$T/err"; fail "bad --steps message"; }
echo "ok: selection"

# A copy cut inside its last record: a warning, the 17 complete records, exit 0.
PB="$T/collapse/router_stats.pb"
SIZE=$(stat -c %s "$PB")
mkdir -p "$T/cut"
head -c $((SIZE - 7)) "$PB" >"$T/cut/router_stats.pb"
"$RS" "$T/cut" --format=json >"$T/cut.json" 2>"$T/cut.err" || { cat "$T/cut.err"; fail "truncated file: non-zero exit"; }
grep -q "router_stats.pb: 17 valid records, then a truncated record at byte [0-9]" "$T/cut.err" \
  || { cat "$T/cut.err"; fail "truncated file: message"; }
"$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["truncated"] and d["num_records"] == 17, d["problem"]' \
  "$T/cut.json" || fail "truncated file: json"
echo "ok: truncated -> $(cat "$T/cut.err")"

# Garbage after the records: an error naming the byte, the valid prefix still reported, exit 1.
mkdir -p "$T/garbage"
{ cat "$PB"; printf '\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff'; } >"$T/garbage/router_stats.pb"
"$RS" "$T/garbage" >"$T/garbage.txt" 2>"$T/garbage.err" && fail "garbage: exit 0"
[[ $(wc -l <"$T/garbage.err") == 1 ]] || { cat "$T/garbage.err"; fail "garbage: expected one stderr line"; }
grep -q "invalid record at byte $SIZE: length varint is malformed; 18 valid records before it" "$T/garbage.err" \
  || { cat "$T/garbage.err"; fail "garbage: message"; }
grep -q "collapse_share" "$T/garbage.txt" || { cat "$T/garbage.txt"; fail "garbage: valid prefix not reported"; }
echo "ok: garbage -> $(cat "$T/garbage.err")"

# Not a record file at all, and no run.
mkdir -p "$T/text"
cp "$T/collapse/metrics.jsonl" "$T/text/router_stats.pb"
"$RS" "$T/text" >/dev/null 2>"$T/text.err" && fail "text file: exit 0"
[[ $(wc -l <"$T/text.err") == 1 ]] || { cat "$T/text.err"; fail "text file: expected one stderr line"; }
grep -qE "router_stats.pb: (invalid record at byte 0|0 valid records, then a truncated record at byte 0)" "$T/text.err" \
  || { cat "$T/text.err"; fail "text file: message"; }
: >"$T/text/router_stats.pb"
"$RS" "$T/text" >/dev/null 2>"$T/empty.err" && fail "empty file: exit 0"
grep -q "router_stats.pb: no complete router records" "$T/empty.err" || { cat "$T/empty.err"; fail "empty file: message"; }
"$RS" "$T/nonexistent" >/dev/null 2>"$T/none.err" && fail "missing run: exit 0"
grep -q "no router statistics" "$T/none.err" || { cat "$T/none.err"; fail "missing run: message"; }
echo "ok: non-record file and missing run"
echo PASS
