#!/bin/bash
# End-to-end checks of bazel-bin/tools/train through its command line: bad input ends with exactly one
# line on stderr and a non-zero exit, without touching an existing run; a short run writes the run
# directory (resolved config, metrics.jsonl with the contract keys) and its loss falls.
set -uo pipefail
TRAIN="$1"
CONFIG="$2"
T="${TEST_TMPDIR:-$(mktemp -d)}"
fail() { echo "FAIL: $*" >&2; exit 1; }

# Tiny data so the test does not depend on the bundled corpus: 64 KiB of English-like bytes as uint16.
python3 - "$T" <<'PY'
import struct, sys
text = (b"The quick brown fox jumps over the lazy dog. " * 800 +
        b"Sphinx of black quartz, judge my vow. " * 800)
open(sys.argv[1] + "/train.bin", "wb").write(struct.pack("<%dH" % len(text), *text))
open(sys.argv[1] + "/val.bin", "wb").write(struct.pack("<%dH" % 4000, *text[:4000]))
open(sys.argv[1] + "/odd.bin", "wb").write(b"\x01\x02\x03")
PY
DATA="data { train { path: \"$T/train.bin\" } validation: \"$T/val.bin\" seq_len: 32 micro_batch_size: 4 }"
SMALL="model { d_model: 32 n_layers: 2 n_heads: 2 moe { num_experts: 4 top_k: 2 expert_hidden: 32 } } train { steps: 30 eval_interval: 15 eval_batches: 2 } logging { log_interval: 5 } optim { warmup_steps: 5 lr: 1e-2 }"

# expect_error NAME PATTERN ARGS...: exit code != 0, exactly one stderr line, containing PATTERN.
expect_error() {
  local name="$1" pattern="$2"; shift 2
  "$TRAIN" "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  [[ $rc != 0 ]] || fail "$name: exit code 0"
  [[ $(wc -l <"$T/err") == 1 ]] || { cat "$T/err"; fail "$name: expected one stderr line"; }
  grep -qF -- "$pattern" "$T/err" || { cat "$T/err"; fail "$name: message lacks '$pattern'"; }
  echo "ok: $name -> $(cat "$T/err")"
}

printf 'model {\n  d_model: 128\n  n_layers: [4]\n}\n' > "$T/malformed.textproto"
expect_error "malformed config" "malformed.textproto: line 3" --config="$T/malformed.textproto"
expect_error "missing config" "nonexistent.textproto" --config="$T/nonexistent.textproto"
expect_error "unknown override field" "no field named \"widht\"" --config="$CONFIG" --override='model { widht: 3 }'
expect_error "bad override value" "model.moe.top_k (9) must be in [1, 8]" --config="$CONFIG" --override='model { moe { top_k: 9 } }'
expect_error "missing data file" "data.train[0].path ($T/missing.bin) does not exist" --config="$CONFIG" \
  --override="data { train { path: \"$T/missing.bin\" } }"
expect_error "odd-sized data file" "not a multiple of 2" --config="$CONFIG" \
  --override="$DATA" --override="data { train { path: \"$T/odd.bin\" } } $SMALL" --out_dir="$T/odd_run"
expect_error "unknown flag" "unknown flag --confg" --confg=x

# A short real run.
RUN="$T/run"
"$TRAIN" --config="$CONFIG" --override="$DATA" --override="$SMALL" --out_dir="$RUN" 2>"$T/train.log" \
  || { cat "$T/train.log"; fail "training run failed"; }
grep -q "ETA" "$T/train.log" || fail "no progress line with ETA"
[[ -f "$RUN/config.textproto" ]] || fail "no config.textproto"
grep -q "d_model: 32" "$RUN/config.textproto" || fail "config.textproto is not the resolved config"
grep -q "lb_loss_weight: 0.01" "$RUN/config.textproto" || fail "config.textproto lacks defaults"
python3 - "$RUN/metrics.jsonl" <<'PY' || fail "metrics.jsonl check"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
train = [r for r in rows if r["kind"] == "train"]
evals = [r for r in rows if r["kind"] == "eval"]
need = {"step", "loss", "lm_loss", "lb_loss", "z_loss", "grad_norm", "lr", "tokens_per_s"}
assert all(need <= r.keys() for r in train), "missing keys"
assert [r["step"] for r in train] == [1, 5, 10, 15, 20, 25, 30], [r["step"] for r in train]
assert [r["step"] for r in evals] == [15, 30], evals
for r in train:
    assert abs(r["loss"] - (r["lm_loss"] + r["lb_loss"] + r["z_loss"])) < 1e-5, r
assert train[-1]["lm_loss"] < train[0]["lm_loss"] - 1.0, (train[0]["lm_loss"], train[-1]["lm_loss"])
print("ok: loss %.3f -> %.3f, val %.3f" % (train[0]["lm_loss"], train[-1]["lm_loss"], evals[-1]["val_loss"]))
PY

# A second run into the same directory is refused and leaves the metrics untouched.
before=$(md5sum <"$RUN/metrics.jsonl")
expect_error "existing run dir" "already holds a run" --config="$CONFIG" --override="$DATA" --override="$SMALL" --out_dir="$RUN"
[[ $(md5sum <"$RUN/metrics.jsonl") == "$before" ]] || fail "existing metrics.jsonl was modified"
echo "PASS"
